package layer

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"time"

	digest "github.com/opencontainers/go-digest"
	"github.com/sirupsen/logrus"

	"github.com/poolfs/poolfs/cache"
)

// Whole files: once every chunk of a large file is in the cache, a
// background job reads the file through the verified chunk path and stores
// it as one plain local file (a WholeStore, *cache.Disk), so that the FUSE
// layer can hand that file to the kernel (passthrough) and later reads of
// it never reach the daemon.

// DefaultWholeMinSize is the smallest file worth a whole-file copy.
//
// A passthrough open costs more than a plain one (the daemon opens the
// copy and the kernel registers it as a backing file), and a cold read of
// a copy goes to the disk while the daemon may still hold a small file's
// chunks in its memory tier. Measured here (kernel 6.18, virtio disk; 40
// files per size, open+read+close with the page cache dropped, best of 3;
// daemon memory tier holding everything / only 16 MiB):
//
//	size     through the daemon     passthrough
//	16 KiB   125 / 151 µs           325 / 314 µs
//	256 KiB  775 / 298 µs           612 / 732 µs
//	512 KiB  1.8 / 1.9 ms           0.7 / 1.3 ms
//	1 MiB    1.4 / 2.8 ms           0.9 / 1.5 ms
//	4 MiB    7.4 / 12.7 ms          2.7 / 3.6 ms
//
// Small files lose, the crossover lies between 256 and 512 KiB, and from
// 1 MiB on passthrough wins in both settings by 1.6x and more (4x for the
// 512 MiB file of docs/benchmarks.md). Every copy is also a second copy of
// its bytes in the disk cache and a background write, and an image holds
// thousands of small files: 1 MiB keeps copies to the files where they
// clearly pay.
const DefaultWholeMinSize = 1 << 20

const (
	defaultWholeParallel   = 1
	defaultWholeMaxPending = 1024
	defaultWholeRetryAfter = time.Minute
	defaultWholeQuiet      = time.Second
)

// WholeStore keeps whole-file copies by content digest ("sha256:<hex>");
// *cache.Disk is one. AddWhole must verify that what it reads from src
// hashes to dgst before storing it, and report failures with the cache
// package's ErrWhole* errors.
type WholeStore interface {
	HasWhole(dgst string) bool
	OpenWhole(dgst string, size int64) (*os.File, bool)
	AddWhole(ctx context.Context, dgst string, size int64, src io.Reader) error
}

// WholeOptions tune a WholeFiles; zero values take the defaults.
type WholeOptions struct {
	// MinSize: smaller files are never copied (default DefaultWholeMinSize).
	MinSize int64
	// Parallel is how many copies are written at once (default 1: a copy
	// streams from the disk cache to the same disk, and a second one would
	// only compete with it and with readers for that disk).
	Parallel int
	// MaxPending bounds the requests waiting for a worker (default 1024;
	// a request is a few words); requests beyond it are dropped, and asked
	// again at the file's next open or close.
	MaxPending int
	// RetryAfter is how long a file whose copy failed for a reason that
	// may pass (I/O, a chunk that had to be fetched and failed) is left
	// alone (default 1 minute). A digest mismatch is never retried.
	RetryAfter time.Duration
	// Quiet is how long reads through the layers must have paused before
	// a copy starts (default 1 s; negative: no wait). A copy reads,
	// hashes, writes and fsyncs a whole file: done while a container is
	// starting, it competes with it for the CPU and the disk (in the
	// bench, the import workload took 1.45 s with copies made at once vs
	// 1.33 s without passthrough). A copy only pays off on later opens.
	Quiet time.Duration
	// Log is where failures are reported (nil: the standard logger).
	Log *logrus.Entry
}

// WholeStats counts what a WholeFiles did.
type WholeStats struct {
	Written    int64 // copies stored
	Mismatches int64 // files whose verified chunks did not hash to the TOC's file digest
	Failures   int64 // copies that failed otherwise (not counting cancellation at shutdown)
}

// WholeFiles writes whole-file copies in the background, for every layer
// opened with it (WithWholeFiles): Parallel workers take requests from a
// bounded queue, one copy per digest at a time, never on a FUSE request's
// time, and stop when its context ends or Close is called.
type WholeFiles struct {
	store WholeStore
	o     WholeOptions
	log   *logrus.Entry

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	jobs   chan wholeJob

	mu      sync.Mutex
	closed  bool
	pending map[digest.Digest]bool      // queued or being written
	skip    map[digest.Digest]time.Time // not before this time; zero time: not again in this run

	written, mismatches, failures atomic.Int64

	lastRead atomic.Int64 // Unix nanoseconds of the latest read through a layer
}

// wholeJob is one request: the copy of e, whose digest is d, from l.
type wholeJob struct {
	l *Layer
	e *Entry
	d digest.Digest
}

// NewWholeFiles returns a WholeFiles storing into store. Its jobs end when
// ctx does (the daemon stopping) or at Close.
func NewWholeFiles(ctx context.Context, store WholeStore, o WholeOptions) *WholeFiles {
	if o.MinSize <= 0 {
		o.MinSize = DefaultWholeMinSize
	}
	if o.Parallel <= 0 {
		o.Parallel = defaultWholeParallel
	}
	if o.MaxPending <= 0 {
		o.MaxPending = defaultWholeMaxPending
	}
	if o.RetryAfter <= 0 {
		o.RetryAfter = defaultWholeRetryAfter
	}
	if o.Quiet == 0 {
		o.Quiet = defaultWholeQuiet
	}
	log := o.Log
	if log == nil {
		log = logrus.NewEntry(logrus.StandardLogger())
	}
	ctx, cancel := context.WithCancel(ctx)
	w := &WholeFiles{
		store:   store,
		o:       o,
		log:     log,
		ctx:     ctx,
		cancel:  cancel,
		jobs:    make(chan wholeJob, o.MaxPending),
		pending: map[digest.Digest]bool{},
		skip:    map[digest.Digest]time.Time{},
	}
	for range o.Parallel {
		w.wg.Add(1)
		go w.work()
	}
	return w
}

// work runs requests until the WholeFiles is closed.
func (w *WholeFiles) work() {
	defer w.wg.Done()
	for {
		select {
		case j := <-w.jobs:
			if !w.waitQuiet() {
				return
			}
			w.materialize(j)
			w.mu.Lock()
			delete(w.pending, j.d)
			w.mu.Unlock()
		case <-w.ctx.Done():
			return
		}
	}
}

// MinSize is the size from which files get copies.
func (w *WholeFiles) MinSize() int64 { return w.o.MinSize }

// readSeen records a read through a layer (see WholeOptions.Quiet).
func (w *WholeFiles) readSeen(at time.Time) { w.lastRead.Store(at.UnixNano()) }

// waitQuiet returns once no read has been seen for o.Quiet, or false if
// the WholeFiles is closed first.
func (w *WholeFiles) waitQuiet() bool {
	for {
		left := w.o.Quiet - time.Since(time.Unix(0, w.lastRead.Load()))
		if left <= 0 {
			return true
		}
		select {
		case <-time.After(left):
		case <-w.ctx.Done():
			return false
		}
	}
}

// Close cancels the copies in progress and waits for them to end (their
// temp files are removed) and drops the queued requests. Requests after
// Close are ignored.
func (w *WholeFiles) Close() {
	w.mu.Lock()
	w.closed = true
	w.mu.Unlock()
	w.cancel()
	w.wg.Wait()
}

// Stats returns a snapshot of the counters.
func (w *WholeFiles) Stats() WholeStats {
	return WholeStats{Written: w.written.Load(), Mismatches: w.mismatches.Load(), Failures: w.failures.Load()}
}

// Digest returns the sha256 digest of a regular file's whole content as
// the TOC records it, or "" for anything else, for empty files, and when
// the TOC gives no digest or one of another algorithm.
func (e *Entry) Digest() digest.Digest {
	// Algorithm panics on "": test for it first.
	if e == nil || e.Type != TypeReg || e.file() == nil {
		return ""
	}
	if d := e.file().digest; d != "" && d.Algorithm() == digest.SHA256 {
		return d
	}
	return ""
}

// WithWholeFiles makes the layer keep whole-file copies through w
// (default nil: none, and OpenWhole finds nothing).
func WithWholeFiles(w *WholeFiles) Option { return func(o *options) { o.whole = w } }

// ChunksCached reports whether every chunk of regular file e is in the
// layer's cache. It only asks the cache's index (cache.Peeker), reading
// and verifying nothing; a cache that cannot tell counts as a miss.
func (l *Layer) ChunksCached(e *Entry) bool {
	if e == nil || e.Type != TypeReg || e.file() == nil {
		return false
	}
	for _, c := range e.file().chunks {
		if c.digest == "" || !l.cached(c) {
			return false
		}
	}
	return true
}

// cached reports whether c is in the layer's cache, asking only the
// cache's index (cache.Peeker); a cache that cannot tell says no.
func (l *Layer) cached(c *chunk) bool {
	p, ok := l.cache.(cache.Peeker)
	return ok && p.Has(string(c.digest))
}

// OpenWhole opens the whole-file copy of e, if whole files are on for this
// layer and one is stored. The copy's bytes hash to e.Digest(), checked
// when it was written from verified chunks.
//
// The copy is found by the TOC's file digest, so it may have been written
// for the same content in another layer: the same trust the chunk cache
// puts in chunk digests, which are shared across layers the same way.
func (l *Layer) OpenWhole(e *Entry) (*os.File, bool) {
	w := l.whole.Load()
	if w == nil || !w.wanted(e) {
		return nil, false
	}
	return w.store.OpenWhole(string(e.Digest()), e.Size)
}

// MaterializeWhole asks for a whole-file copy of e to be written in the
// background, if whole files are on for this layer, e is large enough and
// has a sha256 file digest, and no copy is stored or being written. The
// copy is written only once all of e's chunks are cached: a file nobody
// read entirely is not fetched for it. It returns at once.
func (l *Layer) MaterializeWhole(e *Entry) {
	if w := l.whole.Load(); w != nil {
		w.request(l, e)
	}
}

// wanted reports whether e is the kind of file copies are made of.
func (w *WholeFiles) wanted(e *Entry) bool {
	return e != nil && e.Type == TypeReg && e.Size >= w.o.MinSize && e.Digest() != ""
}

func (w *WholeFiles) request(l *Layer, e *Entry) {
	if !w.wanted(e) {
		return
	}
	d := e.Digest()
	if w.store.HasWhole(string(d)) {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed || w.pending[d] {
		return
	}
	if until, ok := w.skip[d]; ok {
		if until.IsZero() || time.Now().Before(until) {
			return
		}
		delete(w.skip, d)
	}
	select {
	case w.jobs <- wholeJob{l: l, e: e, d: d}:
		w.pending[d] = true
	default:
		// The queue is full: drop it; the file's next open or close asks
		// again.
	}
}

// materialize writes the copy of j.e, reading its chunks in order through
// the layer's verified path. Files whose chunks are not all cached (nobody
// has read them entirely yet) are left for a later request.
func (w *WholeFiles) materialize(j wholeJob) {
	l, e, d := j.l, j.e, j.d
	// Checked here rather than at the request, which runs on a FUSE
	// request: for a file of many chunks it is many index lookups. Another
	// layer may also have stored the same content meanwhile.
	if w.store.HasWhole(string(d)) || !l.ChunksCached(e) {
		return
	}
	log := l.log.WithFields(logrus.Fields{"path": e.Path(), "file_digest": d, "size": e.Size})
	start := time.Now()
	err := w.store.AddWhole(w.ctx, string(d), e.Size, &entryReader{ctx: w.ctx, l: l, e: e})
	switch {
	case err == nil:
		w.written.Add(1)
		log.WithField("elapsed", time.Since(start).Round(time.Millisecond)).Debug("whole file written for passthrough")
	case w.ctx.Err() != nil:
		// Shutting down: the store has removed its temp file.
	case isPermanent(err):
		if isMismatch(err) {
			w.mismatches.Add(1)
			log.WithError(err).Warn("file contents do not match the TOC's file digest; not keeping a whole-file copy")
		} else {
			log.WithError(err).Debug("not keeping a whole-file copy")
		}
		w.setSkip(d, time.Time{})
	default:
		w.failures.Add(1)
		log.WithError(err).WithField("retry_after", w.o.RetryAfter).Warn("writing whole-file copy failed")
		w.setSkip(d, time.Now().Add(w.o.RetryAfter))
	}
}

func (w *WholeFiles) setSkip(d digest.Digest, until time.Time) {
	w.mu.Lock()
	w.skip[d] = until
	w.mu.Unlock()
}

// isPermanent reports whether retrying the copy of the same file in this
// run cannot help: its contents do not match, its size is wrong, it is too
// large for the cap, or a chunk has no digest to verify it with.
func isPermanent(err error) bool {
	return isMismatch(err) || errors.Is(err, cache.ErrWholeTooLarge) || errors.Is(err, ErrVerify)
}

func isMismatch(err error) bool {
	return errors.Is(err, cache.ErrWholeDigest) || errors.Is(err, cache.ErrWholeSize)
}

// entryReader reads a regular file's content chunk by chunk through the
// layer's verified path (cache, in-flight fetches, registry), so every
// byte it returns was checked against its chunk digest.
type entryReader struct {
	ctx context.Context
	l   *Layer
	e   *Entry
	i   int    // next chunk
	buf []byte // rest of the current chunk
}

func (r *entryReader) Read(p []byte) (int, error) {
	for len(r.buf) == 0 {
		if r.i >= len(r.e.file().chunks) {
			return 0, io.EOF
		}
		if err := r.ctx.Err(); err != nil {
			return 0, err
		}
		c := r.e.file().chunks[r.i]
		r.i++
		if c.digest == "" {
			return 0, fmt.Errorf("reading %q: the TOC has no digest for the chunk at %d: %w", r.e.Path(), c.fileOff, ErrVerify)
		}
		if c.size > maxChunkSize {
			return 0, fmt.Errorf("reading %q: chunk at %d has %d bytes, more than the %d this reader holds in memory", r.e.Path(), c.fileOff, c.size, maxChunkSize)
		}
		data, err := r.l.getChunks(r.ctx, r.e.Path(), []*chunk{c}, fetchOther)
		if err != nil {
			return 0, fmt.Errorf("reading %q at %d: %w", r.e.Path(), c.fileOff, err)
		}
		b := data[c.key()]
		if int64(len(b)) != c.size {
			return 0, fmt.Errorf("reading %q: chunk at %d came back with %d of %d bytes", r.e.Path(), c.fileOff, len(b), c.size)
		}
		r.buf = b
	}
	n := copy(p, r.buf)
	r.buf = r.buf[n:]
	return n, nil
}

// idle reports whether no copy is queued or being written.
func (w *WholeFiles) idle() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.pending) == 0
}
