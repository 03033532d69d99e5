package layer

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strconv"

	"github.com/containerd/stargz-snapshotter/estargz"
	"github.com/klauspost/compress/gzip"
	digest "github.com/opencontainers/go-digest"
)

// estargzFormat is eStargz (and legacy stargz): gzip members, one or more
// per chunk, then the TOC (a gzip member holding a tar entry with the
// JSON) and a footer (an empty gzip member whose Extra field holds the
// TOC's offset). The TOC digest is the sha256 of the JSON.
type estargzFormat struct{}

func (estargzFormat) String() string { return FormatEStargz }

// locateTOC finds the compressed TOC from the footer: from the offset it
// gives to the footer.
func (estargzFormat) locateTOC(tail []byte, size int64) (tocRange, bool, error) {
	off, footerSize, err := parseFooter(tail)
	if err != nil {
		return tocRange{}, false, fmt.Errorf("estargz: %w", err)
	}
	return tocRange{start: off, end: size - footerSize, uncompressed: -1}, true, nil
}

// decodeTOC builds the tree from the TOC's gzip member, checking that
// the JSON hashes to want.
func (estargzFormat) decodeTOC(compressed []byte, r tocRange, want digest.Digest, o options) (*rawTOC, error) {
	t, got, err := buildFromMember(compressed, want, r.start, o)
	if err != nil {
		return nil, err
	}
	return &rawTOC{tree: t, digest: got, tocOffset: r.start}, nil
}

// decodeStored builds the tree from a stored gzip member, which must hash
// to d.
func (estargzFormat) decodeStored(member []byte, d digest.Digest, tocOffset int64, o options) (*rawTOC, error) {
	t, _, err := buildFromMember(member, d, tocOffset, o)
	if err != nil {
		return nil, err
	}
	return &rawTOC{tree: t, digest: d, tocOffset: tocOffset, format: estargzFormat{}}, nil
}

// decompress reads the blob as one gzip stream of many members: the tar,
// TOC and footer included, as the diff_id covers them.
func (estargzFormat) decompress(blob io.Reader) (io.ReadCloser, error) {
	return gzip.NewReader(blob)
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

// buildFromJSON builds the tree from size bytes of eStargz TOC JSON read
// from r.
func buildFromJSON(r io.Reader, size int64, want digest.Digest, tocOffset int64, o options) (*tree, digest.Digest, error) {
	hash := sha256.New()
	in := &countingReader{r: io.TeeReader(io.LimitReader(r, size), hash)}
	b := newBuilder(tocOffset, maxDeflateRatio, o.limits, o.log)
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
	t, err := b.build()
	if err != nil {
		return nil, "", fmt.Errorf("TOC %s: %w", got, err)
	}
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

// decodeChunk decompresses an eStargz chunk from its gzip member (after
// skipping its inner offset) and checks it against its digest. Corrupt
// compressed data is a verification failure like a digest mismatch: both
// mean the bytes are not what the TOC says.
func (f estargzFormat) decodeChunk(c *chunk, compressed []byte) ([]byte, error) {
	return f.decodeChunkFrom(c, bytes.NewReader(compressed))
}

// decodeChunkFrom is decodeChunk reading the compressed bytes from r,
// which may still be arriving (see streamDecoder); the content is hashed
// as it is decompressed, so that little is left to do once the last
// compressed byte is in.
func (estargzFormat) decodeChunkFrom(c *chunk, r io.Reader) ([]byte, error) {
	zr, err := gzip.NewReader(r)
	if err != nil {
		return nil, fmt.Errorf("chunk %s at blob offset %d: gzip header: %v: %w", c.digest, c.blobOff, err, ErrVerify)
	}
	if c.inner > 0 {
		if _, err := io.CopyN(io.Discard, zr, c.inner); err != nil {
			return nil, fmt.Errorf("chunk %s at blob offset %d: skipping %d bytes: %v: %w", c.digest, c.blobOff, c.inner, err, ErrVerify)
		}
	}
	return readChecked(c, zr)
}

// hashStep is how much decompressed content is hashed at a time.
const hashStep = 256 << 10

// readChecked reads c's content (c.size bytes) from zr, hashing it as it
// comes, and checks it against c's digest, like checkChunk.
func readChecked(c *chunk, zr io.Reader) ([]byte, error) {
	if !c.digest.Algorithm().Available() {
		return nil, fmt.Errorf("chunk at blob offset %d: digest %q: algorithm not available: %w", c.blobOff, c.digest, ErrVerify)
	}
	data := make([]byte, c.size)
	h := c.digest.Algorithm().Hash()
	for off := int64(0); off < c.size; {
		n := min(c.size-off, hashStep)
		if _, err := io.ReadFull(zr, data[off:off+n]); err != nil {
			return nil, fmt.Errorf("chunk %s at blob offset %d: decompressing: %v: %w", c.digest, c.blobOff, err, ErrVerify)
		}
		h.Write(data[off : off+n])
		off += n
	}
	if got := digest.NewDigest(c.digest.Algorithm(), h); got != c.digest {
		return nil, fmt.Errorf("chunk at blob offset %d hashes to %s, want %s: %w", c.blobOff, got, c.digest, ErrVerify)
	}
	return data, nil
}

// legacyFooterSize is the footer of pre-eStargz stargz blobs (CRFS), which
// some registries still serve; estargz keeps the constant unexported.
const legacyFooterSize = 47

// footerMagic ends the footer's gzip Extra subfield after the 16 hex digits
// of the TOC offset.
const footerMagic = "STARGZ"

// parseFooter finds the TOC offset in the footer at the end of tail (the
// last bytes of the blob). It parses the gzip Extra field itself instead of
// calling estargz's ParseFooter, which slices the subfield without checking
// its length and so can panic on a crafted footer.
func parseFooter(tail []byte) (tocOffset, footerSize int64, err error) {
	var errs []error
	if len(tail) >= estargz.FooterSize {
		off, err := parseFooterExtra(tail[len(tail)-estargz.FooterSize:], false)
		if err == nil {
			return off, estargz.FooterSize, nil
		}
		errs = append(errs, fmt.Errorf("estargz footer: %w", err))
	}
	if len(tail) >= legacyFooterSize {
		off, err := parseFooterExtra(tail[len(tail)-legacyFooterSize:], true)
		if err == nil {
			return off, legacyFooterSize, nil
		}
		errs = append(errs, fmt.Errorf("legacy stargz footer: %w", err))
	}
	if len(errs) == 0 {
		errs = append(errs, fmt.Errorf("blob of %d bytes is shorter than any footer", len(tail)))
	}
	return 0, 0, errors.Join(errs...)
}

// parseFooterExtra reads the offset out of one footer candidate: an empty
// gzip member whose Extra field is either the subfield 'S','G',len=22,
// "%016xSTARGZ" (eStargz) or the bare 22 bytes (legacy stargz).
func parseFooterExtra(p []byte, legacy bool) (int64, error) {
	zr, err := gzip.NewReader(bytes.NewReader(p))
	if err != nil {
		return 0, fmt.Errorf("reading footer gzip header: %w", err)
	}
	extra := zr.Extra
	const fieldLen = 16 + len(footerMagic)
	if !legacy {
		if len(extra) != 4+fieldLen {
			return 0, fmt.Errorf("extra field of %d bytes, want %d", len(extra), 4+fieldLen)
		}
		if extra[0] != 'S' || extra[1] != 'G' {
			return 0, fmt.Errorf("extra subfield id %q, want \"SG\"", extra[:2])
		}
		if n := int(binary.LittleEndian.Uint16(extra[2:4])); n != fieldLen {
			return 0, fmt.Errorf("extra subfield length %d, want %d", n, fieldLen)
		}
		extra = extra[4:]
	}
	if len(extra) != fieldLen {
		return 0, fmt.Errorf("extra field of %d bytes, want %d", len(extra), fieldLen)
	}
	if string(extra[16:]) != footerMagic {
		return 0, errors.New("no STARGZ magic in footer")
	}
	off, err := strconv.ParseInt(string(extra[:16]), 16, 64)
	if err != nil {
		return 0, fmt.Errorf("parsing TOC offset: %w", err)
	}
	return off, nil
}
