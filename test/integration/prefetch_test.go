package integration

import (
	"bytes"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"

	"github.com/poolfs/poolfs/fs/fstest"
	"github.com/poolfs/poolfs/pool"
	"github.com/poolfs/poolfs/test/fixture"
)

// TestEarlyPrefetch: with PrefetchOptions.Early, an optimized layer's
// prioritized files come in a stream of the blob's start, a small probe
// sent beside the TOC and the rest after the TOC request, and no byte of
// the blob is asked for twice; a layer without prioritized files streams
// nothing past the probe.
func TestEarlyPrefetch(t *testing.T) {
	reg := fixture.StartRegistry(t)
	tarBytes := layerTar(7, 60)
	var prio []string
	for i := range 30 {
		prio = append(prio, fmt.Sprintf("d/f%03d", i))
	}
	optRef, opt := pushImage(t, reg, "test/early-opt", [][]byte{tarBytes}, fixture.ImageOptions{ChunkSize: 64 << 10, PrioritizedFiles: prio})
	plainRef, plain := pushImage(t, reg, "test/early-plain", [][]byte{tarBytes}, fixture.ImageOptions{ChunkSize: 64 << 10})
	zstdRef, zstd := pushImage(t, reg, "test/early-zstd", [][]byte{tarBytes}, fixture.ImageOptions{ChunkSize: 64 << 10, ZstdChunked: true})
	if opt[0].Size < 3<<20 {
		t.Fatalf("layer of %d bytes: too small for a head window beside the 1 MiB tail", opt[0].Size)
	}
	// The head stream trickles (64 KiB per 5 ms), as on a real link, so
	// how soon it stops shows in the bytes it delivered.
	reg.SetMiddleware(func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if rng := r.Header.Get("Range"); strings.Contains(r.URL.Path, "/blobs/") && (rng == probeRange || strings.HasPrefix(rng, restPrefix)) {
				next.ServeHTTP(&fixture.Trickle{ResponseWriter: w, Every: 5 * time.Millisecond, Piece: 64 << 10}, r)
				return
			}
			next.ServeHTTP(w, r)
		})
	})

	tests := []struct {
		name   string
		ref    string
		layer  fixture.LayerInfo
		early  int64
		rest   string // the Range of the stream past the probe, "": none
		others int    // prefetch requests besides the head; -1: some
	}{
		{"prioritized files inside the window", optRef, opt[0], 16 << 20, restPrefix, 0},
		{"window smaller than the prioritized files", optRef, opt[0], 256 << 10, restPrefix + "262143", -1},
		{"nothing prioritized", plainRef, plain[0], 16 << 20, "", 0},
		{"zstd:chunked (no prioritized files)", zstdRef, zstd[0], 16 << 20, "", 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m := mountPoolOpts(t, reg, mountOpts{Prefetch: pool.PrefetchOptions{Early: tc.early}})
			reg.ResetStats()
			start := time.Now()
			diff := filepath.Join(m.grammar2(tc.ref, tc.layer.Digest.String()), "diff")
			if _, err := os.Stat(diff); err != nil {
				t.Fatal(err)
			}
			l := openLayer(t, m, tc.layer.Digest)
			for _, e := range layerView(t, l).Prioritized() {
				for !layerView(t, l).ChunksCached(e) {
					if time.Since(start) > 30*time.Second {
						t.Fatalf("%s not prefetched after 30 s", e.Path())
					}
					time.Sleep(5 * time.Millisecond)
				}
			}
			time.Sleep(100 * time.Millisecond) // a stream that should have stopped would go on
			reqs := blobRequests(reg, tc.layer.Digest)
			if t.Failed() || testing.Verbose() {
				t.Logf("requests:\n%s", reg.RequestLog())
			}
			prioritized := layerView(t, l).Prioritized()
			var tail, probe, rest *fixture.RequestRecord
			var others []fixture.RequestRecord
			for i, r := range reqs {
				switch {
				case r.Range == probeRange:
					probe = &reqs[i]
				case strings.HasPrefix(r.Range, restPrefix):
					rest = &reqs[i]
				case tail == nil:
					tail = &reqs[i] // the first request of another range
				default:
					others = append(others, r)
				}
			}
			if tail == nil {
				t.Fatalf("blob requests %v: want the tail", reqs)
			}
			if tc.rest == "" {
				// The probe may not reach the registry at all: with nothing
				// to prefetch, the head stream is released as soon as the TOC
				// is in, which on a fast registry can be before its request
				// is sent.
				if rest != nil || len(others) > 0 {
					t.Errorf("a layer with nothing prioritized streamed past its probe: %v", reqs)
				}
				return
			}
			if probe == nil {
				t.Fatalf("blob requests %v: want the probe", reqs)
			}
			if rest == nil || !strings.HasPrefix(rest.Range, tc.rest) {
				t.Fatalf("blob requests %v: want the stream's rest %s...", reqs, tc.rest)
			}
			if rest.Time.Before(tail.Time) {
				t.Errorf("the stream's rest asked for at %v, before the TOC (%v)", rest.Time.Format("15:04:05.000"), tail.Time.Format("15:04:05.000"))
			}
			if tc.others >= 0 && len(others) != tc.others {
				t.Errorf("%d blob requests besides the tail and the stream, want %d", len(others), tc.others)
			}
			if tc.others < 0 && len(others) == 0 {
				t.Error("the window covers less than the prioritized files, yet nothing else was fetched")
			}
			assertDisjoint(t, reqs)
			if len(prioritized) != len(prio) {
				t.Errorf("%d prioritized files, want %d", len(prioritized), len(prio))
			}
			// The prefetched files read right and from the cache.
			reg.ResetStats()
			for _, e := range prioritized {
				got, err := os.ReadFile(filepath.Join(tree(t, diff), e.Path()))
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(got, fstest.TarFile(t, tarBytes, e.Path())) {
					t.Errorf("%s differs from the tar", e.Path())
				}
			}
			if s := reg.Stats(); s.BlobRequests != 0 {
				t.Errorf("reading the prefetched files made %d blob requests", s.BlobRequests)
			}
		})
	}
}

// The Ranges of the head stream's two requests.
const (
	probeRange = "bytes=0-4095"
	restPrefix = "bytes=4096-"
)

func openLayer(t *testing.T, m *mounted, dg digest.Digest) *pool.Layer {
	t.Helper()
	for _, l := range m.Pool.Layers() {
		if l.Desc.Digest == dg {
			return l
		}
	}
	t.Fatalf("layer %s not open", dg)
	return nil
}

// blobRequests lists the registry's GETs of blob dg, in arrival order.
func blobRequests(reg *fixture.Registry, dg digest.Digest) []fixture.RequestRecord {
	var out []fixture.RequestRecord
	for _, r := range reg.Requests() {
		if r.Method == http.MethodGet && strings.HasSuffix(r.Path, "/blobs/"+dg.String()) {
			out = append(out, r)
		}
	}
	return out
}

// assertDisjoint fails if two requests asked for the same blob byte.
func assertDisjoint(t *testing.T, reqs []fixture.RequestRecord) {
	t.Helper()
	type span struct{ first, last int64 }
	var spans []span
	for _, r := range reqs {
		var s span
		var ok bool
		if s.first, s.last, ok = r.Span(); !ok {
			t.Errorf("request without a range: %q", r.Range)
			continue
		}
		for _, o := range spans {
			if s.first <= o.last && o.first <= s.last {
				t.Errorf("bytes %d-%d asked for twice (also in %d-%d)", max(s.first, o.first), min(s.last, o.last), o.first, o.last)
			}
		}
		spans = append(spans, s)
	}
}
