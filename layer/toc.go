package layer

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
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
	digest    digest.Digest // sha256 of the JSON bytes
	tocOffset int64         // where the TOC's gzip member starts: the end of the last chunk
	member    []byte        // the TOC's gzip member as in the blob, for OpenWithTOC's callers to store

	// chunkTail is the part of the fetched tail before the TOC: chunk
	// data already paid for, which for small layers is the whole layer.
	chunkTail      []byte
	chunkTailStart int64
	// fetchedTail is the whole tail as fetched, TOC and footer included,
	// when chunkTail holds on to its memory anyway ([chunkTailStart, size)).
	fetchedTail []byte
}

// readTOC fetches the blob's tail (one ReadAt), finds the footer and
// builds the tree from the TOC. A second ReadAt happens only when the
// compressed TOC starts before the tail window.
func readTOC(ctx context.Context, blob BlobReader, want digest.Digest, o options) (*rawTOC, error) {
	size := blob.Size()
	if size < legacyFooterSize {
		return nil, fmt.Errorf("blob of %d bytes is too small for a footer: %w", size, ErrNotEStargz)
	}
	tailLen := min(size, tailSize)
	tailStart := size - tailLen
	tail := make([]byte, tailLen)
	if err := readFull(ctx, blob, tail, tailStart); err != nil {
		return nil, &fetchError{fmt.Errorf("reading the last %d bytes of the blob: %w", tailLen, err)}
	}

	tocOffset, footerSize, err := parseFooter(tail)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrNotEStargz, err)
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

	t, got, err := buildFromMember(compressed, want, tocOffset, o)
	if err != nil {
		return nil, err
	}
	raw := &rawTOC{tree: t, digest: got, tocOffset: tocOffset, member: append([]byte(nil), compressed...), chunkTailStart: tailStart}
	if tocOffset > tailStart {
		// The whole tail stays (at most tailSize bytes, and only while the
		// tree is in memory): its chunks serve reads, and the blob file
		// serves all of it, TOC and footer included, without a refetch.
		raw.chunkTail = tail[:tocOffset-tailStart]
		raw.fetchedTail = tail
	}
	return raw, nil
}

// buildFromMember builds the tree from the TOC's gzip+tar member (as
// estargz's GzipDecompressor reads it: one gzip member holding one tar
// entry named stargz.index.json), checking that the JSON hashes to want
// (if not ""), and returns it with the JSON's digest. The JSON streams
// from the decompressor through the hash into the decoder and is never
// held whole: a few MiB of compressed TOC can hold a GiB of it.
func buildFromMember(compressed []byte, want digest.Digest, tocOffset int64, o options) (*tree, digest.Digest, error) {
	zr, err := gzip.NewReader(bytes.NewReader(compressed))
	if err != nil {
		return nil, "", fmt.Errorf("opening TOC: malformed gzip header: %w", err)
	}
	defer zr.Close()
	zr.Multistream(false)
	tr := tar.NewReader(zr)
	h, err := tr.Next()
	if err != nil {
		return nil, "", fmt.Errorf("opening TOC: no tar header in its gzip stream: %w", err)
	}
	if h.Name != estargz.TOCTarName {
		return nil, "", fmt.Errorf("opening TOC: tar entry is named %q, not %q", h.Name, estargz.TOCTarName)
	}
	if h.Size > maxTOCJSON {
		return nil, "", fmt.Errorf("TOC JSON of %d bytes exceeds the %d byte limit", h.Size, maxTOCJSON)
	}
	if h.Size > int64(len(compressed))*maxDeflateRatio {
		// Checked before reading: a header may claim any size.
		return nil, "", fmt.Errorf("TOC tar entry claims %d bytes, more than %d compressed bytes can hold", h.Size, len(compressed))
	}
	return buildFromJSON(tr, h.Size, want, tocOffset, o)
}

// buildFromJSON builds the tree from size bytes of TOC JSON read from r.
func buildFromJSON(r io.Reader, size int64, want digest.Digest, tocOffset int64, o options) (*tree, digest.Digest, error) {
	hash := sha256.New()
	in := &countingReader{r: io.TeeReader(io.LimitReader(r, size), hash)}
	b := newBuilder(tocOffset, o.limits, o.log)
	defer b.release(0)
	_, decErr := streamTOC(in, b.add, nil)
	if errors.Is(decErr, ErrLimit) {
		return nil, "", decErr // final whatever the digest says, and not worth reading the rest for
	}
	// The digest covers every byte, whatever the decoder made of them.
	if _, err := io.Copy(io.Discard, in); err != nil {
		return nil, "", fmt.Errorf("decompressing TOC: %w", err)
	}
	if in.n != size {
		return nil, "", fmt.Errorf("decompressing TOC: %d of %d bytes: %w", in.n, size, io.ErrUnexpectedEOF)
	}
	got := digest.NewDigest(digest.SHA256, hash)
	if want != "" && got != want {
		return nil, "", fmt.Errorf("TOC JSON digest is %s, want %s: %w", got, want, ErrVerify)
	}
	if decErr != nil {
		return nil, "", fmt.Errorf("TOC %s: %w", got, decErr)
	}
	t, err := b.finish()
	if err != nil {
		return nil, "", fmt.Errorf("TOC %s: %w", got, err)
	}
	// The build's own reservations become the tree's.
	if t.bytes > b.reserved {
		if err := b.reserve(t.bytes - b.reserved); err != nil {
			return nil, "", fmt.Errorf("TOC %s: %w", got, err)
		}
	}
	b.release(t.bytes)
	b.reserved = 0 // kept by the tree now: the deferred release leaves it
	return t, got, nil
}

type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
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
