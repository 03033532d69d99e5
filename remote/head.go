package remote

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync"
	"time"

	digest "github.com/opencontainers/go-digest"
)

// HeadStreamer is a Blob that can start streaming its first bytes before
// anyone reads them (the registry blobs of Resolver.Blob are).
type HeadStreamer interface {
	StreamHead(n int64) *Head
}

// Head is a Blob whose first bytes are streamed before anyone reads them:
// one range request for bytes [0, n), started by Start (or TailRead, or the
// first read inside it), and reads inside what the stream covers are served
// from it as its bytes arrive, everything else by the blob's own range
// requests.
//
// It exists for the time between a layer's TOC arriving and its prefetch
// starting: an eStargz builder puts the files a workload needs first in the
// blob, but where they end is only known once the TOC is decoded, and
// waiting for that leaves the link idle for the decoding and one more round
// trip. Started while the TOC is still on the wire it would only share the
// link with it and delay the layer's lookup; so it starts itself when the
// TOC read is about a round trip from done (see startNearTheEnd), or when
// layer.Open says through TailRead that the TOC's bytes are in. The caller
// shortens the stream with Limit as soon as it knows how much of the head
// it wants, and ends it with Release.
//
// Each streamed byte is handed out once: a range asked for again (a chunk
// that failed verification and is retried, say) goes to the registry, so a
// byte spoiled in transit is never served twice. A stream that fails or
// stalls for the fetch timeout ends; what it did not deliver is read from
// the blob.
type Head struct {
	b      *blob
	cancel context.CancelCauseFunc
	done   chan struct{} // closed when the stream goroutine has returned

	mu       sync.Mutex
	started  bool
	ctx      context.Context // the stream's, until it is started
	buf      []byte          // [0, avail) are the blob's first bytes; nil once released
	avail    int64           // bytes received
	end      int64           // the stream stops here (Limit lowers it)
	ended    bool            // no more bytes will arrive
	more     chan struct{}   // closed and replaced whenever avail grows or ended is set
	served   []span          // ranges already handed out
	released bool
}

type span struct{ start, end int64 }

var _ Blob = (*Head)(nil)

// StreamHead returns a Head for bytes [0, n) of the blob (n is clipped to
// its size), not yet streaming. Once started, the stream is detached from
// any caller and runs until it has them all, Limit or Release stops it, or
// it fails.
func (b *blob) StreamHead(n int64) *Head {
	n = max(0, min(n, b.size))
	ctx, cancel := context.WithCancelCause(context.Background())
	return &Head{b: b, ctx: ctx, cancel: cancel, done: make(chan struct{}), end: n, more: make(chan struct{})}
}

// Start starts the stream, if it has not started and is not released or
// limited to nothing.
func (h *Head) Start() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.startLocked()
}

func (h *Head) startLocked() {
	if h.started {
		return
	}
	h.started = true
	if h.released || h.end == 0 {
		h.finish(nil)
		close(h.done)
		return
	}
	h.buf = make([]byte, h.end)
	go h.run(h.ctx)
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

// Release stops the stream and drops its buffer: every read from now on
// goes to the blob. Reads already served from the stream finish from it.
// A nil Head may be released.
func (h *Head) Release() {
	if h == nil {
		return
	}
	h.mu.Lock()
	h.released = true
	h.buf = nil
	h.end = min(h.end, h.avail)
	if !h.started {
		h.started = true
		h.finish(nil)
		close(h.done)
	}
	h.mu.Unlock()
	h.cancel(nil)
}

// Wait returns once the stream has stopped and its bytes are counted.
func (h *Head) Wait() { <-h.done }

// Prefix waits until the first n bytes have arrived, or the stream has
// ended, and returns a copy of what is there (possibly fewer bytes; nil
// once released or if ctx ends first).
func (h *Head) Prefix(ctx context.Context, n int) []byte {
	for {
		h.mu.Lock()
		if h.released {
			h.mu.Unlock()
			return nil
		}
		if h.avail >= int64(n) || h.ended {
			out := append([]byte(nil), h.buf[:min(int64(n), h.avail)]...)
			h.mu.Unlock()
			return out
		}
		more := h.more
		h.mu.Unlock()
		select {
		case <-more:
		case <-ctx.Done():
			return nil
		}
	}
}

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
	stop, buf := h.claim(off, int64(len(p)))
	if stop <= off {
		return h.b.ReadAtProgress(ctx, p, off, h.startNearTheEnd(len(p), progress))
	}
	if progress == nil {
		progress = func(int) {}
	}
	filled := 0
	for off+int64(filled) < stop {
		h.mu.Lock()
		avail, ended, more := h.avail, h.ended, h.more
		h.mu.Unlock()
		if to := min(avail, stop); to > off+int64(filled) {
			filled += copy(p[filled:], buf[off+int64(filled):to])
			progress(filled)
			continue
		}
		if ended {
			break // the stream stopped short; the blob serves the rest
		}
		select {
		case <-more:
		case <-ctx.Done():
			return filled, ctx.Err()
		}
	}
	if filled == len(p) {
		return filled, nil
	}
	n, err := h.b.ReadAtProgress(ctx, p[filled:], off+int64(filled), func(m int) { progress(filled + m) })
	return filled + n, err
}

// startNearTheEnd wraps the progress of a read the stream does not serve
// (the TOC, while the stream waits for it) so that the stream starts once
// that read is about one round trip from done: its request then reaches the
// registry as the read's last bytes leave, and its first bytes follow them
// with no idle round trip between. The round trip is taken to be the time
// to the read's first byte, the rate what came after those first bytes; a
// guess too early only shares the link for part of a round trip. TailRead
// still starts the stream if this never does.
func (h *Head) startNearTheEnd(n int, progress func(int)) func(int) {
	h.mu.Lock()
	started := h.started
	h.mu.Unlock()
	if started || n < minPipelined {
		return progress
	}
	asked := time.Now()
	var first time.Time
	var atFirst int
	return func(got int) {
		if progress != nil {
			progress(got)
		}
		now := time.Now()
		if first.IsZero() {
			// The first bytes come in a burst (what was buffered on
			// the way): the rate is measured from here on.
			first, atFirst = now, got
			return
		}
		rtt, since := first.Sub(asked), now.Sub(first)
		if since < rtt/4 || got <= atFirst {
			return
		}
		// The remaining bytes at the rate seen since the first ones take
		// no longer than a round trip: ask now.
		if time.Duration(float64(n-got)/float64(got-atFirst)*float64(since)) <= rtt {
			h.Start()
		}
	}
}

// minPipelined is the smallest read worth timing the stream's start on:
// a smaller one is over within a round trip anyway.
const minPipelined = 64 << 10

// claim decides which part of a read the stream serves: [off, stop), with
// stop <= off meaning none. That part is marked served, and the stream
// started if it was not. buf is the stream's buffer, which the caller keeps
// even if the Head is released meanwhile.
func (h *Head) claim(off, n int64) (stop int64, buf []byte) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.released || off < 0 || off >= h.end {
		return 0, nil
	}
	stop = min(off+n, h.end)
	for _, s := range h.served {
		if s.start < stop && off < s.end {
			return 0, nil
		}
	}
	h.served = append(h.served, span{off, stop})
	h.startLocked() // someone wants these bytes now
	return stop, h.buf
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

// run is the stream: one GET of bytes [0, end) from the endpoint that
// served the blob last, no retries (a failure only means the reads it would
// have served go to the blob, which retries).
func (h *Head) run(ctx context.Context) {
	defer close(h.done)
	defer h.cancel(nil)
	ep := h.b.eps[int(h.b.pref.Load())%len(h.b.eps)]
	began := time.Now()
	err := h.stream(ctx, ep)
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

func (h *Head) stream(ctx context.Context, ep blobEndpoint) error {
	e, err := h.b.r.authFor(ctx, ep.repo)
	if err != nil {
		return err
	}
	h.mu.Lock()
	end := h.end
	h.mu.Unlock()
	if end == 0 {
		return nil // limited to nothing before it began
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, ep.url, nil)
	if err != nil {
		return err
	}
	req.Header.Set("Range", fmt.Sprintf("bytes=0-%d", end-1))
	// A stall ends the stream like a failure; the deadline moves with
	// every read that brings bytes.
	stall := time.AfterFunc(h.b.r.s.fetchTO, func() { h.cancel(errHeadStalled) })
	defer stall.Stop()
	resp, err := e.client.Do(req)
	if err != nil {
		return fmt.Errorf("head stream of blob %s: %w", h.b.digest, err)
	}
	defer resp.Body.Close()
	switch resp.StatusCode {
	case http.StatusPartialContent:
		if first, _, ok := parseContentRange(resp.Header.Get("Content-Range")); !ok || first != 0 {
			return fmt.Errorf("head stream of blob %s: Content-Range %q does not start at 0", h.b.digest, resp.Header.Get("Content-Range"))
		}
	case http.StatusOK:
		// Range ignored: the whole blob from byte 0 serves as well.
		if resp.ContentLength >= 0 && resp.ContentLength != h.b.size {
			return fmt.Errorf("head stream of blob %s: server ignored Range and sent %d bytes, not the %d-byte blob", h.b.digest, resp.ContentLength, h.b.size)
		}
	default:
		return fmt.Errorf("head stream of blob %s: %w", h.b.digest, statusError(resp))
	}
	var got int64
	for {
		h.mu.Lock()
		if h.released || h.avail >= h.end {
			h.mu.Unlock()
			return nil
		}
		dst := h.buf[h.avail:h.end]
		h.mu.Unlock()
		m, rerr := resp.Body.Read(dst)
		if m > 0 {
			stall.Reset(h.b.r.s.fetchTO)
			h.b.r.stats.blobBytes.Add(int64(m))
			got += int64(m)
			h.mu.Lock()
			h.avail = got
			close(h.more)
			h.more = make(chan struct{})
			h.mu.Unlock()
		}
		if rerr == io.EOF {
			return nil // a body shorter than asked: the blob serves the rest
		}
		if rerr != nil {
			return fmt.Errorf("head stream of blob %s after %d bytes: %w", h.b.digest, got, rerr)
		}
	}
}
