package integration

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/poolfs/poolfs/pool"
	"github.com/poolfs/poolfs/test/fixture"
)

// TestLayerServedOnlyUnderListingReference checks that an open layer is
// served under a reference only if that reference's manifest lists it:
// another image that shares the base layer gets it with one manifest
// request and no second TOC fetch, while a reference whose manifest does
// not list the layer, a repository that does not exist and a tag that
// does not exist get ENOENT. After a restart the layers served before cost
// no request at all; after the tag moves and the recheck is due, the layer
// it dropped is refused.
func TestLayerServedOnlyUnderListingReference(t *testing.T) {
	reg := fixture.StartRegistry(t)
	baseTar, appTar := layerTar(41, 6), layerTar(42, 6)
	refA, layersA := pushImage(t, reg, "test/a", [][]byte{baseTar, appTar}, fixture.ImageOptions{})
	refB, layersB := pushImage(t, reg, "test/b", [][]byte{baseTar}, fixture.ImageOptions{})
	base, app := layersA[0], layersA[1]
	if layersB[0].Digest != base.Digest {
		t.Fatalf("the shared base layer has two digests: %s and %s", base.Digest, layersB[0].Digest)
	}
	dir := t.TempDir()
	cacheDir, metaPath := filepath.Join(dir, "chunks"), filepath.Join(dir, "meta.db")

	type lookup struct {
		name string
		ref  string
		li   fixture.LayerInfo
		want syscall.Errno
	}
	check := func(t *testing.T, m *mounted, lookups []lookup) {
		t.Helper()
		for _, l := range lookups {
			_, err := os.Stat(filepath.Join(m.grammar2(l.ref, l.li.Digest.String()), "diff"))
			var got syscall.Errno
			if err != nil && !errors.As(err, &got) {
				t.Fatalf("%s: %v", l.name, err)
			}
			if got != l.want {
				t.Errorf("%s: %v, want errno %v", l.name, err, l.want)
			}
		}
	}
	// blobRequests counts what the registry served of the layers' blobs
	// (a TOC fetch is a range request of the blob).
	blobRequests := func() int64 {
		st := reg.Stats()
		return st.PerBlob[base.Digest].Requests + st.PerBlob[app.Digest].Requests
	}

	store, closeStore := openMeta(t, metaPath)
	m := mountPoolOpts(t, reg, mountOpts{CacheDir: cacheDir, Meta: store, Quiet: true})
	compareTree(t, filepath.Join(m.grammar2(refA, app.Digest.String()), "diff"), appTar)
	compareTree(t, filepath.Join(m.grammar2(refA, base.Digest.String()), "diff"), baseTar)
	m.Pool.Flush() // the prefetch is done with the blobs
	reg.ResetStats()
	check(t, m, []lookup{
		{"the other image's base layer", refB, base, 0},
		{"a layer the other image does not list", refB, app, syscall.ENOENT},
		{"a repository that does not exist", fixture.ImageRef(reg.Host, "test/none", "v1"), base, syscall.ENOENT},
		{"a tag that does not exist", fixture.ImageRef(reg.Host, "test/a", "v2"), app, syscall.ENOENT},
	})
	if n := blobRequests(); n != 0 {
		t.Errorf("%d blob requests for layers already open (a second TOC fetch):\n%s", n, reg.RequestLog())
	}
	// One manifest each for test/b, test/none and test/a:v2, however many
	// of its layers are looked up.
	if st := reg.Stats(); st.ManifestRequests != 3 {
		t.Errorf("%d manifest requests, want 3:\n%s", st.ManifestRequests, reg.RequestLog())
	}
	if _, err := m.Pool.Get(context.Background(), pool.LayerKey{Ref: refB, Digest: app.Digest}); !errors.Is(err, pool.ErrNotListed) {
		t.Errorf("Get of a layer the reference does not list: %v, want ErrNotListed", err)
	}
	compareTree(t, filepath.Join(m.grammar2(refB, base.Digest.String()), "diff"), baseTar)
	m.Pool.Flush()
	closeStore()

	t.Run("restart", func(t *testing.T) {
		store, closeStore := openMeta(t, metaPath)
		defer closeStore()
		reg.ResetStats()
		m := mountPoolOpts(t, reg, mountOpts{CacheDir: cacheDir, Meta: store, Quiet: true})
		check(t, m, []lookup{
			{"a layer of the first image", refA, app, 0},
			{"the shared base layer, under the second image", refB, base, 0},
		})
		compareTree(t, filepath.Join(m.grammar2(refB, base.Digest.String()), "diff"), baseTar)
		m.Pool.Flush()
		if st := reg.Stats(); st.Requests != 0 {
			t.Errorf("%d registry requests after the restart, want none:\n%s", st.Requests, reg.RequestLog())
		}
		// A miss under a tag asks the registry once more (the tag may
		// have moved to an image that has the layer), then is refused.
		check(t, m, []lookup{{"a layer the other image does not list", refB, app, syscall.ENOENT}})
		if st := reg.Stats(); st.ManifestRequests != 1 || st.BlobRequests != 0 {
			t.Errorf("%d manifest and %d blob requests for a layer the tag does not list, want 1 and 0:\n%s", st.ManifestRequests, st.BlobRequests, reg.RequestLog())
		}
	})

	t.Run("tag moved", func(t *testing.T) {
		// test/a:v1 now names an image without the app layer and with a
		// new one.
		newTar := layerTar(43, 4)
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		_, moved, err := fixture.PushImage(ctx, refA, [][]byte{baseTar, newTar}, fixture.ImageOptions{})
		if err != nil {
			t.Fatal(err)
		}
		added := moved[1]
		faults := fixture.NewFaults(fixture.FaultConfig{})
		reg.SetMiddleware(faults.Middleware)
		defer reg.SetMiddleware(nil)
		// In this order: each case starts from the list the one before
		// stored (the first, from the list stored before the tag moved).
		for _, c := range []struct {
			name      string
			recheck   time.Duration
			down      bool // the registry cannot be reached
			lookups   []lookup
			manifests int64 // manifest requests the registry serves; -1: not counted (down, it serves none)
		}{
			// The old list serves on while the tag cannot be rechecked.
			{"recheck due, registry down", time.Nanosecond, true, []lookup{
				{"the layer the tag dropped", refA, app, 0},
				{"the layer the tag still lists", refA, base, 0},
			}, -1},
			// The old list serves what it has; the new layer (podman
			// pulling the moved tag asks for it) is looked for at once.
			{"recheck not due", time.Hour, false, []lookup{
				{"the layer the tag dropped", refA, app, 0},
				{"the layer the tag still lists", refA, base, 0},
				{"the layer the tag gained", refA, added, 0},
			}, 1},
			{"recheck due", time.Nanosecond, false, []lookup{
				{"the layer the tag dropped", refA, app, syscall.ENOENT},
				{"the layer the tag still lists", refA, base, 0},
				{"the layer the tag gained", refA, added, 0},
			}, 1}, // the resolver keeps the manifest for the later lookups
		} {
			t.Run(c.name, func(t *testing.T) {
				store, closeStore := openMeta(t, metaPath)
				defer closeStore()
				faults.SetDown(c.down, fixture.DownRefuse)
				defer faults.SetDown(false, fixture.DownRefuse)
				reg.ResetStats()
				m := mountPoolOpts(t, reg, mountOpts{CacheDir: cacheDir, Meta: store, Quiet: true, Pool: []pool.Option{pool.WithTagRecheck(c.recheck)}})
				check(t, m, c.lookups)
				m.Pool.Flush()
				if st := reg.Stats(); c.manifests >= 0 && st.ManifestRequests != c.manifests {
					t.Errorf("%d manifest requests, want %d:\n%s", st.ManifestRequests, c.manifests, reg.RequestLog())
				}
			})
		}
	})
}
