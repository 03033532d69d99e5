package layer

import (
	"context"
	"fmt"
	"io"
	"sync"
	"sync/atomic"

	digest "github.com/opencontainers/go-digest"
	"github.com/sirupsen/logrus"
)

// Layer is one opened blob (eStargz or zstd:chunked): its view and the means to read file
// contents from it. It is safe for concurrent use.
type Layer struct {
	format      format
	blob        BlobReader
	cache       Cache
	log         *logrus.Entry
	root        *Entry
	tocDigest   digest.Digest
	prioritized []*Entry

	// tail holds blob bytes [tailStart, tailStart+len(tail)) fetched with
	// the TOC; chunks in it are not fetched again (on a first attempt: a
	// chunk that fails verification is refetched from the registry).
	tail      []byte
	tailStart int64
	// fetchedTail is tail with the TOC and footer after it (see
	// FetchedTail); nil when tail is.
	fetchedTail []byte

	mu       sync.Mutex
	inflight map[chunkKey]*flight // chunks being fetched, for singleflight

	reading atomic.Int64 // ReadAt calls in progress; background fetches yield to them

	whole atomic.Pointer[WholeFiles] // whole-file copies (SetWholeFiles); nil: none

	readahead    atomic.Int64 // see SetReadahead; 0: off
	readingAhead atomic.Bool  // one read-ahead at a time
	blobOrder    struct {     // every chunk by blob offset, for readAhead
		once   sync.Once
		chunks []*chunk
	}
}

// Open reads the footer and TOC of an eStargz or zstd:chunked blob and
// builds the view.
//
// The last min(size, 1 MiB) of the blob is fetched in one ReadAt so the
// footer and usually the whole TOC arrive in one round trip; only if the
// TOC starts before that window is a second ReadAt made for the rest.
// If tocDigest is "", nothing says the blob is in a lazily served format,
// and the window is 64 KiB. If tocDigest is not "", the TOC must hash to
// it (else ErrVerify): eStargz's TOC JSON, zstd:chunked's compressed
// manifest; if it is "", the TOC is trusted as read. Chunk contents are
// always verified against the TOC's digests when read. A blob without the
// footer of either format gives ErrNoFormat. c may be nil (no caching);
// log may be nil.
func Open(ctx context.Context, blob BlobReader, tocDigest digest.Digest, c Cache, log *logrus.Entry) (*Layer, error) {
	c, log = defaults(c, log)
	if tocDigest != "" {
		if err := tocDigest.Validate(); err != nil {
			return nil, fmt.Errorf("expected TOC digest %q: %w", tocDigest, err)
		}
	}

	raw, err := readTOCVerified(ctx, blob, tocDigest, nil, log)
	if err != nil {
		return nil, err
	}
	if tocDigest == "" {
		log.WithField("toc_digest", raw.digest).Debug("no TOC digest to check against: trusting the TOC as read")
	}
	return fromRaw(raw, blob, c, log)
}

// fromRaw builds the Layer from a decoded TOC, however it was obtained.
func fromRaw(raw *rawTOC, blob BlobReader, c Cache, log *logrus.Entry) (*Layer, error) {
	log = log.WithField("toc_digest", raw.digest)
	for i, te := range raw.toc.Entries {
		if te == nil {
			return nil, fmt.Errorf("TOC %s: entry %d is null", raw.digest, i)
		}
	}
	files, f := raw.files, raw.format
	if f == nil {
		f = estargzFormat{}
	}
	if files == nil {
		var err error
		if files, err = indexChunks(raw.toc.Entries, raw.tocOffset); err != nil {
			return nil, fmt.Errorf("TOC %s: %w", raw.digest, err)
		}
	}
	v, err := buildView(raw.toc.Entries, files, log)
	if err != nil {
		return nil, fmt.Errorf("TOC %s: %w", raw.digest, err)
	}
	log.WithFields(logrus.Fields{"entries": len(raw.toc.Entries), "format": f}).Debug("opened layer")
	return &Layer{
		format:      f,
		blob:        blob,
		cache:       c,
		log:         log,
		root:        v.root,
		tocDigest:   raw.digest,
		prioritized: v.prioritized,
		inflight:    map[chunkKey]*flight{},
		tail:        raw.chunkTail,
		tailStart:   raw.chunkTailStart,
		fetchedTail: raw.fetchedTail,
	}, nil
}

// Format names the blob's format: "estargz" or FormatZstdChunked.
func (l *Layer) Format() string { return l.format.String() }

// Decompress reads blob, the whole blob of this layer from its start, as
// the uncompressed layer tar (what the diff_id is the digest of).
func (l *Layer) Decompress(blob io.Reader) (io.ReadCloser, error) { return l.format.decompress(blob) }

// FetchedTail returns the blob's bytes [off, size) that Open fetched with
// the TOC, byte for byte as they came (nil if it kept none), so that a
// reader of the whole blob need not fetch them again. For a small layer
// that is all of it. Callers must not modify them.
func (l *Layer) FetchedTail() (off int64, b []byte) { return l.tailStart, l.fetchedTail }

// Root returns the root directory of the view.
func (l *Layer) Root() *Entry { return l.root }

// TOCDigest returns the sha256 of the TOC JSON as read from the blob.
func (l *Layer) TOCDigest() digest.Digest { return l.tocDigest }

// Prioritized lists the regular files that come before the
// .prefetch.landmark entry in blob order (empty if there is none): the
// files the image builder expects to be read first.
func (l *Layer) Prioritized() []*Entry {
	return append([]*Entry(nil), l.prioritized...)
}

// CompressedRange gives the [start, end) compressed byte range of the blob
// that holds e's content (0, 0 for anything without content).
func (l *Layer) CompressedRange(e *Entry) (start, end int64) {
	if e == nil || e.Type != TypeReg {
		return 0, 0
	}
	return e.file.span()
}

type nopCache struct{}

func (nopCache) Get(string) ([]byte, bool) { return nil, false }
func (nopCache) Add(string, []byte)        {}
