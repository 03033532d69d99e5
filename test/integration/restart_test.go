package integration

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/poolfs/poolfs/meta"
	"github.com/poolfs/poolfs/test/fixture"
)

// openMeta opens the metadata store at path, closing it at cleanup (and
// earlier if the test calls the returned function).
func openMeta(t *testing.T, path string) (*meta.Store, func()) {
	t.Helper()
	s, err := meta.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	closed := false
	closeFn := func() {
		if !closed {
			closed = true
			if err := s.Close(); err != nil {
				t.Errorf("closing metadata store: %v", err)
			}
		}
	}
	t.Cleanup(closeFn)
	return s, closeFn
}

// TestRestartState is the in-process side of a restart: a second pool on
// the first one's metadata store and disk cache serves a known layer while
// the registry is down; a damaged TOC record is dropped and the layer
// resolved from the registry again; damaged cache files are dropped and
// their chunks fetched again, and every file is still right.
func TestRestartState(t *testing.T) {
	t.Run("eStargz", func(t *testing.T) { testRestartState(t, fixture.ImageOptions{ChunkSize: 64 << 10}) })
	t.Run("zstd:chunked", func(t *testing.T) { testRestartState(t, fixture.ImageOptions{ChunkSize: 64 << 10, ZstdChunked: true}) })
}

func testRestartState(t *testing.T, opts fixture.ImageOptions) {
	reg := fixture.StartRegistry(t)
	tarBytes := layerTar(21, 30)
	ref, layers := pushImage(t, reg, "test/state", [][]byte{tarBytes}, opts)
	li := layers[0]
	faults := fixture.NewFaults(fixture.FaultConfig{})
	reg.SetMiddleware(faults.Middleware)
	dir := t.TempDir()
	cacheDir, metaPath := filepath.Join(dir, "chunks"), filepath.Join(dir, "meta.db")
	diff := func(m *mounted) string { return filepath.Join(m.grammar2(ref, li.Digest.String()), "diff") }

	store, closeStore := openMeta(t, metaPath)
	m := mountPoolOpts(t, reg, mountOpts{CacheDir: cacheDir, Meta: store, Quiet: true})
	compareTree(t, diff(m), tarBytes)
	m.Pool.Flush()
	closeStore()

	t.Run("known layer while the registry is down", func(t *testing.T) {
		store, closeStore := openMeta(t, metaPath)
		defer closeStore()
		faults.SetDown(true, fixture.DownRefuse)
		defer faults.SetDown(false, fixture.DownRefuse)
		reg.ResetStats()
		m := mountPoolOpts(t, reg, mountOpts{CacheDir: cacheDir, Meta: store, MemoryMB: 1, Quiet: true})
		compareTree(t, diff(m), tarBytes)
		if n := faults.Counts().ByKind[fixture.FaultDown]; n != 0 {
			t.Errorf("%d requests reached the (down) registry", n)
		}
	})

	t.Run("damaged TOC record", func(t *testing.T) {
		store, closeStore := openMeta(t, metaPath)
		defer closeStore()
		rec, err := store.Lookup(ref, li.Digest)
		if err != nil {
			t.Fatal(err)
		}
		rec.TOC.Member[len(rec.TOC.Member)/2] ^= 1
		if err := store.Put(ref, li.Digest, rec); err != nil {
			t.Fatal(err)
		}
		reg.ResetStats()
		m := mountPoolOpts(t, reg, mountOpts{CacheDir: cacheDir, Meta: store, Quiet: true})
		compareTree(t, diff(m), tarBytes)
		if st := reg.Stats(); st.ManifestRequests == 0 {
			t.Error("a damaged record was used instead of asking the registry")
		}
		// The registry's answer replaced the damaged record (written in
		// the background: Flush waits for it).
		m.Pool.Flush()
		if rec, err := store.Lookup(ref, li.Digest); err != nil || string(rec.TOC.Digest) != string(li.TOCDigest) {
			t.Errorf("record after recovery: %v, %v", rec.TOC.Digest, err)
		}
	})

	t.Run("damaged cache files", func(t *testing.T) {
		damaged := 0
		err := filepath.WalkDir(cacheDir, func(p string, d os.DirEntry, err error) error {
			if err != nil || !d.Type().IsRegular() {
				return err
			}
			b, err := os.ReadFile(p)
			if err != nil || len(b) == 0 {
				return err
			}
			b[len(b)/3] ^= 0xff
			damaged++
			return os.WriteFile(p, b, 0o600)
		})
		if err != nil {
			t.Fatal(err)
		}
		store, closeStore := openMeta(t, metaPath)
		defer closeStore()
		reg.ResetStats()
		m := mountPoolOpts(t, reg, mountOpts{CacheDir: cacheDir, Meta: store, MemoryMB: 1, Quiet: true})
		compareTree(t, diff(m), tarBytes)
		st := reg.Stats()
		t.Logf("figures: %d cache files damaged; %d blob bytes fetched again (layer of %d bytes)", damaged, st.BlobBytes, li.Size)
		if damaged == 0 || st.BlobBytes == 0 {
			t.Errorf("%d files damaged, %d bytes refetched: the damage went unnoticed", damaged, st.BlobBytes)
		}
	})
}

// TestPruneMeta: a pool keeps the records of the layers it has open however
// old they are, and forgets the others once unused for the maximum age;
// the next pool then resolves that layer from the registry again.
func TestPruneMeta(t *testing.T) {
	reg := fixture.StartRegistry(t)
	tarBytes := layerTar(22, 5)
	ref, layers := pushImage(t, reg, "test/prune", [][]byte{tarBytes}, fixture.ImageOptions{})
	li := layers[0]
	dir := t.TempDir()
	metaPath := filepath.Join(dir, "meta.db")
	diff := func(m *mounted) string { return filepath.Join(m.grammar2(ref, li.Digest.String()), "diff") }

	store, closeStore := openMeta(t, metaPath)
	m := mountPoolOpts(t, reg, mountOpts{Meta: store, Quiet: true})
	compareTree(t, diff(m), tarBytes)
	m.Pool.Flush()
	// Use times have a resolution of a second: let the record age past a
	// maximum age of one nanosecond.
	time.Sleep(1100 * time.Millisecond)
	if n, err := m.Pool.PruneMeta(time.Nanosecond); err != nil || n != 0 {
		t.Fatalf("pruning with the layer open forgot %d layers (%v), want 0", n, err)
	}
	if _, err := store.Lookup(ref, li.Digest); err != nil {
		t.Fatalf("record of the open layer: %v", err)
	}
	closeStore()

	store, _ = openMeta(t, metaPath)
	m = mountPoolOpts(t, reg, mountOpts{Meta: store, Quiet: true})
	time.Sleep(1100 * time.Millisecond)
	if n, err := m.Pool.PruneMeta(time.Nanosecond); err != nil || n != 1 {
		t.Fatalf("pruning with nothing open forgot %d layers (%v), want 1", n, err)
	}
	if _, err := store.Lookup(ref, li.Digest); !errors.Is(err, meta.ErrNotFound) {
		t.Fatalf("record after pruning: %v, want ErrNotFound", err)
	}
	reg.ResetStats()
	compareTree(t, diff(m), tarBytes)
	if st := reg.Stats(); st.Requests == 0 {
		t.Error("the layer whose record was pruned was served without asking the registry")
	}
}
