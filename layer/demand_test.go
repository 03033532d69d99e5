package layer

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
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

// allPrioritizedCached fails unless reading every prioritized file whole
// costs no blob read (the prefetch brought all of them).
func (f *fillLayer) allPrioritizedCached(t *testing.T) {
	t.Helper()
	f.blob.SetHook(nil)
	f.blob.ResetStats()
	for _, name := range []string{"app/big", "app/next", "app/last"} {
		f.read(t, name, 0, int64(len(f.files[name])))
	}
	if calls, n := f.blob.Stats(); calls != 0 {
		t.Errorf("reading the prioritized files after the prefetch made %d requests (%d bytes), want none", calls, n)
	}
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
	if err := f.readErr(t, name, off, n); err != nil {
		t.Fatal(err)
	}
}

// readErr reads n bytes of name at off and compares them with the file's
// (for goroutines, which must not call t.Fatal).
func (f *fillLayer) readErr(t *testing.T, name string, off, n int64) error {
	e := lookup(t, f.l, name)
	got := make([]byte, n)
	m, err := f.l.ReadAt(context.Background(), e, got, off)
	if err != nil && err != io.EOF {
		return fmt.Errorf("ReadAt(%s, %d): %w", name, off, err)
	}
	if !bytes.Equal(got[:m], f.files[name][off:off+n]) {
		return fmt.Errorf("ReadAt(%s, %d): content differs", name, off)
	}
	return nil
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
	return nextArrival(t, h.arrived)
}

// nextArrival is the offset of the next blob read to arrive at a test's
// blob; the test fails if none comes.
func nextArrival(t *testing.T, arrived <-chan int64) int64 {
	t.Helper()
	select {
	case off := <-arrived:
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
	f.allPrioritizedCached(t)
}

// gatedBlob holds every blob read until the test lets it go by its
// offset (or lets all go), and tells each read's offset as it arrives.
type gatedBlob struct {
	mu      sync.Mutex
	gates   map[int64]chan struct{}
	all     bool
	arrived chan int64
}

func gateReads(b *fstest.MemBlob) *gatedBlob {
	g := &gatedBlob{gates: map[int64]chan struct{}{}, arrived: make(chan int64, 100)}
	b.SetHook(func(ctx context.Context, off, n int64) error {
		g.mu.Lock()
		ch := g.gateLocked(off)
		if g.all {
			close(ch)
			g.gates[off] = nil
		}
		g.mu.Unlock()
		g.arrived <- off
		if ch == nil {
			return nil
		}
		select {
		case <-ch:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	})
	return g
}

func (g *gatedBlob) gateLocked(off int64) chan struct{} {
	ch, ok := g.gates[off]
	if !ok {
		ch = make(chan struct{})
		g.gates[off] = ch
	}
	return ch
}

// let lets the read at off go (now, or when it comes).
func (g *gatedBlob) let(off int64) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if ch := g.gateLocked(off); ch != nil {
		close(ch)
		g.gates[off] = nil
	}
}

// letAll lets every read go, now and from now on.
func (g *gatedBlob) letAll() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.all = true
	for off, ch := range g.gates {
		if ch != nil {
			close(ch)
			g.gates[off] = nil
		}
	}
}

func (g *gatedBlob) next(t *testing.T) int64 {
	t.Helper()
	return nextArrival(t, g.arrived)
}

// gatedPrefetch starts the prefetch of a fill layer whose blob reads wait
// at the gate; done gets the prefetch's result.
func gatedPrefetch(t *testing.T) (*fillLayer, *gatedBlob, <-chan error) {
	t.Helper()
	f := openFillLayer(t)
	g := gateReads(f.blob)
	done := make(chan error, 1)
	go func() {
		_, err := f.l.Prefetch(context.Background())
		done <- err
	}()
	return f, g, done
}

// none fails if a blob read comes within a moment (a wrong fill would
// send one at once; a right one never does, however slow the machine).
func (g *gatedBlob) none(t *testing.T, what string) {
	t.Helper()
	select {
	case off := <-g.arrived:
		t.Fatalf("%s: a blob read at %d came", what, off)
	case <-time.After(100 * time.Millisecond):
	}
}

// While a demand read waits, the fill sends one segment at a time: its
// two workers' segments in flight end, the next one goes once both have,
// and the other worker's only after the demand read is done.
func TestFillSendsOneSegmentWhileADemandReadWaits(t *testing.T) {
	f, g, done := gatedPrefetch(t)
	defer g.letAll()
	a1, a2 := g.next(t), g.next(t)

	// A demand read of a file nobody prioritized: its read goes out at
	// once, with the prefetch's two segments in flight.
	otherStart, otherEnd := f.blobRange(t, "app/other")
	read := make(chan struct{})
	go func() {
		defer close(read)
		if err := f.readErr(t, "app/other", 0, 64<<10); err != nil {
			t.Error(err)
		}
	}()
	d := g.next(t)
	if d < otherStart || d >= otherEnd {
		t.Fatalf("the demand read asked for blob offset %d, not app/other's [%d, %d)", d, otherStart, otherEnd)
	}

	g.let(a1)
	g.none(t, "one fill segment still in flight while a demand read waits")
	g.let(a2)
	b1 := g.next(t)
	if b1 >= otherStart {
		t.Fatalf("the fill's next segment is at %d, past the prioritized files", b1)
	}
	g.none(t, "a fill segment in flight while a demand read waits")

	g.let(d)
	<-read
	b2 := g.next(t) // the other worker's, now that nobody waits
	g.let(b1)
	g.let(b2)
	g.letAll()
	if err := <-done; err != nil {
		t.Fatalf("Prefetch: %v", err)
	}
	checkNoOverlap(t, f.blob.Reads())
	f.allPrioritizedCached(t)
}

// A demand read that waits for chunks the fill claimed is not held up by
// the gate it holds the fill back with: the fill goes on with the fetch
// that brings them, though another of its segments is in flight.
func TestFillGoesOnForChunksADemandReadWaitsFor(t *testing.T) {
	f, g, done := gatedPrefetch(t)
	defer g.letAll()
	a1 := min(g.next(t), g.next(t))
	bigStart, _ := f.blobRange(t, "app/big")
	if a1 != bigStart {
		t.Fatalf("the prefetch's first segment is at %d, want app/big's start %d", a1, bigStart)
	}
	// app/big's bytes at 1.5 MiB are in the first piece's second segment:
	// the fill claimed them.
	read := make(chan struct{})
	go func() {
		defer close(read)
		if err := f.readErr(t, "app/big", 3<<19, 64<<10); err != nil {
			t.Error(err)
		}
	}()
	g.none(t, "a read of chunks the fill claimed")
	g.let(a1)
	if b := g.next(t); b != a1+fillSegment {
		t.Fatalf("after its first segment the fill asked for %d, want its second at %d", b, a1+fillSegment)
	} else {
		g.let(b)
	}
	select {
	case <-read:
	case <-time.After(10 * time.Second):
		t.Fatal("the demand read did not return")
	}
	g.letAll()
	if err := <-done; err != nil {
		t.Fatalf("Prefetch: %v", err)
	}
	checkNoOverlap(t, f.blob.Reads())
}
