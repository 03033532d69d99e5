package layer

import (
	"context"
	"fmt"
	"io"

	digest "github.com/opencontainers/go-digest"
	"github.com/sirupsen/logrus"
)

// TOC is what a Layer needs to be opened again without the registry: the
// TOC JSON exactly as hashed, its digest and where its gzip member starts in
// the blob (the end of the last chunk).
type TOC struct {
	Digest digest.Digest
	Offset int64
	JSON   []byte
}

// OpenWithTOC is Open that also returns the TOC it read, for the caller to
// store and hand to OpenStored after a restart.
func OpenWithTOC(ctx context.Context, blob BlobReader, tocDigest digest.Digest, c Cache, log *logrus.Entry) (*Layer, TOC, error) {
	c, log = defaults(c, log)
	if tocDigest != "" {
		if err := tocDigest.Validate(); err != nil {
			return nil, TOC{}, fmt.Errorf("expected TOC digest %q: %w", tocDigest, err)
		}
	}
	raw, err := readTOCVerified(ctx, blob, tocDigest, log)
	if err != nil {
		return nil, TOC{}, err
	}
	l, err := fromRaw(raw, blob, c, log)
	if err != nil {
		return nil, TOC{}, err
	}
	return l, TOC{Digest: raw.digest, Offset: raw.tocOffset, JSON: raw.json}, nil
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
	jtoc, err := decodeTOC(toc.JSON)
	if err != nil {
		return nil, fmt.Errorf("stored TOC %s: %w", toc.Digest, err)
	}
	return fromRaw(&rawTOC{toc: jtoc, digest: toc.Digest, tocOffset: toc.Offset, json: toc.JSON}, blob, c, log)
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
