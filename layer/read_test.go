package layer

import (
	"bytes"
	"context"
	"errors"
	"io"
	"sync"
	"testing"
	"time"

	"github.com/containerd/stargz-snapshotter/estargz"

	"github.com/poolfs/poolfs/fs/fstest"
)

func TestReadAtRanges(t *testing.T) {
	for _, bo := range buildOptions {
		t.Run(bo.name, func(t *testing.T) {
			s := openSample(t, bo.opts...)
			e := lookup(t, s.l, fstest.SampleBigFile)
			want := fstest.TarFile(t, s.tar, fstest.SampleBigFile)
			size := int64(len(want))
			tests := []struct {
				name    string
				off     int64
				n       int
				wantN   int
				wantEOF bool
			}{
				{"first byte", 0, 1, 1, false},
				{"within a chunk", 100, 1000, 1000, false},
				{"across a chunk boundary", 4000, 200, 200, false},
				{"across several chunks", 1, 3 * 4096, 3 * 4096, false},
				{"exactly one chunk", 4096, 4096, 4096, false},
				{"last byte", size - 1, 1, 1, false},
				{"past the end", size - 10, 100, 10, true},
				{"at the end", size, 10, 0, true},
				{"beyond the end", size + 100, 10, 0, true},
				{"whole file", 0, int(size), int(size), false},
				{"empty buffer", 10, 0, 0, false},
			}
			for _, tt := range tests {
				p := make([]byte, tt.n)
				n, err := s.l.ReadAt(context.Background(), e, p, tt.off)
				if n != tt.wantN || (err == io.EOF) != tt.wantEOF || (err != nil && err != io.EOF) {
					t.Errorf("%s: ReadAt(%d, %d) = %d, %v; want %d, EOF %v", tt.name, tt.off, tt.n, n, err, tt.wantN, tt.wantEOF)
					continue
				}
				if tt.off < size && !bytes.Equal(p[:n], want[tt.off:tt.off+int64(n)]) {
					t.Errorf("%s: wrong bytes", tt.name)
				}
			}
		})
	}
}

func TestReadAtErrors(t *testing.T) {
	s := openSample(t)
	ctx := context.Background()
	if _, err := s.l.ReadAt(ctx, lookup(t, s.l, "bin"), make([]byte, 1), 0); err == nil {
		t.Error("reading a directory succeeded")
	}
	if _, err := s.l.ReadAt(ctx, nil, make([]byte, 1), 0); err == nil {
		t.Error("reading nil succeeded")
	}
	if _, err := s.l.ReadAt(ctx, lookup(t, s.l, "bin/sh"), make([]byte, 1), -1); err == nil {
		t.Error("reading at a negative offset succeeded")
	}
	if n, err := s.l.ReadAt(ctx, lookup(t, s.l, "empty"), make([]byte, 1), 0); n != 0 || err != io.EOF {
		t.Errorf("reading an empty file: %d, %v", n, err)
	}
}

// Reading a file fetches its compressed range (one coalesced request) and
// no more; reading it again is served from the cache.
func TestReadFetchesCompressedRange(t *testing.T) {
	noTail(t)
	s := openSample(t, buildOptions[0].opts...)
	e := lookup(t, s.l, fstest.SampleBigFile)
	start, end := s.l.CompressedRange(e)
	if start <= 0 || end <= start || end > s.blob.Size() {
		t.Fatalf("CompressedRange = [%d, %d)", start, end)
	}
	if len(e.file().chunks) < 5 {
		t.Fatalf("%s has %d chunks; the test needs several", e.Path(), len(e.file().chunks))
	}

	s.blob.ResetStats()
	p := make([]byte, e.Size)
	if _, err := s.l.ReadAt(context.Background(), e, p, 0); err != nil {
		t.Fatal(err)
	}
	if calls, n := s.blob.Stats(); calls != 1 || n != end-start {
		t.Errorf("whole-file read: %d calls, %d bytes; want 1 call of %d bytes", calls, n, end-start)
	}

	s.blob.ResetStats()
	if _, err := s.l.ReadAt(context.Background(), e, p, 0); err != nil {
		t.Fatal(err)
	}
	if calls, _ := s.blob.Stats(); calls != 0 {
		t.Errorf("second read made %d blob reads; want all from cache", calls)
	}

	// A read within one chunk of a fresh layer fetches just that chunk.
	s2 := openSample(t, buildOptions[0].opts...)
	e2 := lookup(t, s2.l, fstest.SampleBigFile)
	c := e2.file().chunks[2]
	s2.blob.ResetStats()
	if _, err := s2.l.ReadAt(context.Background(), e2, make([]byte, 10), c.fileOff+5); err != nil {
		t.Fatal(err)
	}
	if got := s2.blob.Reads(); len(got) != 1 || got[0] != [2]int64{c.blobOff, c.blobEnd - c.blobOff} {
		t.Errorf("one-chunk read fetched %v, want [[%d %d]]", got, c.blobOff, c.blobEnd-c.blobOff)
	}
}

// Identical chunks (a file of zeros) are fetched and cached once.
func TestReadDuplicateChunks(t *testing.T) {
	s := openSample(t)
	e := lookup(t, s.l, fstest.SampleZeroFile)
	s.blob.ResetStats()
	p := make([]byte, e.Size)
	if _, err := s.l.ReadAt(context.Background(), e, p, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(p, make([]byte, e.Size)) {
		t.Error("zeros are not zeros")
	}
}

func TestCorruptChunk(t *testing.T) {
	noTail(t)
	s := openSample(t, buildOptions[0].opts...)
	e := lookup(t, s.l, fstest.SampleBigFile)
	c := e.file().chunks[1]
	s.blob.Flip(c.blobOff + (c.blobEnd-c.blobOff)/2)
	s.blob.ResetStats()

	p := make([]byte, 10)
	_, err := s.l.ReadAt(context.Background(), e, p, c.fileOff)
	if !errors.Is(err, ErrVerify) {
		t.Fatalf("ReadAt of a corrupt chunk: %v, want ErrVerify", err)
	}
	if calls, _ := s.blob.Stats(); calls != verifyAttempts {
		t.Errorf("%d fetches of the corrupt chunk, want %d", calls, verifyAttempts)
	}
	if s.cache.has(string(c.digest)) {
		t.Error("corrupt chunk was cached")
	}

	// Other chunks of the file still read fine; reads spanning the bad
	// chunk keep failing.
	if _, err := s.l.ReadAt(context.Background(), e, p, e.file().chunks[3].fileOff); err != nil {
		t.Errorf("reading a good chunk: %v", err)
	}
	if _, err := s.l.ReadAt(context.Background(), e, make([]byte, e.Size), 0); !errors.Is(err, ErrVerify) {
		t.Errorf("whole-file read over a corrupt chunk: %v, want ErrVerify", err)
	}
}

// badOnceBlob corrupts the first read covering a given offset, like a
// bit flipped in transit.
type badOnceBlob struct {
	*fstest.MemBlob
	mu   sync.Mutex
	at   int64
	done bool
}

func (b *badOnceBlob) ReadAt(ctx context.Context, p []byte, off int64) (int, error) {
	n, err := b.MemBlob.ReadAt(ctx, p, off)
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.done && off <= b.at && b.at < off+int64(n) {
		b.done = true
		p[b.at-off] ^= 0xff
	}
	return n, err
}

func (b *badOnceBlob) ReadAtProgress(ctx context.Context, p []byte, off int64, progress func(int)) (int, error) {
	return readThenReport(ctx, b, p, off, progress)
}

// readThenReport serves ReadAtProgress for test blobs that change what
// their embedded MemBlob's ReadAt returns: the layer must see their
// bytes, so they are reported once, when the read is done.
func readThenReport(ctx context.Context, b BlobReader, p []byte, off int64, progress func(int)) (int, error) {
	n, err := b.ReadAt(ctx, p, off)
	if n > 0 && progress != nil {
		progress(n)
	}
	return n, err
}

func TestRefetchAfterBadFetch(t *testing.T) {
	noTail(t)
	tarBytes := fstest.SampleTar(t)
	data, toc := fstest.EStargz(t, tarBytes, buildOptions[0].opts...)
	mem := fstest.NewMemBlob(data)
	blob := &badOnceBlob{MemBlob: mem, at: -1}
	l, err := Open(context.Background(), blob, toc, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	e := lookup(t, l, fstest.SampleBigFile)
	c := e.file().chunks[1]
	blob.mu.Lock()
	blob.at = c.blobOff + (c.blobEnd-c.blobOff)/2
	blob.mu.Unlock()
	mem.ResetStats()

	p := make([]byte, c.size)
	if _, err := l.ReadAt(context.Background(), e, p, c.fileOff); err != nil {
		t.Fatalf("ReadAt after one bad fetch: %v", err)
	}
	want := fstest.TarFile(t, tarBytes, fstest.SampleBigFile)
	if !bytes.Equal(p, want[c.fileOff:c.fileOff+c.size]) {
		t.Error("wrong bytes after refetch")
	}
	if calls, _ := mem.Stats(); calls != 2 {
		t.Errorf("%d fetches, want 2", calls)
	}
}

// Concurrent readers of one uncached chunk share one fetch.
func TestSingleflight(t *testing.T) {
	noTail(t)
	s := openSample(t)
	e := lookup(t, s.l, fstest.SampleBigFile)
	s.blob.SetHook(func(context.Context, int64, int64) error {
		time.Sleep(100 * time.Millisecond) // let every reader find the flight
		return nil
	})
	s.blob.ResetStats()
	const readers = 16
	var wg sync.WaitGroup
	errs := make(chan error, readers)
	for i := 0; i < readers; i++ {
		wg.Go(func() {
			p := make([]byte, 100)
			if _, err := s.l.ReadAt(context.Background(), e, p, int64(i)); err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if calls, _ := s.blob.Stats(); calls != 1 {
		t.Errorf("%d fetches for %d concurrent readers of one chunk, want 1", calls, readers)
	}
}

// A reader whose context ends gives up; a reader waiting on its fetch
// fetches for itself instead of inheriting the cancellation.
func TestCancelledLeader(t *testing.T) {
	noTail(t)
	s := openSample(t)
	e := lookup(t, s.l, fstest.SampleBigFile)
	release := make(chan struct{})
	var mu sync.Mutex
	calls := 0
	s.blob.SetHook(func(ctx context.Context, off, n int64) error {
		mu.Lock()
		calls++
		first := calls == 1
		mu.Unlock()
		if first {
			<-release
			return ctx.Err()
		}
		return nil
	})
	leaderCtx, cancel := context.WithCancel(context.Background())
	leaderErr := make(chan error, 1)
	go func() {
		_, err := s.l.ReadAt(leaderCtx, e, make([]byte, 10), 0)
		leaderErr <- err
	}()
	time.Sleep(50 * time.Millisecond)
	waiterErr := make(chan error, 1)
	go func() {
		_, err := s.l.ReadAt(context.Background(), e, make([]byte, 10), 0)
		waiterErr <- err
	}()
	time.Sleep(50 * time.Millisecond)
	cancel()
	close(release)
	if err := <-leaderErr; !errors.Is(err, context.Canceled) {
		t.Errorf("leader: %v, want context.Canceled", err)
	}
	if err := <-waiterErr; err != nil {
		t.Errorf("waiter: %v", err)
	}
}

// noTail shrinks Open's tail window to the footer so that every chunk is
// fetched from the blob, which the fetch-counting tests observe.
func noTail(t *testing.T) {
	old := tailSize
	tailSize = estargz.FooterSize
	t.Cleanup(func() { tailSize = old })
}

// A layer smaller than the tail window is read entirely from what Open
// fetched: reading every file makes no further blob read.
func TestSmallLayerServedFromTail(t *testing.T) {
	s := openSample(t, buildOptions[0].opts...)
	if s.blob.Size() > tailSize {
		t.Skipf("sample blob of %d bytes is larger than the tail window", s.blob.Size())
	}
	e := lookup(t, s.l, fstest.SampleBigFile)
	s.blob.ResetStats()
	if _, err := s.l.ReadAt(context.Background(), e, make([]byte, e.Size), 0); err != nil {
		t.Fatal(err)
	}
	if calls, n := s.blob.Stats(); calls != 0 {
		t.Errorf("read of %s made %d blob reads (%d bytes), want none", e.Path(), calls, n)
	}
}

// A chunk in the tail window that fails verification is refetched from
// the blob, not served again from the bad copy.
func TestCorruptTailRefetched(t *testing.T) {
	data, toc := fstest.EStargz(t, fstest.SampleTar(t), buildOptions[0].opts...)
	blob := fstest.NewMemBlob(data)
	l, err := Open(context.Background(), blob, toc, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	e := lookup(t, l, fstest.SampleBigFile)
	start, _ := l.CompressedRange(e)
	if start < l.tailStart {
		t.Skip("file not in the tail window")
	}
	// Corrupt the copy Open kept; the blob itself stays good.
	l.tail[start-l.tailStart+20] ^= 0xff
	blob.ResetStats()
	p := make([]byte, e.Size)
	if _, err := l.ReadAt(context.Background(), e, p, 0); err != nil {
		t.Fatalf("read after a bad tail copy: %v", err)
	}
	if calls, _ := blob.Stats(); calls == 0 {
		t.Error("bad chunk from the tail was not refetched")
	}
}

// A chunk that straddles the start of the tail Open fetched costs only its
// bytes before the tail: the rest is taken from what Open already has.
func TestChunkStraddlingTail(t *testing.T) {
	data, toc := fstest.EStargz(t, fstest.SampleTar(t), buildOptions[0].opts...)
	probe, err := Open(context.Background(), fstest.NewMemBlob(data), toc, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	c := lookup(t, probe, fstest.SampleBigFile).file().chunks[1]
	mid := c.blobOff + (c.blobEnd-c.blobOff)/2

	old := tailSize
	tailSize, widenSmall = int64(len(data))-mid, false
	t.Cleanup(func() { tailSize, widenSmall = old, true })
	blob := fstest.NewMemBlob(data)
	l, err := Open(context.Background(), blob, toc, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if l.tailStart != mid {
		t.Fatalf("tail starts at %d, want %d", l.tailStart, mid)
	}
	e := lookup(t, l, fstest.SampleBigFile)
	blob.ResetStats()
	p := make([]byte, 10)
	if _, err := l.ReadAt(context.Background(), e, p, c.fileOff); err != nil {
		t.Fatal(err)
	}
	if got := blob.Reads(); len(got) != 1 || got[0] != [2]int64{c.blobOff, mid - c.blobOff} {
		t.Errorf("reading the straddling chunk fetched %v, want [[%d %d]]", got, c.blobOff, mid-c.blobOff)
	}
	want := make([]byte, 10)
	if _, err := probe.ReadAt(context.Background(), lookup(t, probe, fstest.SampleBigFile), want, c.fileOff); err != nil {
		t.Fatal(err)
	}
	if string(p) != string(want) {
		t.Error("straddling chunk read wrong bytes")
	}
}

// TestSmallBlobWiderWindow: Open reads twice its tail window of a blob of
// up to eight times the window (the whole blob when that covers it), so
// that a small blob's files then cost no request (and a client copying the
// blob finds it all); of a bigger blob only the window.
func TestSmallBlobWiderWindow(t *testing.T) {
	data, toc := fstest.EStargz(t, fstest.SampleTar(t), buildOptions[0].opts...)
	size := int64(len(data))
	for _, tc := range []struct {
		name   string
		window int64
		want   int64 // bytes Open fetches
	}{
		{"whole", size/2 + 1, size},
		{"twice the window", size / 4, 2 * (size / 4)},
		{"more than eight times the window", size/8 - 1, size/8 - 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			old := tailSize
			tailSize = tc.window
			t.Cleanup(func() { tailSize = old })
			blob := fstest.NewMemBlob(data)
			l, err := Open(context.Background(), blob, toc, nil, nil)
			if err != nil {
				t.Fatal(err)
			}
			var fetched int64
			for _, r := range blob.Reads() {
				fetched += r[1]
			}
			if fetched != tc.want {
				t.Errorf("Open fetched %d bytes (%v) of the %d-byte blob, want %d", fetched, blob.Reads(), size, tc.want)
			}
			if tc.want != size {
				return
			}
			blob.ResetStats()
			e := lookup(t, l, fstest.SampleBigFile)
			p := make([]byte, e.Size)
			if _, err := l.ReadAt(context.Background(), e, p, 0); err != nil {
				t.Fatal(err)
			}
			if calls, _ := blob.Stats(); calls != 0 {
				t.Errorf("reading %s of a blob read whole made %d requests", fstest.SampleBigFile, calls)
			}
		})
	}
}
