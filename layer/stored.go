package layer

import (
	"context"
	"fmt"
	"io"

	digest "github.com/opencontainers/go-digest"
	"github.com/sirupsen/logrus"
)

// TOC is what a Layer needs to be opened again without the registry: the
// TOC exactly as hashed (eStargz: the JSON; zstd:chunked: the compressed
// manifest), its digest, where it starts in the blob (the end of the last
// chunk) and its format.
type TOC struct {
	Digest digest.Digest
	Offset int64
	Format string // "" for eStargz, FormatZstdChunked
	JSON   []byte
}

// FormatZstdChunked is TOC.Format for zstd:chunked layers.
const FormatZstdChunked = "zstd:chunked"

// OpenWithTOC is Open that also returns the TOC it read, for the caller to
// store and hand to OpenStored after a restart.
func OpenWithTOC(ctx context.Context, blob BlobReader, tocDigest digest.Digest, c Cache, log *logrus.Entry, opts ...OpenOption) (*Layer, TOC, error) {
	c, log = defaults(c, log)
	if tocDigest != "" {
		if err := tocDigest.Validate(); err != nil {
			return nil, TOC{}, fmt.Errorf("expected TOC digest %q: %w", tocDigest, err)
		}
	}
	var o openOptions
	for _, opt := range opts {
		opt(&o)
	}
	raw, err := readTOCVerified(ctx, blob, tocDigest, o.zstdPosition, log)
	if err != nil {
		return nil, TOC{}, err
	}
	l, err := fromRaw(raw, blob, c, log)
	if err != nil {
		return nil, TOC{}, err
	}
	t := TOC{Digest: raw.digest, Offset: raw.tocOffset, JSON: raw.json}
	if _, ok := raw.format.(estargzFormat); !ok {
		t.Format = raw.format.String()
	}
	return l, t, nil
}

// OpenOption adds to what Open knows about the blob beforehand.
type OpenOption func(*openOptions)

type openOptions struct {
	zstdPosition *ManifestPosition
}

// WithAnnotations passes the layer's annotations from the image manifest:
// a zstd:chunked layer's manifest position there is used instead of the
// footer, and the manifest is fetched with one exact request. (The TOC
// digest to verify against is Open's argument: which annotation the
// client's lookup is trusted through is the caller's decision.)
func WithAnnotations(ann map[string]string) OpenOption {
	return func(o *openOptions) {
		if _, pos, ok, err := ZstdChunkedAnnotations(ann); ok && err == nil {
			o.zstdPosition = pos
		}
	}
}

// OpenStored builds the Layer from a TOC stored earlier, without reading
// the blob. The JSON must hash to toc.Digest (else ErrVerify: the record
// was damaged and the caller should drop it and go to the registry), and
// the offset must leave room for a footer in the blob. Chunks are verified
// on read as always.
func OpenStored(blob BlobReader, toc TOC, c Cache, log *logrus.Entry) (*Layer, error) {
	c, log = defaults(c, log)
	if err := toc.Digest.Validate(); err != nil {
		return nil, fmt.Errorf("stored TOC digest %q: %w", toc.Digest, err)
	}
	if got := digest.FromBytes(toc.JSON); got != toc.Digest {
		return nil, fmt.Errorf("stored TOC JSON hashes to %s, want %s: %w", got, toc.Digest, ErrVerify)
	}
	if toc.Offset < 0 || toc.Offset > blob.Size()-legacyFooterSize {
		return nil, fmt.Errorf("stored TOC offset %d outside the %d byte blob", toc.Offset, blob.Size())
	}
	f, err := formatNamed(toc.Format)
	if err != nil {
		return nil, fmt.Errorf("stored TOC %s: %w", toc.Digest, err)
	}
	raw, err := f.decodeStored(toc.JSON, toc.Digest, toc.Offset)
	if err != nil {
		return nil, fmt.Errorf("stored TOC %s: %w", toc.Digest, err)
	}
	return fromRaw(raw, blob, c, log)
}

func defaults(c Cache, log *logrus.Entry) (Cache, *logrus.Entry) {
	if log == nil {
		l := logrus.New()
		l.Out = io.Discard
		log = logrus.NewEntry(l)
	}
	if c == nil {
		c = nopCache{}
	}
	return c, log
}
