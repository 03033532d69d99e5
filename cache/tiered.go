package cache

import (
	"sync"
	"time"
)

// Tiered puts a fast, small cache in front of a slow, large one.
type Tiered struct {
	mem, disk Cache
	behind    *writeBehind // nil: disk writes happen inside Add
}

// NewTiered returns a Cache that reads mem first and then disk, copying disk
// hits into mem so that a hot chunk is read from disk (and verified) once,
// and that writes every Add to both before it returns.
func NewTiered(mem, disk Cache) *Tiered {
	return &Tiered{mem: mem, disk: disk}
}

// WriteBehind says how a Tiered cache defers its disk writes.
type WriteBehind struct {
	// Settle: a write waits until no Add came for this long, so a burst
	// of chunks (a container starting) is not slowed by writing them out
	// on the same CPUs.
	Settle time.Duration
	// MaxPending bounds the bytes waiting to be written; an Add beyond it
	// writes its entry at once, in the caller.
	MaxPending int64
}

// NewTieredWriteBehind is NewTiered with disk writes done in the
// background (see WriteBehind): Add returns once the entry is in memory,
// and Get and Has see entries still waiting to be written. Close writes
// what is pending.
func NewTieredWriteBehind(mem, disk Cache, wb WriteBehind) *Tiered {
	t := NewTiered(mem, disk)
	t.behind = &writeBehind{o: wb, disk: disk, pending: map[string][]byte{}, wake: make(chan struct{}, 1), done: make(chan struct{})}
	t.behind.cond = sync.NewCond(&t.behind.mu)
	go t.behind.loop()
	return t
}

func (t *Tiered) Get(key string) ([]byte, bool) {
	if b, ok := t.mem.Get(key); ok {
		return b, true
	}
	if t.behind != nil {
		if b, ok := t.behind.get(key); ok {
			return b, true
		}
	}
	b, ok := t.disk.Get(key)
	if !ok {
		return nil, false
	}
	t.mem.Add(key, b)
	return b, true
}

// Add stores a copy of b in both tiers.
func (t *Tiered) Add(key string, b []byte) {
	if t.behind == nil {
		t.mem.Add(key, b)
		t.disk.Add(key, b)
		return
	}
	// The pending entry must not change if the caller reuses b.
	t.Keep(key, append(make([]byte, 0, len(b)), b...))
}

// Keep is Add taking b itself (see Keeper): the memory tier keeps it
// without a copy where it can, and so does the write-behind queue.
func (t *Tiered) Keep(key string, b []byte) {
	if k, ok := t.mem.(Keeper); ok {
		k.Keep(key, b)
	} else {
		t.mem.Add(key, b)
	}
	if t.behind == nil || !t.behind.put(key, b) {
		t.disk.Add(key, b)
	}
}

// Has reports whether either tier holds key (or it is waiting to be
// written); a tier that cannot peek counts as not holding it.
func (t *Tiered) Has(key string) bool {
	if t.behind != nil {
		if _, ok := t.behind.get(key); ok {
			return true
		}
	}
	for _, c := range []Cache{t.mem, t.disk} {
		if p, ok := c.(Peeker); ok && p.Has(key) {
			return true
		}
	}
	return false
}

// PendingBytes is what waits in the write-behind queue: bytes that a
// process killed now would have to fetch again.
func (t *Tiered) PendingBytes() int64 {
	if t.behind == nil {
		return 0
	}
	t.behind.mu.Lock()
	defer t.behind.mu.Unlock()
	return t.behind.bytes
}

// Flush returns once every entry added before it is on disk.
func (t *Tiered) Flush() {
	if t.behind != nil {
		t.behind.flush()
	}
}

// Close writes what is pending and stops the background writer; later
// Adds write to disk at once.
func (t *Tiered) Close() {
	if t.behind != nil {
		t.behind.close()
	}
}

// writeBehind is the queue of entries waiting for the disk.
type writeBehind struct {
	o    WriteBehind
	disk Cache

	mu       sync.Mutex
	cond     *sync.Cond // signalled on put, on each write done, and on flush/close
	pending  map[string][]byte
	queue    []string
	bytes    int64
	lastPut  time.Time
	flushing int           // flush calls waiting: write without settling
	closed   bool          // no more queueing
	wake     chan struct{} // cuts a settling wait short (flush, close)
	done     chan struct{}
}

// put queues b for the disk; false means the caller writes it itself
// (queue full or closed).
func (w *writeBehind) put(key string, b []byte) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed || w.bytes+int64(len(b)) > w.o.MaxPending {
		return false
	}
	w.lastPut = time.Now()
	if _, ok := w.pending[key]; ok {
		// Digest keys: the same content is already on its way.
		return true
	}
	w.pending[key] = b
	w.queue = append(w.queue, key)
	w.bytes += int64(len(b))
	w.cond.Broadcast()
	return true
}

func (w *writeBehind) get(key string) ([]byte, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	b, ok := w.pending[key]
	return b, ok
}

func (w *writeBehind) loop() {
	defer close(w.done)
	w.mu.Lock()
	defer w.mu.Unlock()
	for {
		for len(w.queue) == 0 && !w.closed {
			w.cond.Wait()
		}
		if len(w.queue) == 0 {
			return // closed and drained
		}
		if w.flushing == 0 && !w.closed {
			if wait := time.Until(w.lastPut.Add(w.o.Settle)); wait > 0 {
				w.mu.Unlock()
				timer := time.NewTimer(min(wait, w.o.Settle))
				select {
				case <-timer.C:
				case <-w.wake:
					timer.Stop()
				}
				w.mu.Lock()
				continue
			}
		}
		key := w.queue[0]
		w.queue = w.queue[1:]
		b := w.pending[key]
		w.mu.Unlock()
		w.disk.Add(key, b)
		w.mu.Lock()
		delete(w.pending, key)
		w.bytes -= int64(len(b))
		w.cond.Broadcast()
	}
}

func (w *writeBehind) flush() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.flushing++
	w.cond.Broadcast()
	w.nudge()
	for len(w.pending) > 0 {
		w.cond.Wait()
	}
	w.flushing--
}

func (w *writeBehind) close() {
	w.mu.Lock()
	w.closed = true
	w.cond.Broadcast()
	w.nudge()
	w.mu.Unlock()
	<-w.done
}

func (w *writeBehind) nudge() {
	select {
	case w.wake <- struct{}{}:
	default:
	}
}
