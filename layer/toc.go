package layer

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"

	digest "github.com/opencontainers/go-digest"
)

// tailSize is how much of the blob's end Open fetches in one request: the
// footer plus the whole compressed TOC of a layer of up to about 10,000
// entries (some 48 bytes each: a Debian root with python, 8,200 entries,
// has a 400 KB TOC); a larger TOC costs a second request for its start.
// The rest of the window is the layer's last files, seldom the ones a
// start needs, and the TOC is on a first start's critical path: a 1 MiB
// window made java's first start 30-40 ms slower at 200 Mbit/s. Blobs of
// up to 4 MiB still get 1 MiB (see smallBlob). A variable so tests can
// place chunks outside the window.
var tailSize int64 = 512 << 10

// smallBlob is the largest blob whose end Open reads with twice the tail
// window (see readTOC); 0 when widenSmall is off.
func smallBlob() int64 {
	if !widenSmall {
		return 0
	}
	return 8 * tailSize
}

// widenSmall is off in tests that place the tail window by hand.
var widenSmall = true

// probeSize is the tail window when no TOC digest is expected: enough for
// any footer and the TOCs of small layers, small enough that recognising a
// layer no format serves costs one small request.
var probeSize int64 = 64 << 10

const (
	// maxTOCCompressed and maxTOCJSON bound what a blob can make us
	// allocate before anything is verified. Real TOCs are a few MiB even
	// for layers with hundreds of thousands of files.
	maxTOCCompressed = 256 << 20
	maxTOCJSON       = 1 << 30
)

// rawTOC is the TOC as found in the blob, and the tree built from it.
type rawTOC struct {
	tree      *tree
	digest    digest.Digest // the TOC digest (see format.decodeTOC)
	tocOffset int64         // where the TOC starts: the end of the last chunk
	member    []byte        // the compressed TOC as in the blob, for OpenWithTOC's callers to store
	format    format

	// chunkTail is the part of the fetched tail before the TOC: chunk
	// data already paid for, which for small layers is the whole layer.
	chunkTail      []byte
	chunkTailStart int64
}

// readTOC fetches the blob's tail (one ReadAt), finds the footer of one of
// the formats and builds the tree from the TOC. A second ReadAt happens
// only when the compressed TOC starts before the tail window. With the
// position of a zstd:chunked manifest (from the annotation, o.zstdPosition),
// only the manifest is fetched.
func readTOC(ctx context.Context, blob BlobReader, want digest.Digest, o options) (*rawTOC, error) {
	size := blob.Size()
	if o.zstdPosition != nil {
		r, err := o.zstdPosition.tocRange(size)
		if err != nil {
			return nil, err
		}
		return fetchTOC(ctx, blob, zstdChunked{}, r, want, nil, size, o)
	}
	if size < minFooterSize {
		return nil, fmt.Errorf("blob of %d bytes is too small for a footer: %w", size, ErrNoFormat)
	}
	window := tailSize
	if want == "" {
		// Nothing says the blob is in a format served lazily: most such
		// blobs are plain gzip layers, and telling so must stay cheap.
		window = min(window, probeSize)
	}
	tailLen := min(size, window)
	tailStart := size - tailLen
	// A blob of at most smallBlob() bytes gets twice the window (what the
	// window was once), in two requests side by side: the window's, which
	// an early read of the blob's end may hold already, and the one
	// before it. Such a layer's files are few and likely needed, and a
	// client that copies the layer (commit, push) reads the blob whole,
	// taking what Open kept.
	headStart := tailStart
	if want != "" && size <= smallBlob() {
		headStart = size - min(size, 2*tailSize)
	}
	// One buffer for both reads: the head's bytes end where the tail's
	// begin.
	buf := make([]byte, size-headStart)
	head, tail := buf[:tailStart-headStart], buf[tailStart-headStart:]
	waitHead := func() error { return nil }
	if len(head) > 0 {
		done := make(chan error, 1)
		go func() { done <- readFull(ctx, blob, head, headStart) }()
		waitHead = sync.OnceValue(func() error { return <-done })
		defer waitHead() // no return leaves the read behind
	}
	if err := readFull(ctx, blob, tail, tailStart); err != nil {
		return nil, &fetchError{fmt.Errorf("reading the last %d bytes of the blob: %w", tailLen, err)}
	}
	var errs []error
	for _, f := range formats {
		r, ok, err := f.locateTOC(tail, size)
		if !ok {
			errs = append(errs, err)
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("%s footer: %w", f, err)
		}
		if len(head) > 0 {
			if err := waitHead(); err != nil {
				return nil, &fetchError{fmt.Errorf("reading %d bytes of the blob at %d: %w", len(head), headStart, err)}
			}
			tail, tailStart = buf, headStart
		}
		return fetchTOC(ctx, blob, f, r, want, tail, tailStart, o)
	}
	return nil, &noFooterError{fmt.Errorf("%w: %w", ErrNoFormat, errors.Join(errs...))}
}

// fetchTOC fetches the compressed TOC r of a blob in format f, taking what
// it can from tail (the blob's bytes from tailStart on), and builds the
// tree from it; the part of tail before the TOC is kept as chunk data.
func fetchTOC(ctx context.Context, blob BlobReader, f format, r tocRange, want digest.Digest, tail []byte, tailStart int64, o options) (*rawTOC, error) {
	if r.start < 0 || r.end < r.start || r.end > blob.Size() {
		return nil, fmt.Errorf("%s footer puts the TOC at [%d, %d), outside the %d byte blob", f, r.start, r.end, blob.Size())
	}
	if r.end-r.start > maxTOCCompressed || r.uncompressed > maxTOCJSON {
		return nil, fmt.Errorf("compressed TOC of %d bytes (%d uncompressed) exceeds the %d (%d) byte limit",
			r.end-r.start, r.uncompressed, maxTOCCompressed, maxTOCJSON)
	}
	compressed := make([]byte, r.end-r.start)
	if r.start < tailStart {
		// Not all in the tail window: fetch only what is missing.
		head := compressed[:min(r.end, tailStart)-r.start]
		if err := readFull(ctx, blob, head, r.start); err != nil {
			return nil, &fetchError{fmt.Errorf("reading %d bytes of the TOC at %d: %w", len(head), r.start, err)}
		}
	}
	if r.end > tailStart {
		from := max(r.start, tailStart)
		copy(compressed[from-r.start:], tail[from-tailStart:r.end-tailStart])
	}
	if n, ok := blob.(TailNotifier); ok {
		n.TailRead()
	}
	raw, err := f.decodeTOC(compressed, r, want, o)
	if err != nil {
		return nil, err
	}
	raw.format = f
	raw.member = compressed // its own allocation, not the tail's
	if raw.tocOffset > tailStart && len(tail) > 0 {
		raw.chunkTailStart = tailStart
		// Copied so that the layer does not keep the TOC's bytes, which
		// can be most of the tail, beside the tree: a reader of the blob
		// file fetches those again (see FetchedTail).
		raw.chunkTail = append([]byte(nil), tail[:raw.tocOffset-tailStart]...)
	}
	return raw, nil
}

// readFull fills p from blob at off. BlobReader returns io.EOF only when
// the range runs past the end; a full buffer with io.EOF is still success.
func readFull(ctx context.Context, blob BlobReader, p []byte, off int64) error {
	return readFullProgress(ctx, blob, p, off, nil)
}

// readFullProgress is readFull that passes progress on to a blob that can
// report it (see ProgressReader); other blobs read as with readFull.
func readFullProgress(ctx context.Context, blob BlobReader, p []byte, off int64, progress func(n int)) error {
	var n int
	var err error
	if pr, ok := blob.(ProgressReader); ok && progress != nil {
		n, err = pr.ReadAtProgress(ctx, p, off, progress)
	} else {
		n, err = blob.ReadAt(ctx, p, off)
	}
	if n == len(p) && (err == nil || errors.Is(err, io.EOF)) {
		return nil
	}
	if err == nil || errors.Is(err, io.EOF) {
		return fmt.Errorf("short read of %d/%d bytes at %d: %w", n, len(p), off, io.ErrUnexpectedEOF)
	}
	return err
}
