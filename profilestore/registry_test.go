package profilestore_test

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"net/http"
	"reflect"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	digest "github.com/opencontainers/go-digest"
	"github.com/sirupsen/logrus"

	"github.com/poolfs/poolfs/profile"
	"github.com/poolfs/poolfs/profilestore"
	"github.com/poolfs/poolfs/remote"
	"github.com/poolfs/poolfs/test/fixture"
)

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return ctx
}

func quietLog() *logrus.Entry {
	l := logrus.New()
	l.SetLevel(logrus.WarnLevel)
	return logrus.NewEntry(l)
}

// image pushes a two-layer eStargz image as repo:v1 and returns its
// reference and layers.
func image(t *testing.T, reg *fixture.Registry, repo string) (string, digest.Digest, []fixture.LayerInfo) {
	t.Helper()
	return pushTars(t, fixture.ImageRef(reg.Host, repo, "v1"),
		tarOf("bin/a", "a", "lib/b", strings.Repeat("b", 10000)),
		tarOf("etc/c", "c"))
}

// pushProfiles pushes the image (see image) and then profiles of its two
// layers, and checks the artifact's subject is the image manifest.
func pushProfiles(t *testing.T, reg *fixture.Registry, repo string) (string, digest.Digest, []fixture.LayerInfo, profile.Set, remote.Pushed) {
	t.Helper()
	ref, md, layers := image(t, reg, repo)
	set := profile.Set{Profiles: []*profile.Profile{profileOf(layers[0], 3), profileOf(layers[1], 1)}}
	pusher, _ := newStore(profilestore.Options{})
	pushed, err := pusher.Push(testCtx(t), ref, set)
	if err != nil {
		t.Fatal(err)
	}
	if pushed.Subject != md {
		t.Fatalf("pushed with subject %s, the image manifest is %s", pushed.Subject, md)
	}
	return ref, md, layers, set, pushed
}

// lookupAll looks up the profile of each of layers and checks it is the
// one of set pushed for it.
func lookupAll(t *testing.T, store *profilestore.Registry, ref string, layers []fixture.LayerInfo, set profile.Set) {
	t.Helper()
	for i, l := range layers {
		got, err := store.Lookup(testCtx(t), ref, l.Digest, l.TOCDigest)
		if err != nil {
			t.Fatalf("layer %d: %v", i, err)
		}
		if !reflect.DeepEqual(got, set.Profiles[i]) {
			t.Errorf("layer %d: looked up %+v, pushed %+v", i, got, set.Profiles[i])
		}
	}
}

// pushTars pushes an eStargz image of the tars' layers as ref.
func pushTars(t *testing.T, ref string, tars ...[]byte) (string, digest.Digest, []fixture.LayerInfo) {
	t.Helper()
	md, layers, err := fixture.PushImage(testCtx(t), ref, tars, fixture.ImageOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return ref, md, layers
}

// tarOf builds a tar of regular files from name, content pairs.
func tarOf(nameContent ...string) []byte {
	var es []fixture.TarEntry
	for i := 0; i < len(nameContent); i += 2 {
		es = append(es, fixture.TarEntry{Name: nameContent[i], Mode: 0o644, Content: []byte(nameContent[i+1])})
	}
	return fixture.BuildTar(es)
}

// profileOf makes a valid profile for layer l (the chunks need not exist:
// the store does not look inside).
func profileOf(l fixture.LayerInfo, chunks int) *profile.Profile {
	p := &profile.Profile{Blob: l.Digest, TOC: l.TOCDigest}
	for i := range chunks {
		p.Chunks = append(p.Chunks, profile.Chunk{Offset: int64(i * 100), End: int64(i*100 + 50), Digest: digest.FromString(l.Digest.String() + string(rune('a'+i)))})
	}
	return p
}

func newStore(o profilestore.Options) (*profilestore.Registry, *remote.Resolver) {
	r := remote.New(remote.Options{Log: quietLog()})
	if o.Log == nil {
		o.Log = quietLog()
	}
	return profilestore.New(r, o), r
}

// TestPushLookupRoundTrip pushes the profiles of an image and finds them
// from a fresh daemon's store, through the referrers API and through the
// referrers tag of a registry without it.
func TestPushLookupRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		name string
		opts []fixture.RegistryOption
		// referrers lookups of a first lookup: the API answers at once; a
		// registry without it costs the 404 and the tag.
		firstLookup int64
	}{
		{"referrers API", []fixture.RegistryOption{fixture.WithReferrersAPI()}, 1},
		{"referrers tag", nil, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			reg := fixture.StartRegistry(t, tc.opts...)
			ref, md, layers, set, pushed := pushProfiles(t, reg, "app/"+strings.ReplaceAll(strings.ToLower(tc.name), " ", "-"))
			checkArtifact(t, reg, ref, pushed, md)

			reg.ResetStats()
			store, _ := newStore(profilestore.Options{})
			lookupAll(t, store, ref, layers, set)
			// One image lookup serves every layer of the image.
			if n := reg.Stats().ReferrersRequests; n != tc.firstLookup {
				t.Errorf("%d referrers requests for the image's layers, want %d\n%s", n, tc.firstLookup, reg.RequestLog())
			}
			// The referrers answer carries the profile itself: neither the
			// artifact manifest's round trip nor the blob's is taken.
			for _, r := range reg.Requests() {
				if strings.Contains(r.Path, pushed.Digest.Encoded()) || strings.Contains(r.Path, "/blobs/") {
					t.Errorf("the lookup asked for more than the referrers: %s %s", r.Method, r.Path)
				}
			}
		})
	}
}

// TestLookupInlinedProfile: the profile inlined in the artifact's
// annotations is used only when it is the blob they announce; a bad or
// foreign one costs the blob's round trip, never a wrong profile, and a
// profile too big to inline is pushed without it and read from its blob.
func TestLookupInlinedProfile(t *testing.T) {
	encode := func(b []byte) string {
		var z bytes.Buffer
		zw := gzip.NewWriter(&z)
		zw.Write(b)
		zw.Close()
		return base64.StdEncoding.EncodeToString(z.Bytes())
	}
	for _, tc := range []struct {
		name   string
		inline func(data, other []byte) string // nil: push with Push
		chunks int
		// whether the lookup reads the blob
		readsBlob bool
	}{
		{"inlined", nil, 3, false},
		{"too big to inline", nil, 20000, true},
		{"foreign profile inlined", func(_, other []byte) string { return encode(other) }, 3, true},
		{"not base64", func([]byte, []byte) string { return "%%%" }, 3, true},
		{"not gzip", func(data, _ []byte) string { return base64.StdEncoding.EncodeToString(data) }, 3, true},
		{"longer than announced", func(data, _ []byte) string { return encode(append(data, ' ')) }, 3, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			reg := fixture.StartRegistry(t, fixture.WithReferrersAPI())
			ctx := testCtx(t)
			ref, _, layers := image(t, reg, "app/"+strings.ReplaceAll(tc.name, " ", "-"))
			want := profileOf(layers[0], tc.chunks)
			set := profile.Set{Profiles: []*profile.Profile{want}}
			if tc.inline == nil {
				pusher, _ := newStore(profilestore.Options{})
				if _, err := pusher.Push(ctx, ref, set); err != nil {
					t.Fatal(err)
				}
			} else {
				data, err := profile.MarshalSet(set)
				if err != nil {
					t.Fatal(err)
				}
				other, err := profile.MarshalSet(profile.Set{Profiles: []*profile.Profile{profileOf(layers[0], 1)}})
				if err != nil {
					t.Fatal(err)
				}
				r := remote.New(remote.Options{Log: quietLog()})
				if _, err := r.PushArtifact(ctx, ref, remote.Artifact{ArtifactType: profile.ArtifactType,
					Annotations: map[string]string{
						profilestore.BlobAnnotation:     digest.FromBytes(data).String(),
						profilestore.BlobSizeAnnotation: strconv.Itoa(len(data)),
						profilestore.InlineAnnotation:   tc.inline(data, other),
					},
					Blobs: []remote.ArtifactBlob{{MediaType: profile.MediaType, Data: data}}}); err != nil {
					t.Fatal(err)
				}
			}
			reg.ResetStats()
			store, _ := newStore(profilestore.Options{})
			got, err := store.Lookup(ctx, ref, layers[0].Digest, layers[0].TOCDigest)
			if err != nil || !reflect.DeepEqual(got, want) {
				n := -1
				if got != nil {
					n = len(got.Chunks)
				}
				t.Fatalf("looked up %d chunks, %v; want the %d pushed", n, err, len(want.Chunks))
			}
			blobReads := 0
			for _, r := range reg.Requests() {
				if strings.Contains(r.Path, "/blobs/") {
					blobReads++
				}
			}
			if (blobReads > 0) != tc.readsBlob {
				t.Errorf("%d blob requests; want the blob read: %v\n%s", blobReads, tc.readsBlob, reg.RequestLog())
			}
		})
	}
}

// checkArtifact reads the pushed artifact manifest back with plain HTTP:
// an OCI manifest typed as a profile, whose subject is the image manifest
// and whose one layer is the profile Set.
func checkArtifact(t *testing.T, reg *fixture.Registry, ref string, pushed remote.Pushed, subject digest.Digest) {
	t.Helper()
	art := ref[:strings.LastIndexByte(ref, ':')] + "@" + pushed.Digest.String()
	body, mt, _, err := fixture.FetchManifest(testCtx(t), art)
	if err != nil {
		t.Fatal(err)
	}
	var m struct {
		MediaType    string          `json:"mediaType"`
		ArtifactType string          `json:"artifactType"`
		Subject      *v1.Descriptor  `json:"subject"`
		Layers       []v1.Descriptor `json:"layers"`
	}
	if err := json.Unmarshal(body, &m); err != nil {
		t.Fatal(err)
	}
	if mt != "application/vnd.oci.image.manifest.v1+json" || m.ArtifactType != profile.ArtifactType {
		t.Errorf("artifact manifest %s, artifactType %q", mt, m.ArtifactType)
	}
	if m.Subject == nil || m.Subject.Digest.String() != subject.String() {
		t.Errorf("artifact subject %+v, want %s", m.Subject, subject)
	}
	if len(m.Layers) != 1 || string(m.Layers[0].MediaType) != profile.MediaType {
		t.Errorf("artifact layers %+v, want one %s", m.Layers, profile.MediaType)
	}
}

// TestLookupArtifactWithoutBlobAnnotation: an artifact whose manifest does
// not name its profile blob in its annotations, pushed without an index
// tag (by an older poolfs or another tool), is found through the referrers
// after the index tag's 404 and read through its manifest; a reference that
// cannot name an index tag is not asked for one.
func TestLookupArtifactWithoutBlobAnnotation(t *testing.T) {
	reg := fixture.StartRegistry(t, fixture.WithReferrersAPI())
	ref, _, layers := image(t, reg, "app/unannotated")
	want := profileOf(layers[0], 2)
	publishSet(t, ref, want)
	reg.ResetStats()
	store, _ := newStore(profilestore.Options{})
	store.Expect(ref)
	store.Expect("not a reference")
	got, err := store.Lookup(testCtx(t), ref, layers[0].Digest, layers[0].TOCDigest)
	if err != nil || !reflect.DeepEqual(got, want) {
		t.Errorf("looked up %+v, %v; want %+v", got, err, want)
	}
	if n := reg.Stats().ReferrersRequests; n != 1 {
		t.Errorf("%d referrers requests, want 1", n)
	}
	if n := indexTagGets(reg, "v1"+profilestore.IndexTagSuffix); n != 1 {
		t.Errorf("%d GETs of the index tag, want 1 (its 404)", n)
	}
}

// TestPushIndexSubjectIsPlatformManifest: for a multi-platform index the
// artifact refers to the platform's manifest the daemon resolves, and a
// daemon of that platform finds it through the index's tag.
func TestPushIndexSubjectIsPlatformManifest(t *testing.T) {
	reg := fixture.StartRegistry(t, fixture.WithReferrersAPI())
	ctx := testCtx(t)
	ref := fixture.ImageRef(reg.Host, "multi/app", "v1")
	tar := tarOf("x", "x")
	_, imgs, err := fixture.PushIndex(ctx, ref, []fixture.IndexImage{
		{Tars: [][]byte{tar}, Opts: fixture.ImageOptions{Platform: "linux/amd64"}},
		{Tars: [][]byte{tarOf("y", "y")}, Opts: fixture.ImageOptions{Platform: "linux/arm64"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	arm := imgs[1]
	plat := &v1.Platform{OS: "linux", Architecture: "arm64"}
	r := remote.New(remote.Options{Log: quietLog(), Platform: plat})
	pushed, err := profilestore.New(r, profilestore.Options{Log: quietLog()}).
		Push(ctx, ref, profile.Set{Profiles: []*profile.Profile{profileOf(arm.Layers[0], 2)}})
	if err != nil {
		t.Fatal(err)
	}
	if pushed.Subject != arm.Digest {
		t.Fatalf("subject %s, want the arm64 manifest %s", pushed.Subject, arm.Digest)
	}
	r2 := remote.New(remote.Options{Log: quietLog(), Platform: plat})
	got, err := profilestore.New(r2, profilestore.Options{Log: quietLog()}).Lookup(ctx, ref, arm.Layers[0].Digest, "")
	if err != nil || got == nil || got.Blob != arm.Layers[0].Digest {
		t.Fatalf("lookup through the index: %+v, %v", got, err)
	}
}

// TestLookupIgnores: what a lookup must not hand out.
func TestLookupIgnores(t *testing.T) {
	reg := fixture.StartRegistry(t, fixture.WithReferrersAPI())
	ctx := testCtx(t)
	ref, _, layers := image(t, reg, "app/ignores")
	foreign := profileOf(layers[0], 2)
	foreign.TOC = digest.FromString("another TOC")
	// Layer 1 has no profile in the set; a profile of a layer that is not
	// in the image is never asked for.
	other := profileOf(fixture.LayerInfo{Digest: digest.FromString("other blob"), TOCDigest: digest.FromString("t")}, 1)
	pusher, _ := newStore(profilestore.Options{})
	for _, p := range []*profile.Profile{foreign, other} {
		if _, err := pusher.Push(ctx, ref, profile.Set{Profiles: []*profile.Profile{p}}); err == nil {
			t.Errorf("Push accepted a profile of blob %s TOC %s, which the image does not have", p.Blob, p.TOC)
		}
	}
	// Another publisher is not so careful.
	publishSet(t, ref, foreign, other)
	store, _ := newStore(profilestore.Options{})
	for i, l := range layers {
		got, err := store.Lookup(ctx, ref, l.Digest, l.TOCDigest)
		if err != nil || got != nil {
			t.Errorf("layer %d: got %+v, %v; want nothing", i, got, err)
		}
	}
}

// publishRaw attaches data to ref's image as a profile artifact, unchecked.
func publishRaw(t *testing.T, ref string, data []byte) {
	t.Helper()
	r := remote.New(remote.Options{Log: quietLog()})
	if _, err := r.PushArtifact(testCtx(t), ref, remote.Artifact{ArtifactType: profile.ArtifactType,
		Blobs: []remote.ArtifactBlob{{MediaType: profile.MediaType, Data: data}}}); err != nil {
		t.Fatal(err)
	}
}

// publishSet publishes profiles as publishRaw does.
func publishSet(t *testing.T, ref string, profiles ...*profile.Profile) {
	t.Helper()
	data, err := profile.MarshalSet(profile.Set{Profiles: profiles})
	if err != nil {
		t.Fatal(err)
	}
	publishRaw(t, ref, data)
}

// TestLookupMalformedIsAMiss: a profile blob that does not parse is
// ignored and remembered as a miss.
func TestLookupMalformedIsAMiss(t *testing.T) {
	reg := fixture.StartRegistry(t, fixture.WithReferrersAPI())
	ctx := testCtx(t)
	ref, _, layers := image(t, reg, "app/malformed")
	publishRaw(t, ref, []byte(`{"version":1,"layers":[{"blob":"nope"}]}`))
	store, _ := newStore(profilestore.Options{})
	reg.ResetStats()
	for range 2 {
		got, err := store.Lookup(ctx, ref, layers[0].Digest, layers[0].TOCDigest)
		if err != nil || got != nil {
			t.Fatalf("got %+v, %v; want nothing", got, err)
		}
	}
	if n := reg.Stats().ReferrersRequests; n != 1 {
		t.Errorf("%d referrers requests, want 1 (the miss is remembered)", n)
	}
}

// TestLookupFailureAndSlowness: a registry that answers the referrers
// request with errors is asked once (the failure is remembered like a
// miss), and one that does not answer holds no Lookup longer than its
// caller's context, nor the store's own bound.
func TestLookupFailureAndSlowness(t *testing.T) {
	reg := fixture.StartRegistry(t, fixture.WithReferrersAPI())
	ctx := testCtx(t)
	ref, _, layers := image(t, reg, "app/failing")
	var mode atomic.Int32 // 0: fail, 1: hang until released
	release := make(chan struct{})
	reg.SetMiddleware(func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
			if !strings.Contains(req.URL.Path, "/referrers/") {
				next.ServeHTTP(w, req)
				return
			}
			if mode.Load() == 0 {
				http.Error(w, "broken", http.StatusInternalServerError)
				return
			}
			select {
			case <-release:
			case <-req.Context().Done():
			}
			http.Error(w, "late", http.StatusServiceUnavailable)
		})
	})
	defer close(release)

	store, _ := newStore(profilestore.Options{})
	reg.ResetStats()
	if _, err := store.Lookup(ctx, ref, layers[0].Digest, ""); err == nil {
		t.Error("lookup against a failing registry reported no error")
	}
	for _, l := range layers {
		if got, err := store.Lookup(ctx, ref, l.Digest, ""); got != nil || err != nil {
			t.Errorf("second lookup: %+v, %v; want the remembered miss", got, err)
		}
	}
	if n := reg.Stats().ReferrersRequests; n != 1 {
		t.Errorf("%d referrers requests, want 1 (no retries, miss remembered)\n%s", n, reg.RequestLog())
	}

	mode.Store(1)
	slow, _ := newStore(profilestore.Options{Timeout: 300 * time.Millisecond})
	lctx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	got, err := slow.Lookup(lctx, ref, layers[0].Digest, "")
	cancel()
	if got != nil || !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("lookup against a registry that does not answer: %+v, %v; want the caller's deadline", got, err)
	}
	// The lookup goes on detached, gives up at the store's bound and is
	// then a remembered miss: later opens return at once without asking.
	deadline := time.Now().Add(10 * time.Second)
	for {
		got, err := slow.Lookup(ctx, ref, layers[1].Digest, "")
		if err == nil && got == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("lookup still not a miss after the store's bound: %+v, %v", got, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
