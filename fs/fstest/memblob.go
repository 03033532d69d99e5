package fstest

import (
	"context"
	"fmt"
	"io"
	"sync"
)

// MemBlob is an in-memory blob with the method set of layer.BlobReader and
// remote.Blob's read side. It counts calls and bytes so tests can check
// how much a reader fetched, and can be corrupted to test verification.
type MemBlob struct {
	mu    sync.Mutex
	data  []byte
	calls int
	bytes int64
	reads [][2]int64 // [off, len] of each ReadAt
	hook  func(ctx context.Context, off, n int64) error
	// midway runs between the pieces of a ReadAtProgress, with the bytes
	// delivered so far, so tests can hold a read half-done.
	midway func(ctx context.Context, off, filled int64) error
}

// progressPiece is how many bytes ReadAtProgress delivers between progress
// reports, like a response body arriving a socket buffer at a time.
const progressPiece = 16 << 10

// NewMemBlob serves a copy of data.
func NewMemBlob(data []byte) *MemBlob {
	return &MemBlob{data: append([]byte(nil), data...)}
}

func (b *MemBlob) Size() int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return int64(len(b.data))
}

// ReadAt copies the blob's bytes at off into p, returning io.EOF when the
// range runs past the end, like io.ReaderAt.
func (b *MemBlob) ReadAt(ctx context.Context, p []byte, off int64) (int, error) {
	return b.ReadAtProgress(ctx, p, off, nil)
}

// ReadAtProgress is ReadAt delivering p progressPiece bytes at a time and
// calling progress (if not nil) after each piece, like layer.ProgressReader.
func (b *MemBlob) ReadAtProgress(ctx context.Context, p []byte, off int64, progress func(int)) (int, error) {
	b.mu.Lock()
	b.calls++
	b.reads = append(b.reads, [2]int64{off, int64(len(p))})
	hook := b.hook
	b.mu.Unlock()
	if hook != nil {
		if err := hook(ctx, off, int64(len(p))); err != nil {
			return 0, err
		}
	}
	if err := ctx.Err(); err != nil {
		return 0, err
	}

	b.mu.Lock()
	if off < 0 {
		b.mu.Unlock()
		return 0, fmt.Errorf("negative offset %d", off)
	}
	if off >= int64(len(b.data)) {
		b.mu.Unlock()
		return 0, io.EOF
	}
	want := min(int64(len(p)), int64(len(b.data))-off)
	b.bytes += want
	midway := b.midway
	b.mu.Unlock()

	for n := int64(0); n < want; {
		if n > 0 && midway != nil {
			if err := midway(ctx, off, n); err != nil {
				return int(n), err
			}
		}
		b.mu.Lock()
		m := copy(p[n:min(n+progressPiece, want)], b.data[off+n:])
		b.mu.Unlock()
		n += int64(m)
		if progress != nil {
			progress(int(n))
		}
	}
	if want < int64(len(p)) {
		return int(want), io.EOF
	}
	return int(want), nil
}

// Stats returns the number of ReadAt calls and bytes served so far.
func (b *MemBlob) Stats() (calls int, bytes int64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.calls, b.bytes
}

// Reads returns the [offset, length] of every ReadAt so far.
func (b *MemBlob) Reads() [][2]int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([][2]int64(nil), b.reads...)
}

// ResetStats zeroes the counters.
func (b *MemBlob) ResetStats() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.calls, b.bytes, b.reads = 0, 0, nil
}

// SetHook makes every ReadAt call f first (e.g. to delay or fail it).
func (b *MemBlob) SetHook(f func(ctx context.Context, off, n int64) error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.hook = f
}

// SetMidway makes every ReadAtProgress (and so ReadAt) call f between the
// pieces it delivers, with how many bytes of the read are delivered so far.
func (b *MemBlob) SetMidway(f func(ctx context.Context, off, filled int64) error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.midway = f
}

// Flip inverts the bits of the byte at off.
func (b *MemBlob) Flip(off int64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.data[off] ^= 0xff
}
