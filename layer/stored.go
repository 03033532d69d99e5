package layer

import (
	"bytes"
	"context"
	"fmt"
	"io"

	digest "github.com/opencontainers/go-digest"
	"github.com/sirupsen/logrus"
)

// TOC is what a Layer needs to be opened again without the registry: the
// TOC's digest, where its gzip member starts in the blob (the end of the
// last chunk), and the TOC itself, as Member (its gzip member as found in
// the blob: what OpenWithTOC returns, a few bytes per entry) or as JSON
// (the JSON exactly as hashed, which records from before Member existed
// hold).
type TOC struct {
	Digest digest.Digest
	Offset int64
	Member []byte
	JSON   []byte
}

// OpenWithTOC is Open that also returns the TOC it read, for the caller to
// store and hand to OpenStored after a restart.
func OpenWithTOC(ctx context.Context, blob BlobReader, tocDigest digest.Digest, c Cache, log *logrus.Entry, opts ...Option) (*Layer, TOC, error) {
	c, log = defaults(c, log)
	if tocDigest != "" {
		if err := tocDigest.Validate(); err != nil {
			return nil, TOC{}, fmt.Errorf("expected TOC digest %q: %w", tocDigest, err)
		}
	}
	raw, err := readTOCVerified(ctx, blob, tocDigest, newOptions(log, opts))
	if err != nil {
		return nil, TOC{}, err
	}
	if tocDigest == "" {
		log.WithField("toc_digest", raw.digest).Debug("no TOC digest to check against: trusting the TOC as read")
	}
	return newLayer(raw, blob, c, log), TOC{Digest: raw.digest, Offset: raw.tocOffset, Member: raw.member}, nil
}

// OpenStored builds the Layer from a TOC stored earlier, without reading
// the blob. The TOC must hash to toc.Digest (else ErrVerify: the record
// was damaged and the caller should drop it and go to the registry), and
// the offset must leave room for a footer in the blob. Chunks are verified
// on read as always.
func OpenStored(blob BlobReader, toc TOC, c Cache, log *logrus.Entry, opts ...Option) (*Layer, error) {
	c, log = defaults(c, log)
	if err := toc.Digest.Validate(); err != nil {
		return nil, fmt.Errorf("stored TOC digest %q: %w", toc.Digest, err)
	}
	if toc.Offset < 0 || toc.Offset > blob.Size()-legacyFooterSize {
		return nil, fmt.Errorf("stored TOC offset %d outside the %d byte blob", toc.Offset, blob.Size())
	}
	o := newOptions(log, opts)
	var t *tree
	var err error
	if toc.Member != nil {
		t, _, err = buildFromMember(toc.Member, toc.Digest, toc.Offset, o)
	} else {
		t, _, err = buildFromJSON(bytes.NewReader(toc.JSON), int64(len(toc.JSON)), toc.Digest, toc.Offset, o)
	}
	if err != nil {
		return nil, fmt.Errorf("stored TOC: %w", err)
	}
	return newLayer(&rawTOC{tree: t, digest: toc.Digest, tocOffset: toc.Offset}, blob, c, log), nil
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
