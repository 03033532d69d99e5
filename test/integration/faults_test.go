package integration

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/poolfs/poolfs/pool"
	"github.com/poolfs/poolfs/remote"
	"github.com/poolfs/poolfs/test/fixture"
)

// logFaults reports what the injector did, for the figures.
func logFaults(t *testing.T, f *fixture.Faults) fixture.FaultCounts {
	t.Helper()
	c := f.Counts()
	var parts []string
	for k, v := range c.ByKind {
		parts = append(parts, k.String()+"="+strconv.FormatInt(v, 10))
	}
	sort.Strings(parts)
	t.Logf("fault injector: %d requests, %d spoiled (%s)", c.Requests, c.Injected(), strings.Join(parts, " "))
	return c
}

// TestFaultsWholeLayersRight reads whole layers through the mount while the
// registry spoils a fifth of its answers, and compares every file with the
// source tar: transient faults must cost time, never a wrong or missing
// byte.
func TestFaultsWholeLayersRight(t *testing.T) {
	cases := []struct {
		name string
		cfg  fixture.FaultConfig
	}{
		{"20% failing requests", fixture.FaultConfig{
			Seed:      1,
			Status503: 0.04, Status429: 0.03, Status500: 0.03,
			Drop: 0.03, Reset: 0.03, Truncate: 0.04,
			MaxConsecutive: 2,
		}},
		{"20% corrupted blob bodies", fixture.FaultConfig{
			Seed: 2, Corrupt: 0.20,
			// Below the layer's 3 verification attempts: every chunk
			// gets through in the end, which is what the test checks.
			MaxConsecutive: 2,
		}},
		{"mixed with delays", fixture.FaultConfig{
			Seed:      3,
			Status503: 0.05, Reset: 0.05, Truncate: 0.05, Corrupt: 0.05,
			Delay: 0.1, DelayBy: 20 * time.Millisecond,
			MaxConsecutive: 2,
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			reg := fixture.StartRegistry(t)
			tars := [][]byte{fixture.KitchenSinkTar(), layerTar(1, 40), layerTar(2, 25)}
			ref, layers := pushImage(t, reg, "test/faults", tars, fixture.ImageOptions{ChunkSize: 64 << 10})
			// An optimized layer too, whose prioritized files the early
			// prefetch streams, under the same faults.
			optTar := layerTar(4, 40)
			optRef, optLayers := pushImage(t, reg, "test/faults-opt", [][]byte{optTar}, fixture.ImageOptions{
				ChunkSize: 64 << 10, PrioritizedFiles: []string{"d/f000", "d/f001", "d/f005", "d/f010", "d/f011", "d/f015"}})
			// And zstd:chunked layers.
			zTars := [][]byte{fixture.KitchenSinkTar(), layerTar(3, 30)}
			zRef, zLayers := pushImage(t, reg, "test/faults-zstd", zTars, fixture.ImageOptions{ChunkSize: 64 << 10, ZstdChunked: true})
			faults := fixture.NewFaults(tc.cfg)
			reg.SetMiddleware(faults.Middleware)
			m := mountPoolOpts(t, reg, mountOpts{Quiet: true, Prefetch: pool.PrefetchOptions{Early: pool.DefaultEarly}})

			var files, diffs int
			check := func(name, dir string, tarBytes []byte) {
				d, n := treeDiffs(t, dir, tarBytes)
				for _, line := range d {
					t.Errorf("%s: %s", name, line)
				}
				files += n
				diffs += len(d)
			}
			for i, li := range layers {
				check(fmt.Sprintf("layer %d", i), filepath.Join(m.grammar2(ref, li.Digest.String()), "diff"), tars[i])
			}
			check("optimized layer", filepath.Join(m.grammar2(optRef, optLayers[0].Digest.String()), "diff"), optTar)
			for i, li := range zLayers {
				check(fmt.Sprintf("zstd:chunked layer %d", i), filepath.Join(m.grammar2(zRef, li.TOCDigest.String()), "diff"), zTars[i])
			}
			layers = append(append(layers, optLayers...), zLayers...)
			c := logFaults(t, faults)
			t.Logf("figures: %d layers, %d files read and compared, %d differences, %d of %d requests spoiled",
				len(layers), files, diffs, c.Injected(), c.Requests)
			if c.Injected() == 0 {
				t.Fatal("no fault was injected: the test proves nothing")
			}
		})
	}
}

// TestFaultsCacheHoldsVerifiedOnly reads layers under 20% corrupted
// responses, then mounts a second pool on the same disk cache with a
// healthy registry: what the first pool cached is served without fetching
// chunks again, and it is right. A corrupted chunk that reached the cache
// would show up here as a difference.
func TestFaultsCacheHoldsVerifiedOnly(t *testing.T) {
	reg := fixture.StartRegistry(t)
	// Bigger than the 1 MiB tail read at open, so chunks must come from
	// the cache rather than from the tail.
	tars := [][]byte{layerTar(5, 60)}
	ref, layers := pushImage(t, reg, "test/cachecheck", tars, fixture.ImageOptions{ChunkSize: 64 << 10})
	if layers[0].Size < 2<<20 {
		t.Fatalf("layer of %d bytes is too small for this test", layers[0].Size)
	}
	faults := fixture.NewFaults(fixture.FaultConfig{Seed: 9, Corrupt: 0.2, MaxConsecutive: 2})
	reg.SetMiddleware(faults.Middleware)
	cacheDir := filepath.Join(t.TempDir(), "cache")

	m1 := mountPoolOpts(t, reg, mountOpts{CacheDir: cacheDir, Quiet: true})
	d, files := treeDiffs(t, filepath.Join(m1.grammar2(ref, layers[0].Digest.String()), "diff"), tars[0])
	for _, line := range d {
		t.Errorf("first read: %s", line)
	}
	c := logFaults(t, faults)
	if c.ByKind[fixture.FaultCorrupt] == 0 {
		t.Fatal("nothing was corrupted")
	}

	reg.SetMiddleware(nil)
	reg.ResetStats()
	// A tiny memory tier so that the disk tier is what serves.
	m2 := mountPoolOpts(t, reg, mountOpts{CacheDir: cacheDir, MemoryMB: 1, Quiet: true})
	d, _ = treeDiffs(t, filepath.Join(m2.grammar2(ref, layers[0].Digest.String()), "diff"), tars[0])
	for _, line := range d {
		t.Errorf("from the disk cache: %s", line)
	}
	st := reg.Stats()
	t.Logf("figures: %d files compared twice; second pool fetched %d blob bytes of a %d byte layer (TOC tail only)",
		files, st.BlobBytes, layers[0].Size)
	if st.BlobBytes > 1<<20+4096 {
		t.Errorf("second pool fetched %d blob bytes; only the 1 MiB tail should be needed", st.BlobBytes)
	}
}

// TestFaultsCorruptedTOC: a TOC or footer spoiled in transit is fetched
// again instead of failing the layer, and when it keeps arriving spoiled,
// the failure is not remembered once the registry behaves again.
func TestFaultsCorruptedTOC(t *testing.T) {
	cases := []struct {
		name    string
		fromEnd int64 // the footer is the last 51 bytes, the TOC before it
		// recovers: once the registry behaves, the next lookup succeeds.
		// A footer that never parses is taken for "not eStargz" and
		// remembered for a while (pool's noFormatTTL), so only a
		// spoiled TOC is checked for that.
		recovers bool
		opts     fixture.ImageOptions
	}{
		{"footer", 30, false, fixture.ImageOptions{}},
		{"TOC", 51 + 40, true, fixture.ImageOptions{}},
		// The position annotation locates the manifest; the footer (72
		// bytes) and the empty tar-split frame (8) follow it.
		{"zstd:chunked manifest", 72 + 8 + 40, true, fixture.ImageOptions{ZstdChunked: true}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			// Without suffix ranges, every TOC read is one of a first-last
			// range, which the faults spoil twice: a suffix range read
			// beside the manifest would be spoiled apart from those
			// (TestFirstLookupTailNotServedUnlessItFits spoils that one).
			reg := fixture.StartRegistry(t, fixture.WithoutSuffixRanges())
			tars := [][]byte{fixture.KitchenSinkTar()}
			ref, layers := pushImage(t, reg, "test/toc", tars, tc.opts)
			diff := func(m *mounted) string {
				return filepath.Join(m.grammar2(ref, layers[0].Digest.String()), "diff")
			}

			// Twice spoiled, then right: the third TOC read opens the layer.
			blob := layers[0].Digest
			faults := fixture.NewFaults(fixture.FaultConfig{Blob: blob, Corrupt: 1, CorruptFromEnd: tc.fromEnd, MaxConsecutive: 2})
			reg.SetMiddleware(faults.Middleware)
			m := mountPoolOpts(t, reg, mountOpts{})
			if _, err := os.Stat(diff(m)); err != nil {
				t.Fatalf("layer not served after two spoiled TOC reads: %v", err)
			}
			if n := faults.Counts().ByKind[fixture.FaultCorrupt]; n != 3 {
				t.Errorf("%d corrupted answers, want 3 (two spoiled TOC reads, and the suffix range refused before them)", n)
			}
			reg.SetMiddleware(nil)
			compareTree(t, diff(m), tars[0])

			if !tc.recovers {
				return
			}
			// Always spoiled: the lookup fails, and succeeds once the
			// registry is healthy again (no failure cached).
			faults = fixture.NewFaults(fixture.FaultConfig{Blob: blob, Corrupt: 1, CorruptFromEnd: tc.fromEnd})
			reg.SetMiddleware(faults.Middleware)
			m = mountPoolOpts(t, reg, mountOpts{})
			if _, err := os.Stat(diff(m)); err == nil {
				t.Fatal("a layer whose TOC never arrives intact was served")
			}
			reg.SetMiddleware(nil)
			compareTree(t, diff(m), tars[0])
		})
	}
}

// TestFaultsRegistryDown: with the registry black-holed, a read of data
// nobody cached fails with EIO within the fetch timeout while another
// layer's cached files keep being served; once the registry is back the
// same read succeeds, and a layer never looked up before can be found.
func TestFaultsRegistryDown(t *testing.T) {
	reg := fixture.StartRegistry(t)
	tarA, tarB, tarC := layerTar(11, 20), layerTar(12, 20), layerTar(13, 5)
	refA, la := pushImage(t, reg, "test/a", [][]byte{tarA}, fixture.ImageOptions{ChunkSize: 64 << 10})
	refB, lb := pushImage(t, reg, "test/b", [][]byte{tarB}, fixture.ImageOptions{ChunkSize: 64 << 10})
	refC, lc := pushImage(t, reg, "test/c", [][]byte{tarC}, fixture.ImageOptions{})
	faults := fixture.NewFaults(fixture.FaultConfig{})
	reg.SetMiddleware(faults.Middleware)

	const fetchTimeout = 2 * time.Second
	m := mountPoolOpts(t, reg, mountOpts{Remote: remote.Options{FetchTimeout: fetchTimeout, RequestTimeout: time.Second}})
	dirA := filepath.Join(m.grammar2(refA, la[0].Digest.String()), "diff")
	dirB := filepath.Join(m.grammar2(refB, lb[0].Digest.String()), "diff")
	dirC := filepath.Join(m.grammar2(refC, lc[0].Digest.String()), "diff")

	compareTree(t, dirA, tarA) // layer A: every chunk now in the daemon's cache
	// Layer B: open (TOC read) but the big file at the start of the blob
	// is not read; it lies outside the tail fetched with the TOC.
	if _, err := os.Stat(dirB); err != nil {
		t.Fatal(err)
	}
	uncached := filepath.Join(dirB, "d", "f000")

	faults.SetDown(true, fixture.DownHang)
	dropPageCache(t, dirA)

	type result struct {
		err     error
		elapsed time.Duration
	}
	done := make(chan result, 1)
	go func() {
		start := time.Now()
		_, err := os.ReadFile(uncached)
		done <- result{err, time.Since(start)}
	}()
	// Meanwhile layer A is read again, from the daemon's cache alone.
	aStart := time.Now()
	compareTree(t, dirA, tarA)
	aElapsed := time.Since(aStart)

	r := <-done
	t.Logf("figures: uncached read while down failed after %s (fetch timeout %s): %v; cached layer re-read took %s",
		r.elapsed.Round(time.Millisecond), fetchTimeout, r.err, aElapsed.Round(time.Millisecond))
	if !errors.Is(r.err, syscall.EIO) {
		t.Errorf("read of uncached data while the registry is down: %v, want EIO", r.err)
	}
	// A generous bound: the point is "bounded", not how fast.
	if r.elapsed > 10*fetchTimeout {
		t.Errorf("the failing read took %s, far beyond the %s fetch timeout", r.elapsed, fetchTimeout)
	}

	// A layer nobody looked up yet cannot be found while down (connections
	// refused, so the lookup fails fast) ...
	faults.SetDown(true, fixture.DownRefuse)
	if _, err := os.Stat(dirC); err == nil {
		t.Error("a layer was resolved while the registry was down")
	}

	// ... and everything works once the registry is back.
	faults.SetDown(false, fixture.DownRefuse)
	want := tarContentHash(t, tarB, "d/f000")
	got, err := os.ReadFile(uncached)
	if err != nil {
		t.Fatalf("the same read after the registry came back: %v", err)
	}
	if sha256.Sum256(got) != want {
		t.Error("the read after the registry came back returned wrong bytes")
	}
	compareTree(t, dirB, tarB)
	compareTree(t, dirC, tarC)
	logFaults(t, faults)
}
