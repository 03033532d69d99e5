package pool

import (
	"bytes"
	"context"
	"sync"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"

	"github.com/poolfs/poolfs/layer"
	"github.com/poolfs/poolfs/profile"
)

// countingBlob is a remote.Blob in memory that logs its reads.
type countingBlob struct {
	data []byte
	mu   sync.Mutex
	log  [][2]int64
}

func (b *countingBlob) Digest() digest.Digest { return digest.FromBytes(b.data) }
func (b *countingBlob) Size() int64           { return int64(len(b.data)) }
func (b *countingBlob) ReadAt(ctx context.Context, p []byte, off int64) (int, error) {
	return b.ReadAtProgress(ctx, p, off, nil)
}
func (b *countingBlob) ReadAtProgress(_ context.Context, p []byte, off int64, progress func(int)) (int, error) {
	b.mu.Lock()
	b.log = append(b.log, [2]int64{off, off + int64(len(p))})
	b.mu.Unlock()
	n := copy(p, b.data[off:])
	if progress != nil {
		progress(n)
	}
	return n, nil
}

func (b *countingBlob) reads() [][2]int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([][2]int64(nil), b.log...)
}

// TestEarlyRanges: the planned ranges are fetched once started, a read
// inside one is served from it, a second read of the same bytes and reads
// elsewhere go to the blob, and after Release everything does.
func TestEarlyRanges(t *testing.T) {
	data := make([]byte, 8<<20)
	for i := range data {
		data[i] = byte(i * 7)
	}
	b := &countingBlob{data: data}
	p := &profile.Profile{Blob: b.Digest(), TOC: digest.FromString("toc"), Chunks: []profile.Chunk{
		{Offset: 3 << 20, End: 3<<20 + 1000, Digest: digest.FromString("a")},
		{Offset: 1 << 20, End: 1<<20 + 500, Digest: digest.FromString("b")},
		{Offset: 1<<20 + 600, End: 1<<20 + 900, Digest: digest.FromString("c")}, // bridged with b
		{Offset: 2 << 20, End: 2<<20 + 10, Digest: digest.FromString("cached")},
		{Offset: 8<<20 - 100, End: 8 << 20, Digest: digest.FromString("in the TOC's window")},
	}}
	e := newEarlyRanges(b, p, func(d digest.Digest) bool { return d == digest.FromString("cached") })
	if e == nil {
		t.Fatal("no early ranges")
	}
	want := layer.ReplayRuns(p.Chunks[:3])
	if len(e.order) != len(want) || len(want) != 2 {
		t.Fatalf("planned %d ranges, want %v", len(e.order), want)
	}
	if got := b.reads(); len(got) != 0 {
		t.Fatalf("reads before TailRead: %v", got)
	}
	e.TailRead()
	ctx := context.Background()
	read := func(off, n int64) {
		t.Helper()
		buf := make([]byte, n)
		if _, err := e.ReadAt(ctx, buf, off); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(buf, data[off:off+n]) {
			t.Fatalf("read at %d: wrong bytes", off)
		}
	}
	read(1<<20, 900)
	read(3<<20, 1000)
	reads := b.reads()
	if len(reads) != 2 {
		t.Fatalf("blob reads %v, want only the two planned ranges", reads)
	}
	read(1<<20, 100) // served before: the blob
	read(5<<20, 100) // in no range
	if n := len(b.reads()); n != 4 {
		t.Errorf("%d blob reads, want 4", n)
	}
	e.Release()
	read(3<<20, 10)
	if n := len(b.reads()); n != 5 {
		t.Errorf("%d blob reads after Release, want 5", n)
	}
}

// TestEarlyRangesPlannedLate: a plan that comes after the TOC read is about
// done starts at once, and its ranges serve the reads inside them; one that
// comes after closePlans (the TOC is decoded) is not made.
func TestEarlyRangesPlannedLate(t *testing.T) {
	data := make([]byte, 8<<20)
	for i := range data {
		data[i] = byte(i * 3)
	}
	p := &profile.Profile{TOC: digest.FromString("toc"), Chunks: []profile.Chunk{
		{Offset: 1 << 20, End: 1<<20 + 500, Digest: digest.FromString("a")},
		{Offset: 3 << 20, End: 3<<20 + 1000, Digest: digest.FromString("b")},
	}}
	none := func(digest.Digest) bool { return false }

	b := &countingBlob{data: data}
	e := pendingEarly(b)
	e.TailRead()
	if got := b.reads(); len(got) != 0 {
		t.Fatalf("reads with no plan: %v", got)
	}
	if !e.plan(p, none) {
		t.Fatal("plan refused")
	}
	if e.plan(p, none) {
		t.Error("planned twice")
	}
	buf := make([]byte, 1000)
	if _, err := e.ReadAt(context.Background(), buf, 3<<20); err != nil || !bytes.Equal(buf, data[3<<20:3<<20+1000]) {
		t.Fatalf("read inside a range: %v", err)
	}
	// The other range is fetched beside.
	for deadline := time.Now().Add(5 * time.Second); len(b.reads()) < 2 && time.Now().Before(deadline); {
		time.Sleep(time.Millisecond)
	}
	if got := b.reads(); len(got) != 2 {
		t.Errorf("blob reads %v, want the two planned ranges only", got)
	}
	e.Release()

	b = &countingBlob{data: data}
	e = pendingEarly(b)
	e.closePlans()
	if e.plan(p, none) {
		t.Error("planned after closePlans")
	}
	e.TailRead()
	if got := b.reads(); len(got) != 0 {
		t.Errorf("reads after a refused plan: %v", got)
	}
}
