package pool

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math/rand"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"
)

// memBlob is a remote.Blob over a byte slice that counts what it serves
// and can fail reads at chosen offsets.
type memBlob struct {
	data     []byte
	requests atomic.Int64
	served   atomic.Int64
	failAt   atomic.Int64 // a request covering this offset fails (-1: none)
	chunk    int          // progress granularity
}

func newMemBlob(data []byte) *memBlob {
	b := &memBlob{data: data, chunk: 32 << 10}
	b.failAt.Store(-1)
	return b
}

func (b *memBlob) Digest() digest.Digest { return digest.FromBytes(b.data) }
func (b *memBlob) Size() int64           { return int64(len(b.data)) }

func (b *memBlob) ReadAt(ctx context.Context, p []byte, off int64) (int, error) {
	return b.ReadAtProgress(ctx, p, off, nil)
}

func (b *memBlob) ReadAtProgress(ctx context.Context, p []byte, off int64, progress func(int)) (int, error) {
	b.requests.Add(1)
	if off >= int64(len(b.data)) {
		return 0, io.EOF
	}
	if f := b.failAt.Load(); f >= off && f < off+int64(len(p)) {
		return 0, errors.New("injected failure")
	}
	n := 0
	for n < len(p) && off+int64(n) < int64(len(b.data)) {
		m := copy(p[n:min(n+b.chunk, len(p))], b.data[off+int64(n):])
		n += m
		b.served.Add(int64(m))
		if progress != nil {
			progress(n)
		}
	}
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// pattern is n bytes that differ from their neighbours' (quick to make
// under the race detector, unlike random bytes).
func pattern(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7 + i>>16)
	}
	return b
}

// readLikeKernel reads the whole blob in 128 KiB requests, up to four in
// flight at once, the way the kernel's readahead sends them.
func readLikeKernel(t *testing.T, s *blobStream, size int) []byte {
	t.Helper()
	const req = 128 << 10
	out := make([]byte, size)
	sem := make(chan struct{}, 4)
	var wg sync.WaitGroup
	var failed atomic.Value
	for off := 0; off < size; off += req {
		sem <- struct{}{}
		wg.Add(1)
		go func(off int) {
			defer func() { <-sem; wg.Done() }()
			end := min(off+req, size)
			n, err := s.ReadAt(context.Background(), out[off:end], int64(off))
			if err != nil || n != end-off {
				failed.Store(errors.Join(err, errors.New("short read")))
			}
		}(off)
	}
	wg.Wait()
	if err, _ := failed.Load().(error); err != nil {
		t.Fatal(err)
	}
	return out
}

func TestBlobStreamSequentialCostsTheBlobOnce(t *testing.T) {
	for _, size := range []int{1, firstSegment - 1, 3*maxSegment + 12345} {
		data := pattern(size)
		b := newMemBlob(data)
		s := newBlobStream(b, 0, nil)
		got := readLikeKernel(t, s, size)
		if !bytes.Equal(got, data) {
			t.Fatalf("size %d: bytes read differ from the blob", size)
		}
		served, reqs := b.served.Load(), b.requests.Load()
		t.Logf("size %d: %d bytes in %d requests", size, served, reqs)
		if served > int64(size)+firstSegment {
			t.Errorf("size %d: the blob served %d bytes (%.2fx)", size, served, float64(served)/float64(size))
		}
		// Doubling from firstSegment to maxSegment, then maxSegment each,
		// and some pieces where reads arrived out of order: how many
		// depends on the scheduler (a loaded machine reorders more), so
		// the exact count is checked with one reader below.
		if limit := int64(12 + 2*size/maxSegment); reqs > limit {
			t.Errorf("size %d: %d requests, want at most %d", size, reqs, limit)
		}
	}
}

// TestBlobStreamOneReaderRequests: reads that come in order cost the
// doubling segments and nothing else.
func TestBlobStreamOneReaderRequests(t *testing.T) {
	size := 3*maxSegment + 12345
	data := pattern(size)
	b := newMemBlob(data)
	s := newBlobStream(b, 0, nil)
	p := make([]byte, 128<<10)
	for off := 0; off < size; off += len(p) {
		n, err := s.ReadAt(context.Background(), p[:min(len(p), size-off)], int64(off))
		if err != nil || !bytes.Equal(p[:n], data[off:off+n]) {
			t.Fatalf("read at %d: %d bytes, %v", off, n, err)
		}
	}
	// 256 KiB, 512 KiB, ... 4 MiB (5 segments, 7.75 MiB), then 8 MiB
	// segments for the remaining ~16.25 MiB (3).
	want := int64(0)
	for seg, left := int64(firstSegment), int64(size); left > 0; seg = min(2*seg, maxSegment) {
		left -= seg
		want++
	}
	if served, reqs := b.served.Load(), b.requests.Load(); reqs != want || served > int64(size)+maxSegment {
		t.Errorf("%d bytes in %d requests; want %d requests and at most a segment past the end", served, reqs, want)
	}
}

func TestBlobStreamRandomReadsCostLittle(t *testing.T) {
	data := pattern(16 << 20)
	b := newMemBlob(data)
	s := newBlobStream(b, 0, nil)
	rng := rand.New(rand.NewSource(2))
	const reads = 20
	for range reads {
		off := rng.Int63n(int64(len(data)) - 4096)
		p := make([]byte, 4096)
		if n, err := s.ReadAt(context.Background(), p, off); err != nil || n != len(p) {
			t.Fatalf("read at %d: %d, %v", off, n, err)
		}
		if !bytes.Equal(p, data[off:off+4096]) {
			t.Fatalf("read at %d: wrong bytes", off)
		}
	}
	// Each random read costs one first segment, no read-ahead (one that
	// lands just past another's segment asks from that segment's end: at
	// most a first segment and the read).
	if served, most := b.served.Load(), int64(reads*(firstSegment+4096)); served > most {
		t.Errorf("%d random 4 KiB reads fetched %d bytes, want at most %d", reads, served, most)
	}
}

func TestBlobStreamReadsAgainWithinTheWindow(t *testing.T) {
	data := pattern(6 << 20)
	b := newMemBlob(data)
	s := newBlobStream(b, 0, nil)
	readLikeKernel(t, s, len(data))
	before := b.served.Load()
	// The blob is smaller than the window: all of it is still there.
	if got := readLikeKernel(t, s, len(data)); !bytes.Equal(got, data) {
		t.Fatal("second read: wrong bytes")
	}
	if again := b.served.Load() - before; again != 0 {
		t.Errorf("second read within the window fetched %d bytes, want 0", again)
	}
}

func TestBlobStreamWindowIsBounded(t *testing.T) {
	data := make([]byte, 32<<20)
	b := newMemBlob(data)
	s := newBlobStream(b, 0, nil)
	readLikeKernel(t, s, len(data))
	// Let the last read-ahead finish.
	deadline := time.Now().Add(5 * time.Second)
	for {
		s.mu.Lock()
		held, busy := int64(0), false
		for _, g := range s.segs {
			held += int64(len(g.buf))
			busy = busy || !g.done
		}
		s.mu.Unlock()
		if !busy || time.Now().After(deadline) {
			if held > streamWindow+maxSegment {
				t.Errorf("the stream holds %d bytes after a full read, want at most %d", held, streamWindow+maxSegment)
			}
			break
		}
		time.Sleep(time.Millisecond)
	}
}

func TestBlobStreamFailedSegmentIsAskedAgain(t *testing.T) {
	data := pattern(1 << 20)
	b := newMemBlob(data)
	b.failAt.Store(100)
	s := newBlobStream(b, 0, nil)
	p := make([]byte, 4096)
	if _, err := s.ReadAt(context.Background(), p, 0); err == nil {
		t.Fatal("read through a failing request succeeded")
	}
	b.failAt.Store(-1)
	if n, err := s.ReadAt(context.Background(), p, 0); err != nil || n != len(p) || !bytes.Equal(p, data[:4096]) {
		t.Fatalf("read after the failure: %d, %v", n, err)
	}
}

func TestBlobStreamEnd(t *testing.T) {
	data := []byte("0123456789")
	s := newBlobStream(newMemBlob(data), 0, nil)
	for _, c := range []struct {
		off  int64
		n    int
		want string
	}{{0, 4, "0123"}, {8, 4, "89"}, {10, 4, ""}, {20, 1, ""}} {
		p := make([]byte, c.n)
		n, err := s.ReadAt(context.Background(), p, c.off)
		if err != nil || string(p[:n]) != c.want {
			t.Errorf("ReadAt(%d, %d) = %q, %v; want %q", c.off, c.n, p[:n], err, c.want)
		}
	}
	if _, err := s.ReadAt(context.Background(), make([]byte, 1), -1); err == nil {
		t.Error("negative offset: no error")
	}
}

func TestBlobStreamServesTheKnownTail(t *testing.T) {
	data := pattern(3 << 20)
	b := newMemBlob(data)
	tailOff := int64(len(data) - 1<<20)
	s := newBlobStream(b, tailOff, data[tailOff:])
	if got := readLikeKernel(t, s, len(data)); !bytes.Equal(got, data) {
		t.Fatal("wrong bytes")
	}
	if served := b.served.Load(); served != tailOff {
		t.Errorf("the blob served %d bytes, want the %d before the known tail", served, tailOff)
	}
	// The tail is never dropped, the rest is after streamIdle.
	s.drop()
	before := b.served.Load()
	p := make([]byte, 4096)
	if _, err := s.ReadAt(context.Background(), p, int64(len(data))-4096); err != nil || !bytes.Equal(p, data[len(data)-4096:]) {
		t.Fatalf("read in the tail: %v", err)
	}
	if b.served.Load() != before {
		t.Error("a read in the known tail fetched bytes")
	}
}

// The layer keeps the chunk bytes of its tail, not the TOC and footer
// after them: those are fetched, once, by a reader of the whole blob.
func TestBlobStreamKnownBytesBeforeTheEnd(t *testing.T) {
	data := pattern(3 << 20)
	b := newMemBlob(data)
	knownOff, knownEnd := int64(len(data)-1<<20), int64(len(data)-300<<10)
	s := newBlobStream(b, knownOff, data[knownOff:knownEnd])
	if got := readLikeKernel(t, s, len(data)); !bytes.Equal(got, data) {
		t.Fatal("wrong bytes")
	}
	if served, want := b.served.Load(), int64(len(data))-(knownEnd-knownOff); served != want {
		t.Errorf("the blob served %d bytes, want the %d not known", served, want)
	}
}
