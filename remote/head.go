package remote

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/poolfs/poolfs/internal/pace"

	digest "github.com/opencontainers/go-digest"
)

// HeadStreamer is a Blob that can start streaming its first bytes before
// anyone reads them (the registry blobs of Resolver.Blob are).
type HeadStreamer interface {
	StreamHead(n int64, probe func(first []byte) bool) *Head
}

// Head is a Blob whose first bytes are streamed before anyone reads them,
// in two range requests: a probe of the first headProbe bytes at once, and,
// once started (Start, TailRead, the first read inside it, or the read it
// times, below), the rest of [0, n). Reads inside what the stream covers
// are served from it as its bytes arrive, everything else by the blob's own
// range requests.
//
// It exists for the time between a layer's TOC arriving and its prefetch
// starting: an eStargz builder puts the files a workload needs first in the
// blob, but where they end is only known once the TOC is decoded, and
// waiting for that leaves the link idle for the decoding and one more round
// trip. Started while the TOC is still on the wire, the bulk of the stream
// would only share the link with it and delay the layer's lookup; so it
// starts itself when the TOC read is about a round trip from done (see
// startNearTheEnd), or when layer.Open says through TailRead that the TOC's
// bytes are in. The probe, a few KiB beside the TOC, tells the caller's
// probe function what the blob starts with, so a blob that starts with
// nothing worth streaming (no prioritized files) costs no more than that.
// The caller shortens the stream with Limit as soon as it knows how much of
// the head it wants, and ends it with Release.
//
// Each streamed byte is handed out once: a range asked for again (a chunk
// that failed verification and is retried, say) goes to the registry, so a
// byte spoiled in transit is never served twice. A stream that fails or
// stalls for the fetch timeout ends; what it did not deliver is read from
// the blob.
type Head struct {
	b      *blob
	probe  func([]byte) bool
	cancel context.CancelCauseFunc
	start  chan struct{} // closed by Start
	done   chan struct{} // closed when the stream goroutine has returned

	mu       sync.Mutex
	started  bool
	buf      []byte        // [0, avail) are the blob's first bytes; nil once released
	avail    int64         // bytes received
	end      int64         // the stream stops here (Limit lowers it)
	ended    bool          // no more bytes will arrive
	more     chan struct{} // closed and replaced whenever avail grows or ended is set
	served   []span        // ranges already handed out
	released bool
}

type span struct{ start, end int64 }

var _ Blob = (*Head)(nil)

// headProbe is how much of a blob's start the probe request asks for: an
// eStargz blob's first entry, .no.prefetch.landmark when nothing was
// prioritized, is a gzip member of about 100 bytes.
const headProbe = 4 << 10

// StreamHead returns a Head for bytes [0, n) of the blob (n is clipped to
// its size) and sends its probe request. probe, if not nil, is given the
// probe's bytes (fewer if the blob or the stream is shorter) and says
// whether the rest is worth streaming. The stream is detached from any
// caller and runs until it has all its bytes, Limit or Release stops it,
// or it fails.
func (b *blob) StreamHead(n int64, probe func(first []byte) bool) *Head {
	n = max(0, min(n, b.size))
	ctx, cancel := context.WithCancelCause(context.Background())
	// The buffer grows to n once the stream goes past the probe: a layer
	// with nothing to stream never holds more than the probe.
	h := &Head{b: b, probe: probe, cancel: cancel, start: make(chan struct{}), done: make(chan struct{}),
		end: n, more: make(chan struct{}), buf: make([]byte, min(n, headProbe))}
	if n == 0 {
		h.finish(nil)
		close(h.done)
		return h
	}
	go h.run(ctx)
	return h
}

// Start starts streaming past the probe, if it has not started.
func (h *Head) Start() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.startLocked()
}

func (h *Head) startLocked() {
	if !h.started {
		h.started = true
		close(h.start)
	}
}

// TailRead implements layer.TailNotifier: the TOC's bytes are in, the link
// is the stream's.
func (h *Head) TailRead() { h.Start() }

// errHeadStalled ends a head stream that brought no byte for the fetch
// timeout.
var errHeadStalled = errors.New("head stream stalled")

func (h *Head) Digest() digest.Digest { return h.b.Digest() }
func (h *Head) Size() int64           { return h.b.Size() }

// Limit stops the stream once it has n bytes (at once if it has them
// already); reads beyond go to the blob. Limit never raises the end.
func (h *Head) Limit(n int64) {
	if h == nil {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if n >= h.end {
		return
	}
	h.end = max(n, h.avail)
	if h.avail >= h.end {
		h.cancel(nil)
	}
}

// Release stops the stream and drops its buffer: every read from now on,
// and the rest of any read waiting for the stream, goes to the blob. A nil
// Head may be released.
func (h *Head) Release() {
	if h == nil {
		return
	}
	h.mu.Lock()
	h.released = true
	h.buf = nil
	h.end = min(h.end, h.avail)
	h.mu.Unlock()
	h.cancel(nil)
}

// Wait returns once the stream has stopped and its bytes are counted.
func (h *Head) Wait() { <-h.done }

// Streamed reports how many bytes the stream received and whether it is
// over.
func (h *Head) Streamed() (n int64, over bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.avail, h.ended
}

func (h *Head) ReadAt(ctx context.Context, p []byte, off int64) (int, error) {
	return h.ReadAtProgress(ctx, p, off, nil)
}

// ReadAtProgress serves the part of [off, off+len(p)) that the stream
// covers (and has not served before) from it, waiting for its bytes, and
// the rest from the blob.
func (h *Head) ReadAtProgress(ctx context.Context, p []byte, off int64, progress func(n int)) (int, error) {
	stop := h.claim(off, int64(len(p)))
	if stop <= off {
		return h.b.ReadAtProgress(ctx, p, off, h.startNearTheEnd(len(p), progress))
	}
	return FillThenRead(ctx, h.b, p, off, progress, func(filled int) ([]byte, bool, <-chan struct{}) {
		h.mu.Lock()
		defer h.mu.Unlock()
		pos := off + int64(filled)
		if h.buf == nil || pos >= stop {
			return nil, true, nil // released, or past what was claimed: the blob serves the rest
		}
		if to := min(h.avail, stop); to > pos {
			return h.buf[pos:to], false, nil
		}
		return nil, h.ended, h.more
	})
}

// startNearTheEnd wraps the progress of a read the stream does not serve
// (the TOC, while the stream waits for it) so that the stream starts once
// that read is about one round trip from done (see pace.NearTheEnd). TailRead
// still starts the stream if this never does.
func (h *Head) startNearTheEnd(n int, progress func(int)) func(int) {
	h.mu.Lock()
	started := h.started
	h.mu.Unlock()
	if started {
		return progress
	}
	return pace.NearTheEnd(n, progress, h.Start)
}

// claim decides which part of a read the stream serves: [off, stop), with
// stop <= off meaning none. That part is marked served, and the stream
// started if it was not.
func (h *Head) claim(off, n int64) (stop int64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.released || off < 0 || off >= h.end {
		return 0
	}
	stop = min(off+n, h.end)
	for _, s := range h.served {
		if s.start < stop && off < s.end {
			return 0
		}
	}
	h.served = append(h.served, span{off, stop})
	h.startLocked() // someone wants these bytes now
	return stop
}

// finish marks the stream over and wakes every waiter. Called with h.mu
// held, or before the Head is shared.
func (h *Head) finish(err error) {
	h.ended = true
	h.end = min(h.end, h.avail)
	close(h.more)
	h.more = make(chan struct{})
	if err != nil && !h.released {
		h.b.log.WithError(err).WithField("streamed", h.avail).Debug("head stream ended early; the blob serves the rest")
	}
}

// run is the stream: the probe, then, once started and if the probe
// function agrees, the rest, both from the endpoint that served the blob
// last, with no retries (a failure only means the reads the stream would
// have served go to the blob, which retries).
func (h *Head) run(ctx context.Context) {
	defer close(h.done)
	defer h.cancel(nil)
	ep := h.b.eps[int(h.b.pref.Load())%len(h.b.eps)]
	began := time.Now()
	err := h.fill(ctx, ep, headProbe)
	if err == nil && h.probe != nil {
		h.mu.Lock()
		first, released := h.buf, h.released
		if !released {
			first = first[:h.avail]
		}
		h.mu.Unlock()
		if !released && !h.probe(first) {
			h.Limit(0)
		}
	}
	if err == nil {
		select {
		case <-h.start:
			err = h.fill(ctx, ep, h.grow())
		case <-ctx.Done():
		}
	}
	h.mu.Lock()
	got := h.avail
	if ctx.Err() != nil {
		// Stopped by Limit or Release, which is no failure, or stalled.
		err = nil
		if cause := context.Cause(ctx); errors.Is(cause, errHeadStalled) {
			err = fmt.Errorf("head stream of blob %s: %w for %s", h.b.digest, cause, h.b.r.s.fetchTO)
		}
	}
	h.finish(err)
	h.mu.Unlock()
	h.b.r.observeFetch(ep.repo.RegistryStr(), int(got), began, err)
	h.b.fetched.add(0, got)
}

// grow makes the buffer hold everything up to end, and returns end.
func (h *Head) grow() int64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	if !h.released && int64(len(h.buf)) < h.end {
		buf := make([]byte, h.end)
		copy(buf, h.buf[:h.avail])
		h.buf = buf
	}
	return h.end
}

// fill asks for the bytes from avail up to to (at most end) in one range
// request, the blob's own (rangeOnce), and hands them out as they arrive.
// A Limit or Release that leaves nothing more to wait for ends the request.
func (h *Head) fill(ctx context.Context, ep blobEndpoint, to int64) error {
	h.mu.Lock()
	from, to := h.avail, min(to, h.end)
	if h.released || from >= to {
		h.mu.Unlock()
		return nil
	}
	dst := h.buf[from:to]
	h.mu.Unlock()
	e, err := h.b.r.authFor(ctx, ep.repo)
	if err != nil {
		return err
	}
	// A stall ends the stream like a failure; the deadline moves with
	// every read that brings bytes.
	stall := time.AfterFunc(h.b.r.s.fetchTO, func() { h.cancel(errHeadStalled) })
	defer stall.Stop()
	_, err = h.b.rangeOnce(ctx, e.client, ep.url, dst, from, func(n int) {
		stall.Reset(h.b.r.s.fetchTO)
		h.mu.Lock()
		defer h.mu.Unlock()
		h.avail = from + int64(n)
		close(h.more)
		h.more = make(chan struct{})
		if h.released || h.avail >= h.end {
			h.cancel(nil)
		}
	})
	if errors.Is(err, errPartialRange) {
		return nil // a shorter answer than asked: the blob serves the rest
	}
	if err != nil {
		return fmt.Errorf("head stream of blob %s: %w", h.b.digest, err)
	}
	return nil
}
