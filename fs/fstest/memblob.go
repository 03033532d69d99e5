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
}

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
	defer b.mu.Unlock()
	if off < 0 {
		return 0, fmt.Errorf("negative offset %d", off)
	}
	if off >= int64(len(b.data)) {
		return 0, io.EOF
	}
	n := copy(p, b.data[off:])
	b.bytes += int64(n)
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
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

// Flip inverts the bits of the byte at off.
func (b *MemBlob) Flip(off int64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.data[off] ^= 0xff
}
