package remote

import (
	"context"
	"errors"
	"net/http"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/types"
	digest "github.com/opencontainers/go-digest"
)

func TestResolveLayer(t *testing.T) {
	f := newFixture(t, nil)
	ti := makeImage(t, 3, 2048, 1, nil)
	tagRef, digestRef := f.pushImage(t, "estargz/app", "v1", ti.img)

	docker, err := random.Image(1024, 2) // Docker v2 schema 2 media types
	if err != nil {
		t.Fatal(err)
	}
	dockerTag, _ := f.pushImage(t, "docker/img", "latest", docker)
	dockerLayers, err := docker.Layers()
	if err != nil {
		t.Fatal(err)
	}

	tocLayer := ti.layers[1]
	r, _ := newTestResolver(t, Options{})
	ctx := context.Background()

	manifestOf := func(img v1.Image) digest.Digest {
		h, err := img.Digest()
		if err != nil {
			t.Fatal(err)
		}
		return digest.Digest(h.String())
	}
	app, dockerImg := manifestOf(ti.img), manifestOf(docker)

	tests := []struct {
		name     string
		ref      string
		dgst     digest.Digest
		layer    v1.Layer
		toc      digest.Digest
		mt       string
		manifest digest.Digest
	}{
		{"tag, blob digest", tagRef, layerDigest(t, tocLayer), tocLayer, ti.toc, string(types.OCILayer), app},
		{"tag, toc digest", tagRef, ti.toc, tocLayer, ti.toc, string(types.OCILayer), app},
		{"digest ref, blob digest", digestRef, layerDigest(t, tocLayer), tocLayer, ti.toc, string(types.OCILayer), app},
		{"digest ref, toc digest", digestRef, ti.toc, tocLayer, ti.toc, string(types.OCILayer), app},
		{"layer without toc", tagRef, layerDigest(t, ti.layers[2]), ti.layers[2], "", string(types.OCILayer), app},
		{"docker media types", dockerTag, layerDigest(t, dockerLayers[1]), dockerLayers[1], "", string(types.DockerLayer), dockerImg},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ld, err := r.ResolveLayer(ctx, tc.ref, tc.dgst)
			if err != nil {
				t.Fatalf("ResolveLayer: %v", err)
			}
			size, _ := tc.layer.Size()
			want := LayerDesc{
				Ref:       tc.ref,
				Digest:    layerDigest(t, tc.layer),
				Size:      size,
				MediaType: tc.mt,
				DiffID:    layerDiffID(t, tc.layer),
				Manifest:  tc.manifest,
			}
			got := ld
			got.Annotations = nil
			if !reflect.DeepEqual(got, want) {
				t.Errorf("got  %+v\nwant %+v", got, want)
			}
			if tc.toc != "" && ld.Annotations[TOCDigestAnnotation] != tc.toc.String() {
				t.Errorf("annotations = %v", ld.Annotations)
			}
		})
	}

	t.Run("blob and toc digest agree", func(t *testing.T) {
		a, err := r.ResolveLayer(ctx, tagRef, layerDigest(t, tocLayer))
		if err != nil {
			t.Fatal(err)
		}
		b, err := r.ResolveLayer(ctx, tagRef, ti.toc)
		if err != nil {
			t.Fatal(err)
		}
		a.Annotations["mutated"] = "by caller" // must not leak into the cache
		if a.Digest != b.Digest || a.DiffID != b.DiffID || a.Size != b.Size {
			t.Errorf("%+v != %+v", a, b)
		}
		c, _ := r.ResolveLayer(ctx, tagRef, ti.toc)
		if _, ok := c.Annotations["mutated"]; ok {
			t.Error("caller's change to Annotations reached the cache")
		}
	})
}

func TestResolveErrors(t *testing.T) {
	f := newFixture(t, nil)
	ti := makeImage(t, 1, 512, -1, nil)
	tagRef, _ := f.pushImage(t, "repo", "v1", ti.img)
	r, _ := newTestResolver(t, Options{})
	ctx := context.Background()

	tests := []struct {
		name       string
		ref        string
		dgst       digest.Digest
		notFound   bool // ErrLayerNotFound expected
		status     int  // StatusError code expected, 0 if none
		mentioning string
	}{
		{"unknown layer", tagRef, digest.FromString("nope"), true, 0, digest.FromString("nope").String()},
		{"unknown repo", f.host + "/no/such/repo:v1", digest.FromString("x"), false, http.StatusNotFound, "no/such/repo"},
		{"unknown tag", f.host + "/repo:v2", digest.FromString("x"), false, http.StatusNotFound, "repo:v2"},
		{"bad reference", "UPPER//case", digest.FromString("x"), false, 0, "UPPER"},
		{"bad digest", tagRef, digest.Digest("sha256:short"), false, 0, "sha256:short"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := r.ResolveLayer(ctx, tc.ref, tc.dgst)
			if err == nil {
				t.Fatal("no error")
			}
			if got := errors.Is(err, ErrLayerNotFound); got != tc.notFound {
				t.Errorf("errors.Is(ErrLayerNotFound) = %v: %v", got, err)
			}
			var se *StatusError
			if tc.status != 0 && (!errors.As(err, &se) || se.StatusCode != tc.status) {
				t.Errorf("want status %d: %v", tc.status, err)
			}
			if !strings.Contains(err.Error(), tc.mentioning) {
				t.Errorf("error %q does not mention %q", err, tc.mentioning)
			}
		})
	}
	// 404s are final: one manifest attempt each, no retries.
	if s := r.Stats(); s.Retries != 0 {
		t.Errorf("Retries = %d, want 0", s.Retries)
	}
}

func TestResolveIndexPlatform(t *testing.T) {
	f := newFixture(t, nil)
	amd := makeImage(t, 2, 512, 0, &v1.Platform{OS: "linux", Architecture: "amd64"})
	arm := makeImage(t, 2, 512, 0, &v1.Platform{OS: "linux", Architecture: "arm64"})
	idx := mutate.AppendManifests(mutate.IndexMediaType(empty.Index, types.OCIImageIndex),
		mutate.IndexAddendum{Add: amd.img, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "amd64"}}},
		// No variant: index writers often omit v8, hosts report it.
		mutate.IndexAddendum{Add: arm.img, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "arm64"}}},
	)
	ref := f.pushIndex(t, "multi", "latest", idx)
	dlist := f.pushIndex(t, "multi", "docker", mutate.IndexMediaType(idx, types.DockerManifestList))

	tests := []struct {
		name     string
		ref      string
		platform v1.Platform
		img      testImage
		other    testImage
	}{
		{"amd64", ref, v1.Platform{OS: "linux", Architecture: "amd64"}, amd, arm},
		{"arm64/v8", ref, v1.Platform{OS: "linux", Architecture: "arm64", Variant: "v8"}, arm, amd},
		{"arm64 via docker list", dlist, v1.Platform{OS: "linux", Architecture: "arm64"}, arm, amd},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := tc.platform
			r, _ := newTestResolver(t, Options{Platform: &p})
			for _, d := range []digest.Digest{layerDigest(t, tc.img.layers[1]), tc.img.toc} {
				ld, err := r.ResolveLayer(context.Background(), tc.ref, d)
				if err != nil {
					t.Fatalf("ResolveLayer(%s): %v", d, err)
				}
				if ld.DiffID != layerDiffID(t, tc.img.layers[ld.indexIn(t, tc.img)]) {
					t.Errorf("wrong DiffID %s", ld.DiffID)
				}
			}
			_, err := r.ResolveLayer(context.Background(), tc.ref, layerDigest(t, tc.other.layers[1]))
			if !errors.Is(err, ErrLayerNotFound) {
				t.Errorf("other platform's layer: %v, want ErrLayerNotFound", err)
			}
		})
	}

	t.Run("no such platform", func(t *testing.T) {
		r, _ := newTestResolver(t, Options{Platform: &v1.Platform{OS: "linux", Architecture: "s390x"}})
		_, err := r.ResolveLayer(context.Background(), ref, amd.toc)
		if err == nil || errors.Is(err, ErrLayerNotFound) || !strings.Contains(err.Error(), "s390x") {
			t.Errorf("err = %v", err)
		}
	})
}

// indexIn finds ld among img's layers by blob digest.
func (ld LayerDesc) indexIn(t *testing.T, img testImage) int {
	t.Helper()
	for i, l := range img.layers {
		if layerDigest(t, l) == ld.Digest {
			return i
		}
	}
	t.Fatalf("layer %s not in image", ld.Digest)
	return -1
}

// manifestCounter counts manifest GETs reaching the registry.
func manifestCounter(n *atomic.Int64) func(http.Handler) http.Handler {
	return func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/manifests/") {
				n.Add(1)
			}
			h.ServeHTTP(w, r)
		})
	}
}

func TestResolveCache(t *testing.T) {
	var gets atomic.Int64
	f := newFixture(t, manifestCounter(&gets))
	ti := makeImage(t, 2, 512, 1, nil)
	tagRef, digestRef := f.pushImage(t, "cached", "v1", ti.img)
	ctx := context.Background()

	t.Run("concurrent calls share one fetch", func(t *testing.T) {
		gets.Store(0)
		r, _ := newTestResolver(t, Options{})
		var wg sync.WaitGroup
		errs := make(chan error, 32)
		for i := 0; i < 32; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				d := ti.toc
				if i%2 == 0 {
					d = layerDigest(t, ti.layers[0])
				}
				_, err := r.ResolveLayer(ctx, tagRef, d)
				errs <- err
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			if err != nil {
				t.Fatal(err)
			}
		}
		if n := gets.Load(); n != 1 {
			t.Errorf("manifest GETs = %d, want 1", n)
		}
	})

	t.Run("digest refs stay cached", func(t *testing.T) {
		gets.Store(0)
		r, _ := newTestResolver(t, Options{})
		r.s.tagTTL = time.Nanosecond // must not matter for digests
		for i := 0; i < 3; i++ {
			if _, err := r.ResolveLayer(ctx, digestRef, ti.toc); err != nil {
				t.Fatal(err)
			}
			time.Sleep(time.Millisecond)
		}
		if n := gets.Load(); n != 1 {
			t.Errorf("manifest GETs = %d, want 1", n)
		}
	})

	t.Run("tags expire", func(t *testing.T) {
		gets.Store(0)
		r, _ := newTestResolver(t, Options{})
		r.s.tagTTL = 20 * time.Millisecond
		for i := 0; i < 2; i++ {
			if _, err := r.ResolveLayer(ctx, tagRef, ti.toc); err != nil {
				t.Fatal(err)
			}
		}
		if n := gets.Load(); n != 1 {
			t.Errorf("manifest GETs within TTL = %d, want 1", n)
		}
		time.Sleep(30 * time.Millisecond)
		if _, err := r.ResolveLayer(ctx, tagRef, ti.toc); err != nil {
			t.Fatal(err)
		}
		if n := gets.Load(); n != 2 {
			t.Errorf("manifest GETs after TTL = %d, want 2", n)
		}
	})

	t.Run("a moved tag is seen after expiry", func(t *testing.T) {
		r, _ := newTestResolver(t, Options{})
		r.s.tagTTL = 10 * time.Millisecond
		if _, err := r.ResolveLayer(ctx, tagRef, ti.toc); err != nil {
			t.Fatal(err)
		}
		next := makeImage(t, 1, 256, 0, nil)
		f.pushImage(t, "cached", "v1", next.img)
		time.Sleep(20 * time.Millisecond)
		if _, err := r.ResolveLayer(ctx, tagRef, next.toc); err != nil {
			t.Errorf("new image behind tag: %v", err)
		}
	})
}

func TestResolveCallerCancel(t *testing.T) {
	release := make(chan struct{})
	f := newFixture(t, func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if strings.Contains(r.URL.Path, "/manifests/") {
				select {
				case <-release:
				case <-r.Context().Done():
					return
				}
			}
			h.ServeHTTP(w, r)
		})
	})
	ti := makeImage(t, 1, 256, 0, nil)
	tagRef, _ := f.pushImage(t, "slow", "v1", ti.img)
	r, _ := newTestResolver(t, Options{})

	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := r.ResolveLayer(ctx, tagRef, ti.toc)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want deadline exceeded", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("returned after %v", d)
	}
	// The shared fetch carries on for later callers.
	close(release)
	if _, err := r.ResolveLayer(context.Background(), tagRef, ti.toc); err != nil {
		t.Fatal(err)
	}
}
