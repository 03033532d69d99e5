package layer

import (
	"context"
	"sync"
	"time"

	"github.com/poolfs/poolfs/internal/pace"
)

// Demand reads before the fill. Prefetch and FetchAll (the fill) fetch
// what nobody waits on yet, in blob order; a read a process waits on
// (ReadAt, a demand read) that finds its chunks neither cached nor
// arriving fetches them itself and shares the link with the fill. An
// optimized layer's prioritized files are more than a start needs at
// once: java's lib/modules is 44 MB compressed, of which `java -version`
// reads a few pages, and the CDS archive it maps next sits behind it.
// Measured on the bench (java, image store, cold), its demand reads waited
// about 0.5 s of its 1.25 s for chunks sharing the link with lib/modules.
// Two things keep the fill out of their way:
//
//   - The fill follows the reader: its next piece is the first one left
//     from the start of the file the latest demand read that missed was
//     reading (see pieceQueue); what it skipped comes afterwards.
//   - While a demand read waits for chunks, the fill sends one segment of
//     at most fillSegment bytes at a time, not one per worker (see
//     DemandGate): the demand read has most of the link, and the link
//     does not idle over its round trips. (Holding the fill back
//     altogether left the link idle between demand reads and was slower.)
//     A fill whose own chunks a demand read waits for goes on regardless:
//     holding it back would hold back the read.

// fillSegment is the most the fill (Prefetch, FetchAll) asks for in one
// range request: what a demand read arriving meanwhile shares the link
// with at worst, per fill fetch in flight. With prefetchParallel fetches
// in flight, segments of this size keep the link busy across the round
// trip between one and the next (at 200 Mbit/s a MiB takes 40 ms, the
// bench's round trip 20 ms).
const fillSegment = 1 << 20

// gateRecheck is how often a held fill segment looks again whether a
// demand read now waits for one of its chunks.
const gateRecheck = 2 * time.Millisecond

// DemandGate counts the demand reads waiting for chunks (fetched by them
// or by others) and the fill's segments in flight, and while a demand read
// waits lets one fill segment at a time through. Layers opened with the
// same gate (WithDemandGate: the pool gives its layers one, as they share
// a link) hold their fills back for each other's demand reads. Safe for
// concurrent use; the zero value is not: use NewDemandGate.
type DemandGate struct {
	mu      sync.Mutex
	demand  int           // demand reads waiting for chunks
	fills   int           // fill segments in flight
	changed chan struct{} // closed and replaced when either drops
}

// NewDemandGate returns a gate with no demand read waiting.
func NewDemandGate() *DemandGate { return &DemandGate{changed: make(chan struct{})} }

// WithDemandGate makes the layer's fill yield to the demand reads of every
// layer opened with g (default: a gate of its own).
func WithDemandGate(g *DemandGate) Option { return func(o *options) { o.gate = g } }

// enter and leave bracket a demand read's wait for chunks.
func (g *DemandGate) enter() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.demand++
}

func (g *DemandGate) leave() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.demand--
	g.wakeLocked()
}

func (g *DemandGate) wakeLocked() {
	close(g.changed)
	g.changed = make(chan struct{})
}

// acquire returns once a fill segment may be sent, counting it in flight
// (release ends it): when no demand read waits, or no other fill segment
// is in flight, or goOn says so, or ctx has ended (the read then fails on
// it). One segment at a time keeps the link busy over a demand read's
// round trips without taking more than a share of it.
func (g *DemandGate) acquire(ctx context.Context, goOn func() bool) {
	var tick *time.Timer
	defer func() {
		if tick != nil {
			tick.Stop()
		}
	}()
	for {
		g.mu.Lock()
		if g.demand == 0 || g.fills == 0 || ctx.Err() != nil {
			g.fills++
			g.mu.Unlock()
			return
		}
		changed := g.changed
		g.mu.Unlock()
		// goOn takes the layer's lock: not under the gate's.
		if goOn() {
			g.mu.Lock()
			g.fills++
			g.mu.Unlock()
			return
		}
		if tick == nil {
			tick = time.NewTimer(gateRecheck)
		} else {
			tick.Reset(gateRecheck)
		}
		select {
		case <-changed:
		case <-ctx.Done():
		case <-tick.C:
		}
	}
}

func (g *DemandGate) release() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.fills--
	g.wakeLocked()
}

// wanted returns where the last of chunks that a demand read waits for
// ends in the blob, as far as they are still in flight (0: none).
func (l *Layer) wanted(chunks []*chunk) int64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	var end int64
	for _, c := range chunks {
		if fl := l.inflight[c.key()]; fl != nil && fl.wanted.Load() {
			select {
			case <-fl.done:
			default:
				end = max(end, c.blobEnd)
			}
		}
	}
	return end
}

// readSegments reads buf from blob offset start for the fill, in segments
// of at most fillSegment bytes, each sent once the gate lets it, handing
// progress the bytes in order as they arrive. The next segment is asked
// for when the one before is about a round trip from done (see pace.NearTheEnd),
// so that segments cost the link no idle round trips while no demand read
// waits. If a demand read waits for a chunk of pending (the chunks this
// fetch leads), the segment goes at once and reaches to that chunk's end:
// segments would only add round trips to the read's wait.
func (l *Layer) readSegments(ctx context.Context, buf []byte, start int64, pending []*chunk, progress func(buf []byte, filled int64)) error {
	ctx, cancel := context.WithCancel(ctx)
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		ends  []int // each segment's end in buf, in order
		got   []int // bytes of each segment in
		fail  error
		wake  = make(chan struct{}, 1)
		alarm = func(ch chan struct{}) {
			select {
			case ch <- struct{}{}:
			default:
			}
		}
	)
	defer func() {
		cancel()  // a failed read ends the segments after it
		wg.Wait() // no segment writes to buf once this returns
	}()
	wg.Add(1)
	go func() { // the sender: one segment after another
		defer wg.Done()
		for from := 0; from < len(buf); {
			wantedEnd := l.wanted(pending)
			l.gate.acquire(ctx, func() bool {
				wantedEnd = l.wanted(pending)
				return wantedEnd > 0
			})
			if ctx.Err() != nil {
				l.gate.release()
				return
			}
			to := min(max(from+fillSegment, int(wantedEnd-start)), len(buf))
			mu.Lock()
			i := len(ends)
			ends, got = append(ends, to), append(got, 0)
			mu.Unlock()
			next, done := make(chan struct{}, 1), make(chan struct{})
			wg.Add(1)
			go func(from, to int) {
				defer wg.Done()
				defer close(done)
				err := readFullProgress(ctx, l.blob, buf[from:to], start+int64(from), pace.NearTheEnd(to-from, func(n int) {
					mu.Lock()
					got[i] = n
					mu.Unlock()
					alarm(wake)
				}, func() { alarm(next) }))
				l.gate.release()
				mu.Lock()
				if err != nil && fail == nil {
					fail = err
				}
				if err == nil {
					got[i] = to - from
				}
				mu.Unlock()
				alarm(wake)
			}(from, to)
			from = to
			select {
			case <-next:
			case <-done:
			case <-ctx.Done():
				return
			}
		}
	}()
	for {
		select {
		case <-wake:
		case <-ctx.Done():
			return ctx.Err()
		}
		mu.Lock()
		err := fail
		filled := 0
		for i, end := range ends {
			if got[i] < end-filled {
				filled += got[i]
				break
			}
			filled = end
		}
		mu.Unlock()
		if err != nil {
			return err
		}
		progress(buf, int64(filled))
		if filled == len(buf) {
			return nil
		}
	}
}
