package layer

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/poolfs/poolfs/profile"
)

// Startup profiles: the layer notes which chunks its readers need from
// their first read until reads pause (the startup window), in the order
// they first need them, so that the next start, here or on another node,
// can fetch exactly those chunks before they are asked for (Replay). Only
// ReadAt counts: prefetch, read-ahead, replay and whole-file copies fetch
// what nobody asked for yet, and a chunk found in the cache is as needed
// as one fetched.

const (
	// recordIdle closes the window when no read came for that long: a
	// start reads in bursts tens of milliseconds apart, and what comes
	// after a pause of seconds is the workload, not its start.
	recordIdle = 3 * time.Second
	// recordMaxTime and recordMaxBytes (compressed) close the window of a
	// start that never pauses.
	recordMaxTime  = 2 * time.Minute
	recordMaxBytes = 512 << 20

	// replayPiece is how many compressed bytes of the profile, in need
	// order, make one piece; within a piece the chunks go in blob order,
	// coalesced into runs, and ReplayParallel runs are in flight at once.
	replayPiece = 4 << 20
	// ReplayParallel is how many of Replay's requests are in flight.
	ReplayParallel = 8
	// replayGap: profile chunks closer than this in the blob are fetched
	// in one request together with the chunks between them, which are
	// cached too: on a link with tens of milliseconds of round trip a
	// request costs more than this many bytes.
	replayGap = 64 << 10
)

// recorder is a layer's startup window and what it saw.
type recorder struct {
	idle   time.Duration // recordIdle; shorter in tests
	closed atomic.Bool   // fast path for reads after the window
	mu     sync.Mutex
	start  time.Time
	timer  *time.Timer
	seen   map[*chunk]bool
	order  []*chunk
	bytes  int64
	done   chan struct{}

	replayed map[*chunk]bool // chunks of the replayed profile, for Used
	used     int
}

func newRecorder() *recorder {
	return &recorder{idle: recordIdle, seen: map[*chunk]bool{}, done: make(chan struct{})}
}

// note records that a reader needs chunks.
func (r *recorder) note(chunks []*chunk) {
	if r.closed.Load() {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed.Load() {
		return
	}
	now := time.Now()
	if r.timer == nil {
		r.start = now
		r.timer = time.AfterFunc(r.idle, r.close)
	} else {
		r.timer.Reset(r.idle)
	}
	for _, c := range chunks {
		if r.seen[c] {
			continue
		}
		r.seen[c] = true
		if r.replayed[c] {
			r.used++
		}
		r.order = append(r.order, c)
		r.bytes += c.blobEnd - c.blobOff
	}
	if now.Sub(r.start) >= recordMaxTime || r.bytes >= recordMaxBytes || len(r.order) >= profile.MaxChunks {
		r.closeLocked()
	}
}

func (r *recorder) close() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.closeLocked()
}

func (r *recorder) closeLocked() {
	if r.closed.Swap(true) {
		return
	}
	if r.timer != nil {
		r.timer.Stop()
	}
	close(r.done)
}

// EndRecording ends the layer's startup window now (a daemon stopping
// keeps what it recorded so far).
func (l *Layer) EndRecording() { l.rec.close() }

// RecordDone is closed when the layer's startup window has ended (see
// Recorded).
func (l *Layer) RecordDone() <-chan struct{} { return l.rec.done }

// Recorded returns the chunks readers needed in the layer's startup
// window so far (all of it once RecordDone is closed), in first-need
// order, as a profile without its Blob (the layer does not know its blob
// digest); nil if no read came yet.
func (l *Layer) Recorded() *profile.Profile {
	r := l.rec
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.order) == 0 {
		return nil
	}
	p := &profile.Profile{TOC: l.tocDigest, Chunks: make([]profile.Chunk, 0, min(len(r.order), profile.MaxChunks))}
	for _, c := range r.order[:min(len(r.order), profile.MaxChunks)] {
		p.Chunks = append(p.Chunks, profile.Chunk{Offset: c.blobOff, Inner: c.inner, End: c.blobEnd, Digest: c.digest})
	}
	return p
}

// ProfileUsed is how many chunks of the replayed profiles readers needed
// in the startup window.
func (l *Layer) ProfileUsed() int {
	l.rec.mu.Lock()
	defer l.rec.mu.Unlock()
	return l.rec.used
}

// ErrProfileMismatch says a profile does not describe this layer: another
// TOC, or a chunk the TOC does not have.
var ErrProfileMismatch = errors.New("profile does not match the layer")

// ReplayStats says what a Replay did.
type ReplayStats struct {
	Chunks  int   // chunks the profile names
	Fetched int   // of them, not cached when the replay started
	Bytes   int64 // compressed bytes fetched, chunks between close profile chunks included
	// Requests is how many range requests the replay made at most (a run
	// that reaches into the bytes Open fetched with the TOC costs less).
	Requests int
}

// Replay fetches the chunks p names, in its order of first need, into the
// cache: pieces of about replayPiece bytes in need order, each fetched in
// blob order with chunks less than replayGap apart coalesced into one
// request, ReplayParallel requests at a time. Chunks cached or in flight are
// not fetched again, and readers that need a chunk Replay is fetching
// wait for it. Before fetching anything it checks p against the layer
// (the TOC digest, and every chunk's offsets and digest against the TOC):
// a profile naming anything the layer lacks is refused whole with
// ErrProfileMismatch, or profile.ErrInvalid if malformed. The profile's
// Blob is the caller's to check.
func (l *Layer) Replay(ctx context.Context, p *profile.Profile) (ReplayStats, error) {
	var st ReplayStats
	if err := p.Validate(); err != nil {
		return st, err
	}
	if p.TOC != l.tocDigest {
		return st, fmt.Errorf("%w: profile is for TOC %s, the layer's is %s", ErrProfileMismatch, p.TOC, l.tocDigest)
	}
	order, _ := l.chunksByOffset()
	chunks := make([]*chunk, 0, len(p.Chunks))
	for i, pc := range p.Chunks {
		j := sort.Search(len(order), func(j int) bool {
			c := order[j]
			return c.blobOff > pc.Offset || (c.blobOff == pc.Offset && c.inner >= pc.Inner)
		})
		if j == len(order) {
			return st, fmt.Errorf("%w: chunk %d at %d+%d is not in the TOC", ErrProfileMismatch, i, pc.Offset, pc.Inner)
		}
		c := order[j]
		if c.blobOff != pc.Offset || c.inner != pc.Inner || c.blobEnd != pc.End || c.digest != pc.Digest {
			return st, fmt.Errorf("%w: chunk %d at %d+%d (%s) is not in the TOC", ErrProfileMismatch, i, pc.Offset, pc.Inner, pc.Digest)
		}
		if c.size > maxChunkSize {
			return st, fmt.Errorf("%w: chunk %d at %d has %d bytes", ErrProfileMismatch, i, pc.Offset, c.size)
		}
		chunks = append(chunks, c)
	}
	st.Chunks = len(chunks)
	l.replayed.Store(true)

	l.rec.mu.Lock()
	if l.rec.replayed == nil {
		l.rec.replayed = make(map[*chunk]bool, len(chunks))
	}
	for _, c := range chunks {
		if !l.rec.replayed[c] {
			l.rec.replayed[c] = true
			if l.rec.seen[c] {
				l.rec.used++ // needed before the profile came
			}
		}
	}
	l.rec.mu.Unlock()

	// Pieces in need order; chunks already cached are left out. Each
	// piece becomes its runs (one range request each), all in flight
	// ReplayParallel at a time: a start's chunks are scattered over the
	// blob, and one request after another would pay a round trip each.
	// ReplayRuns plans the same requests from the profile alone.
	var todo []*chunk
	for _, c := range chunks {
		if !l.cached(c) {
			todo = append(todo, c)
		}
	}
	st.Fetched = len(todo)
	var work [][]*chunk
	for _, piece := range needPieces(todo, func(c *chunk) int64 { return c.blobEnd - c.blobOff }) {
		for _, r := range l.coalesce(l.bridge(piece, order)) {
			work = append(work, r.chunks)
			st.Bytes += r.end - r.start
			st.Requests++
		}
	}
	return st, l.fetchPieces(ctx, "(profile)", work, ReplayParallel, false, fetchOther)
}

// needPieces cuts items, in need order, into pieces of about replayPiece
// bytes.
func needPieces[T any](items []T, size func(T) int64) [][]T {
	var pieces [][]T
	var cur []T
	var n int64
	for _, it := range items {
		cur = append(cur, it)
		if n += size(it); n >= replayPiece {
			pieces = append(pieces, cur)
			cur, n = nil, 0
		}
	}
	if len(cur) > 0 {
		pieces = append(pieces, cur)
	}
	return pieces
}

// ReplayRuns is the byte ranges Replay requests for chunks (in need order,
// none cached), in the order it requests them: a caller that has a
// profile before the layer's TOC can fetch them early (the replay's runs
// then lie inside them).
func ReplayRuns(chunks []profile.Chunk) [][2]int64 {
	var runs [][2]int64
	for _, piece := range needPieces(chunks, func(c profile.Chunk) int64 { return c.End - c.Offset }) {
		piece = append([]profile.Chunk(nil), piece...)
		sort.Slice(piece, func(i, j int) bool {
			a, b := piece[i], piece[j]
			return a.Offset < b.Offset || (a.Offset == b.Offset && a.Inner < b.Inner)
		})
		first := len(runs)
		for _, c := range piece {
			if n := len(runs); n > first && c.Offset <= runs[n-1][1]+replayGap {
				runs[n-1][1] = max(runs[n-1][1], c.End)
				continue
			}
			runs = append(runs, [2]int64{c.Offset, c.End})
		}
	}
	return runs
}

// bridge sorts piece by blob offset and adds the uncached chunks lying in
// holes of less than replayGap between its chunks, so that coalesce makes
// one request of them: in an eStargz blob the bytes between two chunks are
// other chunks (and the tar headers counted in them).
func (l *Layer) bridge(piece []*chunk, order []*chunk) []*chunk {
	sortByBlobOffset(piece)
	out := make([]*chunk, 0, len(piece))
	in := make(map[*chunk]bool, len(piece))
	for _, c := range piece {
		in[c] = true
	}
	for i, c := range piece {
		if i > 0 {
			prev := piece[i-1]
			if gap := c.blobOff - prev.blobEnd; gap > 0 && gap <= replayGap {
				j := sort.Search(len(order), func(j int) bool { return order[j].blobOff >= prev.blobEnd })
				for ; j < len(order) && order[j].blobOff < c.blobOff; j++ {
					if f := order[j]; !in[f] && f.servable() && !l.cached(f) {
						in[f] = true
						out = append(out, f)
					}
				}
			}
		}
		out = append(out, c)
	}
	return out
}
