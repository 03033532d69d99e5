package layer

import (
	"archive/tar"
	"bytes"
	"context"
	"io"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/containerd/stargz-snapshotter/estargz"

	"github.com/poolfs/poolfs/fs/fstest"
)

// fillLayer is an optimized layer whose prioritized files make several
// prefetch pieces: app/big (10 MiB, incompressible), then app/next and
// app/last, which a program reads while the prefetch is still in app/big
// (as java reads its CDS archive while the prefetch is in lib/modules),
// then data nobody prioritized.
type fillLayer struct {
	blob  *fstest.MemBlob
	cache *memCache
	l     *Layer
	files map[string][]byte
}

var fillLayers sync.Map // *builtBigLayer, built once

func openFillLayer(t *testing.T) *fillLayer {
	t.Helper()
	v, ok := fillLayers.Load(0)
	if !ok {
		v, _ = fillLayers.LoadOrStore(0, buildFillLayer(t))
	}
	built := v.(*builtBigLayer)
	f := &fillLayer{blob: fstest.NewMemBlob(built.data), cache: newMemCache(), files: built.files}
	l, err := Open(context.Background(), f.blob, built.toc, f.cache, nil)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	f.l = l
	f.blob.ResetStats()
	return f
}

func buildFillLayer(t *testing.T) *builtBigLayer {
	t.Helper()
	rng := rand.NewChaCha8([32]byte{3})
	files := map[string][]byte{}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: "app/", Mode: 0o755}); err != nil {
		t.Fatal(err)
	}
	for _, f := range []struct {
		name string
		size int
	}{{"app/big", 10 << 20}, {"app/next", 200 << 10}, {"app/last", 5 << 20}, {"app/other", 2 << 20}} {
		b := make([]byte, f.size)
		_, _ = rng.Read(b)
		files[f.name] = b
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: f.name, Mode: 0o644, Size: int64(f.size)}); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write(b); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	data, toc := fstest.EStargz(t, buf.Bytes(), estargz.WithChunkSize(256<<10),
		estargz.WithPrioritizedFiles([]string{"app/big", "app/next", "app/last"}))
	return &builtBigLayer{data: data, toc: toc, files: files}
}

func (f *fillLayer) read(t *testing.T, name string, off, n int64) {
	t.Helper()
	e := lookup(t, f.l, name)
	got := make([]byte, n)
	m, err := f.l.ReadAt(context.Background(), e, got, off)
	if err != nil && err != io.EOF {
		t.Fatalf("ReadAt(%s, %d): %v", name, off, err)
	}
	if !bytes.Equal(got[:m], f.files[name][off:off+n]) {
		t.Fatalf("ReadAt(%s, %d): content differs", name, off)
	}
}

// blobRange is the compressed range of a file's chunks.
func (f *fillLayer) blobRange(t *testing.T, name string) (start, end int64) {
	t.Helper()
	return lookup(t, f.l, name).file().span()
}

// heldBlob holds the blob reads that start in [from, to) until released,
// and tells each read's offset as it arrives.
type heldBlob struct {
	from, to int64
	release  chan struct{}
	arrived  chan int64
}

func holdReads(b *fstest.MemBlob, from, to int64) *heldBlob {
	h := &heldBlob{from: from, to: to, release: make(chan struct{}), arrived: make(chan int64, 100)}
	b.SetHook(func(ctx context.Context, off, n int64) error {
		h.arrived <- off
		if off >= h.from && off < h.to {
			select {
			case <-h.release:
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		return nil
	})
	return h
}

func (h *heldBlob) next(t *testing.T) int64 {
	t.Helper()
	select {
	case off := <-h.arrived:
		return off
	case <-time.After(10 * time.Second):
		t.Fatal("no blob read came")
		return 0
	}
}

// A read of a prioritized file far past where the prefetch is goes to the
// registry at once, not behind the prefetch's pieces, and the prefetch
// goes on from there: the next piece it asks for is the one after that
// read, before the rest of app/big; the skipped pieces come afterwards,
// and no byte is fetched twice.
func TestDemandReadMovesTheFill(t *testing.T) {
	f := openFillLayer(t)
	bigStart, bigEnd := f.blobRange(t, "app/big")
	nextStart, nextEnd := f.blobRange(t, "app/next")
	lastStart, lastEnd := f.blobRange(t, "app/last")
	if bigEnd-bigStart < 3*prefetchPiece/2 || lastEnd-lastStart < prefetchPiece {
		t.Fatalf("app/big is %d bytes and app/last %d: the test needs pieces of each", bigEnd-bigStart, lastEnd-lastStart)
	}
	// The prefetch's first pieces (in app/big) are held.
	held := holdReads(f.blob, bigStart, bigEnd)
	done := make(chan error, 1)
	go func() {
		_, err := f.l.Prefetch(context.Background())
		done <- err
	}()
	for range prefetchParallel {
		if off := held.next(t); off < bigStart || off >= bigEnd {
			t.Fatalf("the prefetch's first read is at %d, not in app/big [%d, %d)", off, bigStart, bigEnd)
		}
	}

	// app/next is read while the prefetch is held: it fetches app/next
	// itself and returns.
	f.read(t, "app/next", 0, 100<<10)
	if off := held.next(t); off < nextStart || off >= nextEnd {
		t.Fatalf("the read of app/next asked for blob offset %d, not in [%d, %d)", off, nextStart, nextEnd)
	}
	// Its read-ahead (off by default) and nothing else: no piece was sent
	// while held.
	select {
	case off := <-held.arrived:
		t.Fatalf("a blob read at %d came while the prefetch was held", off)
	default:
	}

	close(held.release)
	if err := <-done; err != nil {
		t.Fatalf("Prefetch: %v", err)
	}
	reads := f.blob.Reads()
	checkNoOverlap(t, reads)
	// Once the two pieces in flight were done, the prefetch asked for
	// app/last before the rest of app/big.
	var chunks []*chunk
	for _, name := range []string{"app/big", "app/next", "app/last"} {
		chunks = append(chunks, lookup(t, f.l, name).file().chunks...)
	}
	pieces := cutPieces(chunks, prefetchPiece)
	if len(pieces) < 4 || pieces[2][0].blobOff >= nextStart {
		t.Fatalf("the prefetch's third piece does not start in app/big: %d pieces", len(pieces))
	}
	bigRest := pieces[2][0].blobOff
	firstLast, firstBigRest := -1, -1
	for i, r := range reads {
		switch off := r[0]; {
		case off >= lastStart && off < lastEnd && firstLast < 0:
			firstLast = i
		case off >= bigRest && off < nextStart && firstBigRest < 0:
			firstBigRest = i
		}
	}
	if firstLast < 0 || firstBigRest < 0 || firstBigRest < firstLast {
		t.Errorf("the prefetch asked for the rest of app/big (read %d) before app/last (read %d), reads %v", firstBigRest, firstLast, reads)
	}
	// Everything prioritized is cached: the skipped pieces came too.
	f.blob.SetHook(nil)
	f.blob.ResetStats()
	for _, name := range []string{"app/big", "app/next", "app/last"} {
		f.read(t, name, 0, int64(len(f.files[name])))
	}
	if calls, n := f.blob.Stats(); calls != 0 {
		t.Errorf("reading the prioritized files after the prefetch made %d requests (%d bytes), want none", calls, n)
	}
}
