package layer

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/klauspost/compress/gzip"

	"github.com/containerd/stargz-snapshotter/estargz"
	digest "github.com/opencontainers/go-digest"
)

// tailSize is how much of the blob's end Open fetches in one request: the
// footer plus, for all but huge layers, the whole compressed TOC. A
// variable so tests can place chunks outside the window.
var tailSize int64 = 1 << 20

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

// rawTOC is the TOC as found in the blob, before the view is built.
type rawTOC struct {
	toc       *estargz.JTOC
	digest    digest.Digest // sha256 of the JSON bytes
	tocOffset int64         // where the TOC's gzip member starts: the end of the last chunk
	json      []byte        // the TOC exactly as hashed, for OpenWithTOC's callers to store

	// format decodes the chunks (nil: eStargz); files, if not nil, is the
	// format's own chunk index (else indexChunks builds eStargz's).
	format format
	files  map[int]*fileChunks

	// chunkTail is the part of the fetched tail before the TOC: chunk
	// data already paid for, which for small layers is the whole layer.
	chunkTail      []byte
	chunkTailStart int64
}

// readTOC fetches the blob's tail (one ReadAt), finds the footer and returns
// the decoded TOC. A second ReadAt happens only when the compressed TOC
// starts before the tail window. With the position of a zstd:chunked
// manifest (from the annotation), only the manifest is fetched.
func readTOC(ctx context.Context, blob BlobReader, want digest.Digest, zstdPos *ManifestPosition) (*rawTOC, error) {
	size := blob.Size()
	if zstdPos != nil {
		return readZstdTOC(ctx, blob, want, zstdPos, nil, size)
	}
	if size < legacyFooterSize {
		return nil, fmt.Errorf("blob of %d bytes is too small for a footer: %w", size, ErrNotEStargz)
	}
	window := tailSize
	if want == "" {
		// Nothing says the blob is in a format served lazily: most such
		// blobs are plain gzip layers, and telling so must stay cheap.
		window = min(window, probeSize)
	}
	tailLen := min(size, window)
	tailStart := size - tailLen
	tail := make([]byte, tailLen)
	if err := readFull(ctx, blob, tail, tailStart); err != nil {
		return nil, &fetchError{fmt.Errorf("reading the last %d bytes of the blob: %w", tailLen, err)}
	}

	if hasZstdChunkedFooter(tail) {
		return readZstdTOC(ctx, blob, want, nil, tail, tailStart)
	}
	tocOffset, footerSize, err := parseFooter(tail)
	if err != nil {
		return nil, &noFooterError{fmt.Errorf("%w: %w", ErrNotEStargz, err)}
	}
	tocEnd := size - footerSize
	if tocOffset < 0 || tocOffset > tocEnd {
		return nil, fmt.Errorf("footer puts the TOC at %d, outside the blob's [0, %d)", tocOffset, tocEnd)
	}
	if tocEnd-tocOffset > maxTOCCompressed {
		return nil, fmt.Errorf("compressed TOC of %d bytes exceeds the %d byte limit", tocEnd-tocOffset, maxTOCCompressed)
	}

	var compressed []byte
	if tocOffset >= tailStart {
		compressed = tail[tocOffset-tailStart : tocEnd-tailStart]
	} else {
		// The TOC is bigger than the tail window: fetch only what is missing.
		compressed = make([]byte, tocEnd-tocOffset)
		head := compressed[:tailStart-tocOffset]
		if err := readFull(ctx, blob, head, tocOffset); err != nil {
			return nil, &fetchError{fmt.Errorf("reading the first %d bytes of the TOC at %d: %w", len(head), tocOffset, err)}
		}
		copy(compressed[len(head):], tail[:tocEnd-tailStart])
	}
	if n, ok := blob.(TailNotifier); ok {
		n.TailRead()
	}

	tocJSON, err := decompressTOC(compressed)
	if err != nil {
		return nil, err
	}
	got := digest.FromBytes(tocJSON)
	if want != "" && got != want {
		return nil, fmt.Errorf("TOC JSON digest is %s, want %s: %w", got, want, ErrVerify)
	}

	toc, err := decodeTOC(tocJSON)
	if err != nil {
		return nil, fmt.Errorf("TOC %s: %w", got, err)
	}
	raw := &rawTOC{toc: toc, digest: got, tocOffset: tocOffset, json: tocJSON, chunkTailStart: tailStart}
	if tocOffset > tailStart {
		raw.chunkTail = tail[:tocOffset-tailStart]
	}
	return raw, nil
}

// decompressTOC returns the JSON bytes of the TOC's gzip+tar member (as
// estargz's GzipDecompressor reads it: one gzip member holding one tar
// entry named stargz.index.json). The JSON is kept as bytes (not streamed
// into the decoder) so its digest covers exactly what was stored, like
// estargz's builder computes it. The tar header gives its size, so it is
// read into one buffer of that size: growing a buffer the way io.ReadAll
// does was a third of the time spent opening the python layer's TOC.
func decompressTOC(compressed []byte) ([]byte, error) {
	zr, err := gzip.NewReader(bytes.NewReader(compressed))
	if err != nil {
		return nil, fmt.Errorf("opening TOC: malformed gzip header: %w", err)
	}
	defer zr.Close()
	zr.Multistream(false)
	tr := tar.NewReader(zr)
	h, err := tr.Next()
	if err != nil {
		return nil, fmt.Errorf("opening TOC: no tar header in its gzip stream: %w", err)
	}
	if h.Name != estargz.TOCTarName {
		return nil, fmt.Errorf("opening TOC: tar entry is named %q, not %q", h.Name, estargz.TOCTarName)
	}
	if h.Size > maxTOCJSON {
		return nil, fmt.Errorf("TOC JSON of %d bytes exceeds the %d byte limit", h.Size, maxTOCJSON)
	}
	if h.Size > int64(len(compressed))*maxDeflateRatio {
		// Checked before allocating: a header may claim any size.
		return nil, fmt.Errorf("TOC tar entry claims %d bytes, more than %d compressed bytes can hold", h.Size, len(compressed))
	}
	tocJSON := make([]byte, h.Size)
	if _, err := io.ReadFull(tr, tocJSON); err != nil {
		return nil, fmt.Errorf("decompressing TOC: %w", err)
	}
	return tocJSON, nil
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
