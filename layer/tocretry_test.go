package layer

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"

	"github.com/poolfs/poolfs/fs/fstest"
)

// spoilingBlob flips the byte fromEnd bytes before the end of the blob in
// the first `times` reads that cover it: corruption in transit.
type spoilingBlob struct {
	*fstest.MemBlob
	fromEnd int64
	times   int32
	spoiled atomic.Int32
}

func (b *spoilingBlob) ReadAt(ctx context.Context, p []byte, off int64) (int, error) {
	n, err := b.MemBlob.ReadAt(ctx, p, off)
	pos := b.Size() - b.fromEnd
	if pos >= off && pos < off+int64(n) && b.spoiled.Add(1) <= b.times {
		p[pos-off] ^= 0xff
	}
	return n, err
}

func (b *spoilingBlob) ReadAtProgress(ctx context.Context, p []byte, off int64, progress func(int)) (int, error) {
	return readThenReport(ctx, b, p, off, progress)
}

// TestTOCSpoiledInTransitIsRefetched: a footer or TOC that arrives spoiled
// is read again (up to verifyAttempts reads in all); transport errors are
// not retried here, the BlobReader has its own retries.
func TestTOCSpoiledInTransitIsRefetched(t *testing.T) {
	data, tocDigest := fstest.EStargz(t, fstest.SampleTar(t))
	tests := []struct {
		name      string
		fromEnd   int64 // the footer is the last 51 bytes, the TOC before it
		times     int32
		wantErr   error // nil: opens
		wantReads int
	}{
		{"footer spoiled once", 30, 1, nil, 2},
		{"footer spoiled twice", 30, 2, nil, 3},
		{"footer always spoiled", 30, 100, ErrNoFormat, verifyAttempts},
		{"TOC spoiled twice", 51 + 40, 2, nil, 3},
		{"TOC always spoiled", 51 + 40, 100, ErrVerify, verifyAttempts},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b := &spoilingBlob{MemBlob: fstest.NewMemBlob(data), fromEnd: tc.fromEnd, times: tc.times}
			_, err := Open(context.Background(), b, tocDigest, nil, nil)
			if tc.wantErr == nil && err != nil {
				t.Fatalf("Open: %v", err)
			}
			if tc.wantErr != nil && !errors.Is(err, tc.wantErr) {
				t.Fatalf("Open: %v, want %v", err, tc.wantErr)
			}
			if calls, _ := b.Stats(); calls != tc.wantReads {
				t.Errorf("%d blob reads, want %d", calls, tc.wantReads)
			}
		})
	}

	t.Run("transport error", func(t *testing.T) {
		b := fstest.NewMemBlob(data)
		b.SetHook(func(context.Context, int64, int64) error { return errors.New("connection reset") })
		if _, err := Open(context.Background(), b, tocDigest, nil, nil); err == nil {
			t.Fatal("Open succeeded with a failing blob")
		}
		if calls, _ := b.Stats(); calls != 1 {
			t.Errorf("%d blob reads, want 1 (no retry on top of the BlobReader's)", calls)
		}
	})
}
