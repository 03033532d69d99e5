package integration

import (
	"context"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/poolfs/poolfs/profilestore"
	"github.com/poolfs/poolfs/test/fixture"
)

// Profiles shared through the registry (profilestore): pushed by one
// daemon, found by another when it opens the layer, without the lookup
// ever holding up the open.

// recordAndPublish records a start of ref's layer (its files read through
// diff) on a pool of its own and pushes the profile as an artifact of ref,
// as another node would; it returns the profile's number of chunks.
func recordAndPublish(t *testing.T, reg *fixture.Registry, ref string, diff func(*mounted) string) int {
	t.Helper()
	rec := mountPoolOpts(t, reg, mountOpts{Quiet: true})
	readProfileFiles(t, diff(rec))
	set := rec.Pool.Profiles(ref)
	if len(set.Profiles) != 1 || len(set.Profiles[0].Chunks) == 0 {
		t.Fatalf("recorded %d profiles", len(set.Profiles))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := rec.Published.Push(ctx, ref, set); err != nil {
		t.Fatal(err)
	}
	return len(set.Profiles[0].Chunks)
}

// TestPublishedProfileRoundTrip: a start recorded on one pool is pushed as
// an artifact of the image, and a fresh pool with an empty cache finds it
// in the registry and replays it (status: loaded from the source,
// published). The push lists it under the image's index tag, which the
// pool reads beside the image's manifest (held until the index is asked
// for: a pool that waited for the manifest first would make the hold time
// out), so that no referrers request is needed. Without the index tag (an
// older poolfs pushed the profile) the referrers API is asked, or the
// referrers tag of a registry without the API.
func TestPublishedProfileRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		name       string
		opts       []fixture.RegistryOption
		noIndexTag bool
		referrers  int64
	}{
		{"index tag", []fixture.RegistryOption{fixture.WithReferrersAPI()}, false, 0},
		{"referrers API", []fixture.RegistryOption{fixture.WithReferrersAPI()}, true, 1},
		{"referrers tag", nil, true, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			reg := fixture.StartRegistry(t, tc.opts...)
			const repo = "test/published"
			ref, layers := pushImage(t, reg, repo, [][]byte{layerTar(41, 60)}, fixture.ImageOptions{ChunkSize: 64 << 10})
			li := layers[0]
			diff := func(m *mounted) string { return filepath.Join(m.grammar2(ref, li.Digest.String()), "diff") }

			chunks := recordAndPublish(t, reg, ref, diff)

			indexTag := "/v2/" + repo + "/manifests/v1" + profilestore.IndexTagSuffix
			var held *atomic.Bool
			if tc.noIndexTag {
				reg.SetMiddleware(func(next http.Handler) http.Handler {
					return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
						if r.URL.Path == indexTag {
							http.NotFound(w, r)
							return
						}
						next.ServeHTTP(w, r)
					})
				})
			} else {
				held = fixture.HoldManifestsUntil(reg, 30*time.Second, map[string]string{repo: indexTag})
			}
			reg.ResetStats()
			m := mountPoolOpts(t, reg, mountOpts{Quiet: true, ProfileLookup: true})
			if _, err := os.Stat(diff(m)); err != nil {
				t.Fatal(err)
			}
			pi := waitReplayed(t, m.Pool)
			if pi.Source != "source" || !pi.Published || pi.Chunks != chunks {
				t.Errorf("replayed %+v, want the %d chunks of the pushed profile, from the registry, published", pi, chunks)
			}
			readProfileFiles(t, diff(m))
			if held != nil && held.Load() {
				t.Errorf("the image manifest was answered before the index tag was asked for:\n%s", reg.RequestLog())
			}
			if n := reg.Stats().ReferrersRequests; n != tc.referrers {
				t.Errorf("%d referrers requests, want %d\n%s", n, tc.referrers, reg.RequestLog())
			}
		})
	}
}

// TestProfileLookupNeverDelaysOpen: a registry that answers the referrers
// request slowly (5 s) or with errors does not hold up the layer: the
// lookup is made (once per image, however many layers), and the layers
// open and serve their files before the slow answer comes. With the lookup
// off, no referrers request is made at all.
func TestProfileLookupNeverDelaysOpen(t *testing.T) {
	tars := [][]byte{layerTar(43, 20), layerTar(44, 20)}
	for _, tc := range []struct {
		name   string
		lookup bool
		slow   bool // else: 500
		want   int64
	}{
		{"slow registry", true, true, 1},
		{"failing registry", true, false, 1},
		{"lookup off", false, false, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			reg := fixture.StartRegistry(t, fixture.WithReferrersAPI())
			ref, layers := pushImage(t, reg, "test/lookup", tars, fixture.ImageOptions{ChunkSize: 64 << 10})
			release := make(chan struct{})
			var asked, answered atomic.Int32
			reg.SetMiddleware(func(next http.Handler) http.Handler {
				return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
					if !strings.Contains(req.URL.Path, "/referrers/") {
						next.ServeHTTP(w, req)
						return
					}
					asked.Add(1)
					defer answered.Add(1)
					if !tc.slow {
						http.Error(w, "broken", http.StatusInternalServerError)
						return
					}
					select {
					case <-release:
					case <-time.After(5 * time.Second):
					case <-req.Context().Done():
					}
					next.ServeHTTP(w, req)
				})
			})
			t.Cleanup(func() { close(release) })
			reg.ResetStats()

			m := mountPoolOpts(t, reg, mountOpts{Quiet: true, ProfileLookup: tc.lookup})
			for i, l := range layers {
				diff := filepath.Join(m.grammar2(ref, l.Digest.String()), "diff")
				names, err := os.ReadDir(filepath.Join(diff, "d"))
				if err != nil {
					t.Fatalf("layer %d: %v", i, err)
				}
				if _, err := os.ReadFile(filepath.Join(diff, "d", names[0].Name())); err != nil {
					t.Fatalf("layer %d: %v", i, err)
				}
			}
			if tc.slow && answered.Load() != 0 {
				t.Errorf("the slow referrers request was answered before the layers were served: the open waited for it")
			}
			// The lookup runs beside the open; give it time to arrive.
			deadline := time.Now().Add(10 * time.Second)
			for int64(asked.Load()) < tc.want && time.Now().Before(deadline) {
				time.Sleep(10 * time.Millisecond)
			}
			time.Sleep(100 * time.Millisecond) // a second request, if there were one, would come now
			if n := reg.Stats().ReferrersRequests; n != tc.want {
				t.Errorf("%d referrers requests for an image of %d layers, want %d\n%s", n, len(layers), tc.want, reg.RequestLog())
			}
			// The index tag too is read once per image, and not at all
			// with the lookup off.
			indexTags := 0
			for _, r := range reg.Requests() {
				if strings.HasSuffix(r.Path, profilestore.IndexTagSuffix) {
					indexTags++
				}
			}
			if int64(indexTags) != tc.want {
				t.Errorf("%d index tag requests, want %d\n%s", indexTags, tc.want, reg.RequestLog())
			}
			for _, l := range m.Pool.Layers() {
				if pi := l.Profile(); pi.Loaded || pi.Published {
					t.Errorf("layer %s: profile %+v without any published", l.Desc.Digest, pi)
				}
			}
		})
	}
}

// TestPublishedProfileAfterRestart: a layer reopened from meta.db after a
// restart, with no profile of its own (the first run opened it but read
// nothing), looks for a published one as a layer opened from the registry
// does: the open does not wait for the lookup (its referrers request is
// held until the layer has served a lookup), and the profile found is
// replayed, so that the start then makes no blob request.
func TestPublishedProfileAfterRestart(t *testing.T) {
	reg := fixture.StartRegistry(t, fixture.WithReferrersAPI())
	ref, layers := pushImage(t, reg, "test/restart-published", [][]byte{layerTar(45, 60)}, fixture.ImageOptions{ChunkSize: 64 << 10})
	li := layers[0]
	diff := func(m *mounted) string { return filepath.Join(m.grammar2(ref, li.Digest.String()), "diff") }
	metaPath := filepath.Join(t.TempDir(), "meta.db")

	// The first run opens the layer (its record goes to meta.db) and reads
	// nothing: no profile is recorded. Nothing is published yet either.
	store, closeStore := openMeta(t, metaPath)
	first := mountPoolOpts(t, reg, mountOpts{Meta: store, Quiet: true, ProfileLookup: true})
	if _, err := os.Stat(diff(first)); err != nil {
		t.Fatal(err)
	}
	first.Pool.Flush()
	if _, err := store.Profile(li.Digest); err == nil {
		t.Fatal("a profile was stored for a layer nobody read")
	}
	closeStore()

	// Another node records the start and publishes it.
	chunks := recordAndPublish(t, reg, ref, diff)

	// The restart, with an empty chunk cache.
	release := make(chan struct{})
	var answered atomic.Int32
	reg.SetMiddleware(func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
			if strings.Contains(req.URL.Path, "/referrers/") {
				select {
				case <-release:
				case <-time.After(10 * time.Second):
				}
				defer answered.Add(1)
			}
			next.ServeHTTP(w, req)
		})
	})
	store, _ = openMeta(t, metaPath)
	reg.ResetStats()
	m := mountPoolOpts(t, reg, mountOpts{Meta: store, Quiet: true, ProfileLookup: true})
	if _, err := os.Stat(diff(m)); err != nil {
		t.Fatal(err)
	}
	if answered.Load() != 0 {
		t.Error("the referrers request was answered before the reopened layer was served: the open waited for it")
	}
	if n := len(blobRanges(t, reg, li.Digest)); n != 0 {
		t.Errorf("the layer was not reopened from meta.db: %d blob requests before the profile came\n%s", n, reg.RequestLog())
	}
	close(release)
	pi := waitReplayed(t, m.Pool)
	if pi.Source != "source" || !pi.Published || pi.Chunks != chunks || pi.Fetched != pi.Chunks {
		t.Errorf("replayed %+v, want all %d chunks of the pushed profile fetched, from the registry, published", pi, chunks)
	}
	if n := reg.Stats().ReferrersRequests; n != 1 {
		t.Errorf("%d referrers requests, want 1", n)
	}
	reg.ResetStats()
	readProfileFiles(t, diff(m))
	if st := reg.Stats(); st.BlobGets != 0 {
		t.Errorf("the start after the replay made %d blob requests (%d bytes)\n%s", st.BlobGets, st.BlobBytes, reg.RequestLog())
	}
}
