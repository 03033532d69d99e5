package integration

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/poolfs/poolfs/layer"
	"github.com/poolfs/poolfs/test/fixture"
)

// readDropping reads p through one open and drops its pages from the
// kernel's page cache before closing, so that the next open must read
// from the daemon or from a passthrough backing file. It returns the bytes
// and the READ requests the daemon answered meanwhile.
func (m *mounted) readDropping(t *testing.T, p string) ([]byte, int64) {
	t.Helper()
	before := m.Reads.Load()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b, err := io.ReadAll(f)
	if err != nil {
		t.Fatalf("reading %s: %v", p, err)
	}
	if err := unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED); err != nil {
		t.Fatal(err)
	}
	return b, m.Reads.Load() - before
}

func (m *mounted) waitWholeFiles(t *testing.T, n int64) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for m.Disk.WholeStats().Files < n {
		if time.Now().After(deadline) {
			t.Fatalf("%d whole-file copies after 20 s, want %d", m.Disk.WholeStats().Files, n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Through the pool as the daemon wires it (default minimum size): a large
// file read once is then read with no FUSE READ at all, also by a daemon
// started again on the same cache dir; a small file keeps going through
// the daemon; the tree still matches its tar; and with passthrough off
// the same reads work through the daemon.
func TestPassthroughThroughPool(t *testing.T) {
	t.Run("eStargz", func(t *testing.T) { testPassthroughThroughPool(t, fixture.ImageOptions{ChunkSize: 256 << 10}) })
	t.Run("zstd:chunked", func(t *testing.T) {
		testPassthroughThroughPool(t, fixture.ImageOptions{ChunkSize: 256 << 10, ZstdChunked: true})
	})
}

func testPassthroughThroughPool(t *testing.T, opts fixture.ImageOptions) {
	reg := fixture.StartRegistry(t)
	big := fixture.RandomBytes(11, 3<<20+12345) // several 256 KiB chunks, above the minimum size
	small := fixture.RandomBytes(12, 100<<10)
	if int64(len(small)) >= layer.DefaultWholeMinSize || int64(len(big)) < layer.DefaultWholeMinSize {
		t.Fatal("test setup: big.bin and small.bin must straddle the minimum size")
	}
	tarBytes := fixture.BuildTar([]fixture.TarEntry{
		{Name: "data/big.bin", Mode: 0o644, Content: big},
		{Name: "data/small.bin", Mode: 0o644, Content: small},
	})
	ref, layers := pushImage(t, reg, "test/passthrough", [][]byte{tarBytes}, opts)
	cacheDir := filepath.Join(t.TempDir(), "cache")
	diff := func(m *mounted) string { return filepath.Join(m.grammar2(ref, layers[0].Digest.String()), "diff") }

	t.Run("first daemon", func(t *testing.T) {
		m := mountPoolOpts(t, reg, mountOpts{CacheDir: cacheDir, Passthrough: true})
		bigPath, smallPath := filepath.Join(diff(m), "data/big.bin"), filepath.Join(diff(m), "data/small.bin")
		if got, reads := m.readDropping(t, bigPath); !bytes.Equal(got, big) || reads == 0 {
			t.Fatalf("first read of big.bin: right bytes %v, %d daemon reads", bytes.Equal(got, big), reads)
		}
		m.waitWholeFiles(t, 1)
		for i := range 2 {
			if got, reads := m.readDropping(t, bigPath); !bytes.Equal(got, big) || reads != 0 {
				t.Errorf("read %d of big.bin after its copy: right bytes %v, %d daemon reads (want 0)", i+2, bytes.Equal(got, big), reads)
			}
		}
		for i := range 2 {
			if got, reads := m.readDropping(t, smallPath); !bytes.Equal(got, small) || reads == 0 {
				t.Errorf("read %d of small.bin: right bytes %v, %d daemon reads (want some: below the minimum size)", i+1, bytes.Equal(got, small), reads)
			}
		}
		time.Sleep(100 * time.Millisecond) // a copy of small.bin would be asked for by now
		if ws := m.Disk.WholeStats(); ws.Files != 1 || ws.Bytes != int64(len(big)) {
			t.Errorf("whole-file copies %+v, want only big.bin's", ws)
		}
		compareTree(t, diff(m), tarBytes)
	})

	t.Run("after restart", func(t *testing.T) {
		// The copy is found by the startup scan and served at once.
		m := mountPoolOpts(t, reg, mountOpts{CacheDir: cacheDir, Passthrough: true})
		if ws := m.Disk.WholeStats(); ws.Files != 1 {
			t.Fatalf("after restart: %+v, want big.bin's copy indexed", ws)
		}
		if got, reads := m.readDropping(t, filepath.Join(diff(m), "data/big.bin")); !bytes.Equal(got, big) || reads != 0 {
			t.Errorf("first read after restart: right bytes %v, %d daemon reads (want 0)", bytes.Equal(got, big), reads)
		}
	})

	t.Run("passthrough off", func(t *testing.T) {
		m := mountPoolOpts(t, reg, mountOpts{CacheDir: filepath.Join(t.TempDir(), "cache")})
		p := filepath.Join(diff(m), "data/big.bin")
		for i := range 2 {
			if got, reads := m.readDropping(t, p); !bytes.Equal(got, big) || reads == 0 {
				t.Errorf("read %d: right bytes %v, %d daemon reads (want some)", i+1, bytes.Equal(got, big), reads)
			}
		}
		if ws := m.Disk.WholeStats(); ws.Files != 0 {
			t.Errorf("whole-file copies with passthrough off: %+v", ws)
		}
		compareTree(t, diff(m), tarBytes)
	})
}

// A layer of many small files is served on the trees mount, where the
// kernel opens files without asking the daemon: once its files are cached,
// reading them all again costs the daemon no request. A layer of one large
// file is served in place instead, where its opens reach the daemon and so
// can get passthrough; with passthrough off, it goes to the trees mount
// too.
func TestTreePlacement(t *testing.T) {
	reg := fixture.StartRegistry(t)
	smallTar := layerTar(3, 30)
	bigTar := fixture.BuildTar([]fixture.TarEntry{{Name: "big.bin", Mode: 0o644, Content: fixture.RandomBytes(13, 2<<20)}})
	smallRef, smallLayers := pushImage(t, reg, "test/placement-small", [][]byte{smallTar}, fixture.ImageOptions{})
	bigRef, bigLayers := pushImage(t, reg, "test/placement-big", [][]byte{bigTar}, fixture.ImageOptions{})
	for _, tt := range []struct {
		name        string
		passthrough bool
		ref         string
		layer       fixture.LayerInfo
		tar         []byte
		onTrees     bool
	}{
		{"small files", true, smallRef, smallLayers[0], smallTar, true},
		{"one large file", true, bigRef, bigLayers[0], bigTar, false},
		{"one large file, passthrough off", false, bigRef, bigLayers[0], bigTar, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			m := mountPoolOpts(t, reg, mountOpts{Passthrough: tt.passthrough, Quiet: true})
			diff := filepath.Join(m.grammar2(tt.ref, tt.layer.Digest.String()), "diff")
			fi, err := os.Lstat(diff)
			if err != nil {
				t.Fatal(err)
			}
			if onTrees := fi.Mode()&os.ModeSymlink != 0; onTrees != tt.onTrees {
				t.Fatalf("diff is a link to the trees mount: %v, want %v", onTrees, tt.onTrees)
			}
			compareTree(t, diff, tt.tar) // reads every file: all cached now
			if !tt.onTrees {
				return // opens reach the daemon; TestPassthroughThroughPool reads through them
			}
			compareTree(t, diff, tt.tar)
			opens, reads := m.Opens.Load(), m.Reads.Load()
			compareTree(t, diff, tt.tar)
			if n, r := m.Opens.Load()-opens, m.Reads.Load()-reads; n != 0 || r != 0 {
				t.Errorf("reading the cached tree again: %d OPEN and %d READ requests, want none", n, r)
			}
			if n := m.Opens.Load(); n > 1 {
				t.Errorf("%d OPEN requests in all, want one: the kernel stops at the first one's ENOSYS", n)
			}
		})
	}
}
