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
// TOC's digest, where it starts in the blob (the end of the last chunk),
// its format, and the TOC itself, as Member (the compressed TOC as found in
// the blob: eStargz's gzip member, zstd:chunked's compressed manifest; what
// OpenWithTOC returns, a few bytes per entry) or as JSON (eStargz's JSON
// exactly as hashed, which records from before Member existed hold).
type TOC struct {
	Digest digest.Digest
	Offset int64
	Format string // "" for eStargz, FormatZstdChunked
	Member []byte
	JSON   []byte
}

// FormatZstdChunked is TOC.Format and Layer.Format for zstd:chunked
// layers; FormatEStargz is Layer.Format for eStargz ones.
const (
	FormatZstdChunked = "zstd:chunked"
	FormatEStargz     = "estargz"
)

// OpenWithTOC is Open that also returns the TOC it read, for the caller to
// store and hand to OpenStored after a restart.
func OpenWithTOC(ctx context.Context, blob BlobReader, tocDigest digest.Digest, c Cache, log *logrus.Entry, opts ...Option) (*Layer, TOC, error) {
	c, log = defaults(c, log)
	if tocDigest != "" {
		if err := tocDigest.Validate(); err != nil {
			return nil, TOC{}, fmt.Errorf("expected TOC digest %q: %w", tocDigest, err)
		}
	}
	o := newOptions(log, opts)
	raw, err := readTOCVerified(ctx, blob, tocDigest, o)
	if err != nil {
		return nil, TOC{}, err
	}
	if tocDigest == "" {
		log.WithField("toc_digest", raw.digest).Debug("no TOC digest to check against: trusting the TOC as read")
	}
	t := TOC{Digest: raw.digest, Offset: raw.tocOffset, Member: raw.member}
	if _, ok := raw.format.(estargzFormat); !ok {
		t.Format = raw.format.String()
	}
	return newLayer(raw, blob, c, log, o), t, nil
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
	f, err := formatNamed(toc.Format)
	if err != nil {
		return nil, fmt.Errorf("stored TOC %s: %w", toc.Digest, err)
	}
	o := newOptions(log, opts)
	var raw *rawTOC
	switch {
	case toc.Member != nil:
		raw, err = f.decodeStored(toc.Member, toc.Digest, toc.Offset, o)
	case f == (estargzFormat{}):
		var t *tree
		t, _, err = buildFromJSON(bytes.NewReader(toc.JSON), int64(len(toc.JSON)), toc.Digest, toc.Offset, o)
		raw = &rawTOC{tree: t, digest: toc.Digest, tocOffset: toc.Offset, format: f}
	default:
		err = fmt.Errorf("no %s TOC in the record", f)
	}
	if err != nil {
		return nil, fmt.Errorf("stored TOC: %w", err)
	}
	return newLayer(raw, blob, c, log, o), nil
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
