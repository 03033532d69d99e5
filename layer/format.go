package layer

import (
	"fmt"
	"io"

	"github.com/containerd/stargz-snapshotter/estargz"
	digest "github.com/opencontainers/go-digest"
)

// format is what differs between the blob formats a Layer serves lazily,
// each in a file of its own (estargz.go, zstdchunked.go): where the TOC is,
// how it is verified and decoded, and how a chunk's compressed bytes become
// its content. The TOC fetch, the chunk fetch engine, the caches and the
// trees are the same for all; each format's decodeTOC feeds its entries to
// the one tree builder, saying how its chunks' compressed extents end.
type format interface {
	String() string
	// locateTOC finds the compressed TOC from tail, the blob's last bytes
	// (size is the blob's); ok is false if tail does not end in this
	// format's footer.
	locateTOC(tail []byte, size int64) (r tocRange, ok bool, err error)
	// decodeTOC verifies the compressed TOC found at r against want (if
	// not "") and builds the tree from it (within o's limits).
	decodeTOC(compressed []byte, r tocRange, want digest.Digest, o options) (*rawTOC, error)
	// decodeStored builds the tree from a compressed TOC as OpenWithTOC
	// returned it (TOC.Member), which must hash to its digest d (else
	// ErrVerify); tocOffset is TOC.Offset.
	decodeStored(member []byte, d digest.Digest, tocOffset int64, o options) (*rawTOC, error)
	// decodeChunk decompresses c from exactly its compressed range
	// [c.blobOff, c.blobEnd) and verifies it, failing with ErrVerify.
	decodeChunk(c *chunk, compressed []byte) ([]byte, error)
	// decompress reads a whole blob as the layer tar (its diff_id's input).
	decompress(blob io.Reader) (io.ReadCloser, error)
}

// formats are tried in this order on a blob's tail.
var formats = []format{estargzFormat{}, zstdChunked{}}

// minFooterSize is the smallest footer of any format (legacy stargz's).
const minFooterSize = legacyFooterSize

// tocRange is where a format's compressed TOC lies in the blob, and how big
// it says the TOC is decompressed (-1: it does not say).
type tocRange struct {
	start, end   int64
	uncompressed int64
}

// formatNamed is the format TOC.Format names ("" is eStargz, for records
// stored before formats had names).
func formatNamed(name string) (format, error) {
	if name == "" || name == FormatEStargz {
		return estargzFormat{}, nil
	}
	for _, f := range formats {
		if f.String() == name {
			return f, nil
		}
	}
	return nil, fmt.Errorf("unknown TOC format %q", name)
}

// Decompress reads blob, a whole blob in the format Layer.Format names
// from its start, as the uncompressed layer tar (what the diff_id is the
// digest of).
func Decompress(format string, blob io.Reader) (io.ReadCloser, error) {
	f, err := formatNamed(format)
	if err != nil {
		return nil, err
	}
	return f.decompress(blob)
}

// TOCDigestFromAnnotations returns the TOC digest a manifest layer's
// annotations publish, "" if none: eStargz's TOC digest, else
// zstd:chunked's manifest checksum (either generation's key). It is what a
// client may look the layer up by and what Open checks the TOC against.
func TOCDigestFromAnnotations(ann map[string]string) (digest.Digest, error) {
	if s, ok := ann[estargz.TOCJSONDigestAnnotation]; ok {
		d, err := digest.Parse(s)
		if err != nil {
			return "", fmt.Errorf("annotation %s: %w", estargz.TOCJSONDigestAnnotation, err)
		}
		return d, nil
	}
	d, _, _, err := ZstdChunkedAnnotations(ann)
	return d, err
}
