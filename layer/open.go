package layer

import (
	"context"
	"io"
	"sync"
	"sync/atomic"

	digest "github.com/opencontainers/go-digest"
	"github.com/sirupsen/logrus"
)

// Layer is one opened blob (eStargz or zstd:chunked): its view and the
// means to read file contents from it. It is safe for concurrent use.
type Layer struct {
	format    format
	blob      BlobReader
	cache     Cache
	log       *logrus.Entry
	tree      *tree
	tocDigest digest.Digest

	// tail holds blob bytes [tailStart, tailStart+len(tail)) fetched with
	// the TOC; chunks in it are not fetched again (on a first attempt: a
	// chunk that fails verification is refetched from the registry).
	tail      []byte
	tailStart int64

	mu       sync.Mutex
	inflight map[chunkKey]*flight // chunks being fetched, for singleflight

	reading atomic.Int64 // ReadAt calls in progress; background fetches yield to them
	gate    *DemandGate  // demand reads waiting for chunks; the fill yields to them (see readSegments)
	// missAt is where the file of the latest demand read that had to fetch
	// its chunks itself starts in the blob (0: none yet): the fill goes on
	// from there (see pieceQueue).
	missAt atomic.Int64

	whole atomic.Pointer[WholeFiles] // whole-file copies (WithWholeFiles); nil: none

	rec *recorder // the startup window's needs (see Recorded)

	readahead    int64       // see WithReadahead; 0: off
	readingAhead atomic.Bool // one read-ahead at a time
	blobOrder    struct {    // every chunk by blob offset, for readAhead
		once   sync.Once
		chunks []*chunk
		dirs   []uint32 // directory of each chunk's file
		// fileStarts is where each chunk's file's compressed bytes start
		fileStarts []int64
	}
	readaheadDir int64 // see WithReadaheadSameDir
	sameDir      struct {
		mu     sync.Mutex
		window int64             // what the next same-directory read-ahead takes
		last   map[chunkKey]bool // chunks of the latest read-ahead, while window is the first one
	}

	elfDeps  bool          // see WithELFDeps
	elfSeen  sync.Map      // entry index -> true: ELF files scanned or fetched by a scan
	elfSlots chan struct{} // scans running (at most elfScans)
	replayed atomic.Bool   // a profile was replayed (see maybeScanELF)
}

// Option adjusts how a layer is opened.
type Option func(*options)

type options struct {
	limits       Limits
	log          *logrus.Entry
	zstdPosition *ManifestPosition
	elfDeps      bool
	readaheadDir int64
	readahead    int64
	whole        *WholeFiles
	gate         *DemandGate
}

// WithLimits bounds what the layer's tree may cost (see Limits); a layer
// over a limit fails to open with an error that wraps ErrLimit.
func WithLimits(l Limits) Option { return func(o *options) { o.limits = l } }

// WithAnnotations passes the layer's annotations from the image manifest:
// a zstd:chunked layer's manifest position there is used instead of the
// footer, and the manifest is fetched with one exact request. (The TOC
// digest to verify against is Open's argument: which annotation the
// client's lookup is trusted through is the caller's decision.)
func WithAnnotations(ann map[string]string) Option {
	return func(o *options) {
		if _, pos, ok, err := ZstdChunkedAnnotations(ann); ok && err == nil {
			o.zstdPosition = pos
		}
	}
}

func newOptions(log *logrus.Entry, opts []Option) options {
	o := options{log: log}
	for _, f := range opts {
		f(&o)
	}
	return o
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
func Open(ctx context.Context, blob BlobReader, tocDigest digest.Digest, c Cache, log *logrus.Entry, opts ...Option) (*Layer, error) {
	l, _, err := OpenWithTOC(ctx, blob, tocDigest, c, log, opts...)
	return l, err
}

// newLayer makes the Layer for a built tree, however it was obtained.
func newLayer(raw *rawTOC, blob BlobReader, c Cache, log *logrus.Entry, o options) *Layer {
	log = log.WithField("toc_digest", raw.digest)
	f := raw.format
	if f == nil {
		f = estargzFormat{}
	}
	log.WithFields(logrus.Fields{"entries": len(raw.tree.entries), "tree_bytes": raw.tree.bytes, "format": f}).Debug("opened layer")
	l := &Layer{
		format:       f,
		blob:         blob,
		cache:        c,
		log:          log,
		tree:         raw.tree,
		tocDigest:    raw.digest,
		inflight:     map[chunkKey]*flight{},
		rec:          newRecorder(),
		tail:         raw.chunkTail,
		tailStart:    raw.chunkTailStart,
		elfDeps:      o.elfDeps,
		readaheadDir: o.readaheadDir,
		readahead:    o.readahead,
		elfSlots:     make(chan struct{}, elfScans),
		gate:         o.gate,
	}
	if l.gate == nil {
		l.gate = NewDemandGate()
	}
	l.whole.Store(o.whole)
	l.sameDir.window = sameDirStart(o.readaheadDir)
	return l
}

// Format names the blob's format: FormatEStargz or FormatZstdChunked.
func (l *Layer) Format() string { return l.format.String() }

// Decompress is the package's Decompress in this layer's format.
func (l *Layer) Decompress(blob io.Reader) (io.ReadCloser, error) { return l.format.decompress(blob) }

// FetchedTail returns the blob's bytes [off, off+len(b)) that Open
// fetched with the TOC and keeps for the chunks in them (nil if none), so
// that a reader of the whole blob need not fetch them again; the TOC and
// footer after them are not kept. Callers must not modify them.
func (l *Layer) FetchedTail() (off int64, b []byte) { return l.tailStart, l.tail }

// Root returns the root directory of the view.
func (l *Layer) Root() *Entry { return l.tree.root() }

// Entries is how many entries the view has.
func (l *Layer) Entries() int { return len(l.tree.entries) }

// TreeBytes is what the view's tables take in memory (what was reserved
// for them through Limits.Reserve).
func (l *Layer) TreeBytes() int64 { return l.tree.bytes }

// TOCDigest returns the TOC digest as read from the blob (eStargz: the
// sha256 of the TOC JSON; zstd:chunked: of the compressed manifest).
func (l *Layer) TOCDigest() digest.Digest { return l.tocDigest }

// Prioritized lists the regular files that come before the
// .prefetch.landmark entry in blob order (empty if there is none): the
// files the image builder expects to be read first.
func (l *Layer) Prioritized() []*Entry {
	out := make([]*Entry, len(l.tree.prioritized))
	for i, e := range l.tree.prioritized {
		out[i] = &l.tree.entries[e]
	}
	return out
}

// CompressedRange gives the [start, end) compressed byte range of the blob
// that holds e's content (0, 0 for anything without content).
func (l *Layer) CompressedRange(e *Entry) (start, end int64) {
	if e == nil || e.Type != TypeReg {
		return 0, 0
	}
	return e.file().span()
}

type nopCache struct{}

func (nopCache) Get(string) ([]byte, bool) { return nil, false }
func (nopCache) Add(string, []byte)        {}
