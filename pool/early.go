package pool

import (
	"context"
	"sync"
	"sync/atomic"

	"github.com/poolfs/poolfs/internal/pace"

	digest "github.com/opencontainers/go-digest"

	"github.com/poolfs/poolfs/layer"
	"github.com/poolfs/poolfs/profile"
	"github.com/poolfs/poolfs/remote"
)

// earlyRanges is a remote.Blob that fetches the ranges a profile's
// replay will ask for from when the layer's TOC read is about a round trip
// from done (pace.NearTheEnd, as the head stream does), or its bytes are
// in (TailRead), before the TOC is decoded and the replay can start: the
// replay's runs (layer.ReplayRuns, the same plan) then find their bytes in
// flight, and the link is not idle for the decoding and a round trip. A
// read inside a range is served from it as its bytes arrive, each byte
// once (a run retried after a failed verification goes to the registry);
// everything else goes to the blob. Release drops what was not read.
//
// The plan is made at once for a stored profile (newEarlyRanges), or when
// a published one arrives while the TOC is still being read (pendingEarly,
// then plan): a plan that comes once the link is free starts at once, one
// that comes after closePlans (the TOC is decoded: the replay itself
// starts now) is not made.
type earlyRanges struct {
	remote.Blob

	mu       sync.Mutex
	order    []*earlyRange // in the replay's order; nil until planned
	linkFree bool          // the TOC read is about done: a plan may start
	closed   bool          // no plan is taken any more

	startOnce sync.Once
	ctx       context.Context
	cancel    context.CancelFunc
	released  atomic.Bool
	started   atomic.Bool
}

type earlyRange struct {
	start, end int64

	mu     sync.Mutex
	buf    []byte // nil once released
	avail  int64  // bytes of buf received
	ended  bool   // no more bytes will arrive
	more   chan struct{}
	served []span // parts handed out
}

type span struct{ start, end int64 }

// claimOnce marks [off, off+n) served in *served unless some of it already
// was: bytes read ahead (earlyRanges, knownTail) are handed out once each,
// so a read retried after a failed check goes to the registry.
func claimOnce(served *[]span, off, n int64) bool {
	for _, s := range *served {
		if off < s.end && s.start < off+n {
			return false
		}
	}
	*served = append(*served, span{off, off + n})
	return true
}

var _ layer.TailNotifier = (*earlyRanges)(nil)

// newEarlyRanges plans p's replay on blob, leaving out chunks has says are
// cached and those in the window Open reads with the TOC; nil if nothing
// is left to fetch.
func newEarlyRanges(blob remote.Blob, p *profile.Profile, has func(digest.Digest) bool) *earlyRanges {
	order := earlyPlan(blob, p, has)
	if order == nil {
		return nil
	}
	e := pendingEarly(blob)
	e.order = order
	return e
}

// pendingEarly is an earlyRanges on blob with no plan yet (see plan).
func pendingEarly(blob remote.Blob) *earlyRanges {
	ctx, cancel := context.WithCancel(context.Background())
	return &earlyRanges{Blob: blob, ctx: ctx, cancel: cancel}
}

// earlyPlan is the ranges of p's replay on blob (see newEarlyRanges); nil
// if none.
func earlyPlan(blob remote.Blob, p *profile.Profile, has func(digest.Digest) bool) []*earlyRange {
	tailStart := layer.TailStart(blob.Size())
	var chunks []profile.Chunk
	for _, c := range p.Chunks {
		if c.End <= tailStart && !has(c.Digest) {
			chunks = append(chunks, c)
		}
	}
	var order []*earlyRange
	for _, r := range layer.ReplayRuns(chunks) {
		order = append(order, &earlyRange{start: r[0], end: r[1], more: make(chan struct{})})
	}
	return order
}

// plan plans p's replay on an earlyRanges made by pendingEarly, and starts
// it if the TOC read is about done; it reports whether it did plan (not
// after closePlans or Release, nor twice).
func (e *earlyRanges) plan(p *profile.Profile, has func(digest.Digest) bool) bool {
	order := earlyPlan(e.Blob, p, has)
	e.mu.Lock()
	if order == nil || e.order != nil || e.closed {
		e.mu.Unlock()
		return false
	}
	e.order = order
	free := e.linkFree
	e.mu.Unlock()
	if free {
		e.start()
	}
	return true
}

// closePlans refuses plans from now on. A nil earlyRanges may be closed.
func (e *earlyRanges) closePlans() {
	if e == nil {
		return
	}
	e.mu.Lock()
	e.closed = true
	e.mu.Unlock()
}

// ranges is the plan (nil: none yet).
func (e *earlyRanges) ranges() []*earlyRange {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.order
}

// TailRead implements layer.TailNotifier: the TOC's bytes are in, the link
// is free for the ranges (and for the blob's own stream, if it has one).
func (e *earlyRanges) TailRead() {
	e.start()
	tellTailRead(e.Blob)
}

// start fetches the ranges in plan order, about a round trip's worth of
// bytes in flight and at most layer.ReplayParallel requests (pace.Ordered);
// without a plan it notes that the link is free, for plan.
func (e *earlyRanges) start() {
	if e == nil {
		return
	}
	e.mu.Lock()
	e.linkFree = true
	order := e.order
	e.mu.Unlock()
	if order == nil {
		return
	}
	e.startOnce.Do(func() {
		e.started.Store(true)
		sizes := make([]int, len(order))
		for i, r := range order {
			sizes[i] = int(r.end - r.start)
		}
		go pace.Ordered(e.ctx, sizes, layer.ReplayParallel, func(i int, progress func(int)) {
			order[i].fetch(e.ctx, e.Blob, progress)
		}, func(i int) { order[i].finish() })
	})
}

func (r *earlyRange) fetch(ctx context.Context, b remote.Blob, progress func(int)) {
	defer r.finish()
	r.mu.Lock()
	if r.ended {
		r.mu.Unlock()
		return
	}
	buf := make([]byte, r.end-r.start)
	r.buf = buf
	r.mu.Unlock()
	_, _ = b.ReadAtProgress(ctx, buf, r.start, func(n int) {
		progress(n)
		r.mu.Lock()
		if int64(n) > r.avail {
			r.avail = int64(n)
			close(r.more)
			r.more = make(chan struct{})
		}
		r.mu.Unlock()
	})
}

// finish marks r as getting no more bytes.
func (r *earlyRange) finish() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.ended {
		r.ended = true
		close(r.more)
		r.more = make(chan struct{})
	}
}

// Release stops the fetches and drops their buffers; reads from now on go
// to the blob. A nil earlyRanges may be released.
func (e *earlyRanges) Release() {
	if e == nil {
		return
	}
	e.released.Store(true)
	e.cancel()
	e.mu.Lock()
	e.closed = true
	order := e.order
	e.mu.Unlock()
	for _, r := range order {
		r.mu.Lock()
		r.buf = nil
		r.mu.Unlock()
		r.finish()
	}
}

func (e *earlyRanges) ReadAt(ctx context.Context, p []byte, off int64) (int, error) {
	return e.ReadAtProgress(ctx, p, off, nil)
}

// ReadAtProgress serves [off, off+len(p)) from the range holding it, if
// one does and has not served any of it before, waiting for its bytes;
// what the range does not deliver comes from the blob.
func (e *earlyRanges) ReadAtProgress(ctx context.Context, p []byte, off int64, progress func(n int)) (int, error) {
	r := e.claim(off, int64(len(p)))
	if r == nil {
		// The TOC's read, for one: the ranges start when it is about a
		// round trip from done.
		if !e.started.Load() {
			progress = pace.NearTheEnd(len(p), progress, e.start)
		}
		return e.Blob.ReadAtProgress(ctx, p, off, progress)
	}
	e.start()
	return remote.FillThenRead(ctx, e.Blob, p, off, progress, func(filled int) ([]byte, bool, <-chan struct{}) {
		r.mu.Lock()
		defer r.mu.Unlock()
		pos := off + int64(filled)
		if to := min(r.start+r.avail, off+int64(len(p))); r.buf != nil && to > pos {
			return r.buf[pos-r.start : to-r.start], false, nil
		}
		return nil, r.ended, r.more // ended: released, failed or short; the blob serves the rest
	})
}

// claim finds a range holding all of [off, off+n) none of which it served
// yet, and marks that part served.
func (e *earlyRanges) claim(off, n int64) *earlyRange {
	if e == nil || n <= 0 || e.released.Load() {
		return nil
	}
	for _, r := range e.ranges() {
		if off < r.start || off+n > r.end {
			continue
		}
		r.mu.Lock()
		ok := !(r.ended && r.buf == nil) && claimOnce(&r.served, off, n)
		r.mu.Unlock()
		if ok {
			return r
		}
	}
	return nil
}
