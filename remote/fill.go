package remote

import "context"

// ProgressReaderAt reads like io.ReaderAt, saying as bytes arrive how many
// at the start of p are final (see Blob.ReadAtProgress).
type ProgressReaderAt interface {
	ReadAtProgress(ctx context.Context, p []byte, off int64, progress func(n int)) (int, error)
}

// FillThenRead serves p, the blob's bytes at off, first from a buffer that
// grows while a response arrives (a stream already asked for), then what
// that buffer did not deliver from b. next reports the buffer's state for
// the byte at off+filled: the bytes it holds from there on (none yet, or
// none ever), whether it will hold no more, and a channel closed when it
// grows. progress (may be nil) hears the bytes of p that are final.
func FillThenRead(ctx context.Context, b ProgressReaderAt, p []byte, off int64, progress func(n int),
	next func(filled int) (avail []byte, ended bool, more <-chan struct{})) (int, error) {
	if progress == nil {
		progress = func(int) {}
	}
	filled := 0
	for filled < len(p) {
		avail, ended, more := next(filled)
		if len(avail) > 0 {
			filled += copy(p[filled:], avail)
			progress(filled)
			continue
		}
		if ended {
			break // the stream stopped short, or was released: b serves the rest
		}
		select {
		case <-more:
		case <-ctx.Done():
			return filled, ctx.Err()
		}
	}
	if filled == len(p) {
		return filled, nil
	}
	n, err := b.ReadAtProgress(ctx, p[filled:], off+int64(filled), func(m int) { progress(filled + m) })
	return filled + n, err
}
