package layer

import (
	"context"
	"os"
	"sync"
	"time"
)

// Demand reads before the fill. Prefetch and FetchAll fetch what nobody
// waits on yet; a read a process waits on (ReadAt) and that finds its
// chunks neither cached nor arriving shares the link with them, and an
// optimized layer's prioritized files are far more than a start needs at
// once (java's lib/modules is 44 MB compressed, of which `java -version`
// reads a few pages; the CDS archive it maps right after sits behind it).
// So the fill fetches in segments of fillSegment bytes, and sends no
// segment while a demand read waits (see DemandGate): the segments in
// flight end within a few tens of milliseconds, and from then on the link
// is the demand read's. A fill whose own chunks a demand read waits for
// (it claimed them first) goes on regardless: holding it back would only
// hold back the read.

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

var expNoGate = os.Getenv("POOLFS_EXP_NOGATE") != "" // EXPERIMENT, remove

// DemandGate counts the demand reads waiting for chunks (fetched by them
// or by others), and holds the fill's segments back while there are any.
// Layers opened with the same gate (WithDemandGate: the pool gives its
// layers one, as they share a link) hold their fills back for each
// other's demand reads. Safe for concurrent use; the zero value is not:
// use NewDemandGate.
type DemandGate struct {
	mu   sync.Mutex
	n     int           // demand reads waiting for chunks
	idle  chan struct{} // closed when n drops to 0
	fills int           // fill segments in flight
}

// NewDemandGate returns a gate with no demand read waiting.
func NewDemandGate() *DemandGate {
	g := &DemandGate{idle: make(chan struct{})}
	close(g.idle)
	return g
}

// WithDemandGate makes the layer's fill yield to the demand reads of every
// layer opened with g (default: a gate of its own).
func WithDemandGate(g *DemandGate) Option { return func(o *options) { o.gate = g } }

func (g *DemandGate) enter() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.n == 0 {
		g.idle = make(chan struct{})
	}
	g.n++
}

func (g *DemandGate) leave() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.n--
	if g.n == 0 {
		close(g.idle)
	}
}

// Waiting reports how many demand reads wait for chunks.
func (g *DemandGate) Waiting() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.n
}

// acquire returns, counting a fill segment in flight (release ends it),
// once no demand read waits, or no other fill segment is in flight, or
// goOn says to go on anyway, or ctx ends. One segment at a time keeps the
// link busy across a demand read's round trips without taking more than
// half of it.
func (g *DemandGate) acquire(ctx context.Context, goOn func() bool) {
	var tick *time.Timer
	for {
		g.mu.Lock()
		n, idle := g.n, g.idle
		if n == 0 || g.fills == 0 || ctx.Err() != nil {
			g.fills++
			g.mu.Unlock()
			break
		}
		g.mu.Unlock()
		if goOn() {
			g.mu.Lock()
			g.fills++
			g.mu.Unlock()
			break
		}
		if tick == nil {
			tick = time.NewTimer(gateRecheck)
		} else {
			tick.Reset(gateRecheck)
		}
		select {
		case <-idle:
		case <-ctx.Done():
		case <-tick.C:
		}
	}
	if tick != nil {
		tick.Stop()
	}
}

func (g *DemandGate) release() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.fills--
}

// wanted reports whether a demand read waits for one of chunks, as far as
// they are still in flight.
func (l *Layer) wanted(chunks []*chunk) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, c := range chunks {
		if fl := l.inflight[c.key()]; fl != nil && fl.wanted.Load() {
			select {
			case <-fl.done:
			default:
				return true
			}
		}
	}
	return false
}

// readSegments reads buf from blob offset start for the fill: in segments
// of at most fillSegment bytes, each sent once no demand read waits (or
// one waits for a chunk of pending, the chunks this fetch leads), handing
// progress the bytes in as they arrive.
func (l *Layer) readSegments(ctx context.Context, buf []byte, start int64, pending []*chunk, progress func(buf []byte, filled int64)) error {
	for from := 0; from < len(buf); from += fillSegment {
		l.gate.acquire(ctx, func() bool { return l.wanted(pending) })
		to := min(from+fillSegment, len(buf))
		err := readFullProgress(ctx, l.blob, buf[from:to], start+int64(from), func(n int) { progress(buf, int64(from+n)) })
		l.gate.release()
		if err != nil {
			return err
		}
		progress(buf, int64(to)) // a blob that reports no progress
	}
	return nil
}
