package layer

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/poolfs/poolfs/cache"
)

// slowRead is how long a read must wait for its chunks to be logged (at
// debug level); cache hits take microseconds.
const slowRead = time.Millisecond

// ReadAt reads the content of regular-file entry e at off into p. It
// returns len(p) bytes unless the file ends first, in which case it returns
// what is left and io.EOF. Every byte returned was verified against the
// TOC's digests: a chunk with no digest in the TOC (and no file digest
// standing in for it) is never served and gives ErrVerify.
func (l *Layer) ReadAt(ctx context.Context, e *Entry, p []byte, off int64) (int, error) {
	if e == nil || e.Type != TypeReg {
		return 0, fmt.Errorf("reading %q: not a regular file", entryPath(e))
	}
	if off < 0 {
		return 0, fmt.Errorf("reading %q: negative offset %d", e.Path(), off)
	}
	if off >= e.Size {
		return 0, io.EOF
	}
	if len(p) == 0 {
		return 0, nil
	}
	end := min(off+int64(len(p)), e.Size)
	f := e.file()
	if f == nil {
		return 0, fmt.Errorf("reading %q: entry has no chunk index (not from this layer?)", e.Path())
	}

	chunks := f.chunks[f.find(off) : f.find(end-1)+1]
	for _, c := range chunks {
		if c.digest == "" {
			return 0, fmt.Errorf("reading %q at %d: the TOC has no digest for the chunk at %d: %w", e.Path(), off, c.fileOff, ErrVerify)
		}
		if c.size > maxChunkSize {
			return 0, fmt.Errorf("reading %q at %d: chunk at %d has %d bytes, more than the %d this reader holds in memory", e.Path(), off, c.fileOff, c.size, maxChunkSize)
		}
	}

	l.rec.note(chunks)
	l.noteRead(chunks)
	began := time.Now()
	if w := l.whole.Load(); w != nil {
		w.readSeen(began)
	}
	// Whether this read fetches the file's first chunk: if so, and the
	// file is an ELF executable, what the loader reads next is fetched
	// too (see maybeScanELF); a file read from the cache was scanned
	// when it was fetched, or was fetched by a scan.
	scan := l.elfDeps && chunks[0].fileOff == 0 && !l.cached(chunks[0])
	if scan {
		l.fetchProgram(e)
	}
	l.reading.Add(1)
	data, err := l.getChunks(ctx, e.Path(), chunks, fetchDemand)
	l.reading.Add(-1)
	if waited := time.Since(began); waited >= slowRead && l.log.Logger.IsLevelEnabled(logrus.DebugLevel) {
		// Which reads a starting container waits on, and for how long:
		// what an optimized image's prefetch order should fix.
		l.log.WithFields(logrus.Fields{"path": e.Path(), "offset": off, "bytes": end - off, "blob_offset": chunks[0].blobOff,
			"waited": waited.Round(time.Microsecond)}).
			Debug("read waited for chunks")
	}
	if err != nil {
		return 0, fmt.Errorf("reading %q at %d: %w", e.Path(), off, err)
	}
	if scan {
		l.maybeScanELF(e, data[chunks[0].key()])
	}
	for _, c := range chunks {
		b := data[c.key()]
		if int64(len(b)) != c.size {
			return 0, fmt.Errorf("reading %q at %d: chunk at %d came back with %d of %d bytes", e.Path(), off, c.fileOff, len(b), c.size)
		}
		// Copy the part of the chunk that overlaps [off, end).
		from := max(off, c.fileOff)
		to := min(end, c.fileOff+c.size)
		copy(p[from-off:to-off], b[from-c.fileOff:to-c.fileOff])
	}
	n := int(end - off)
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

func entryPath(e *Entry) string {
	if e == nil {
		return "<nil>"
	}
	return e.Path()
}

// getChunks returns the verified contents of chunks, keyed by digest, from
// the cache, from fetches other readers have in flight, or by fetching the
// rest itself, as mode says (a demand read also starts reading ahead, see
// readAhead, and holds the fill back while it waits, see DemandGate).
func (l *Layer) getChunks(ctx context.Context, path string, chunks []*chunk, mode fetchMode) (map[chunkKey][]byte, error) {
	got := make(map[chunkKey][]byte, len(chunks))
	for _, c := range chunks {
		if _, ok := got[c.key()]; ok {
			continue // identical content (e.g. runs of zeros) is needed once
		}
		if b, ok := l.cache.Get(string(c.digest)); ok && int64(len(b)) == c.size {
			got[c.key()] = b
		}
	}

	if mode == fetchDemand && len(got) < len(chunks) {
		l.gate.enter()
		defer l.gate.leave()
	}

	// A leader whose own context ends fails its flights with that error;
	// waiters whose context is still alive then try again themselves.
	for attempt := 0; ; attempt++ {
		var missing []*chunk
		for _, c := range chunks {
			if _, ok := got[c.key()]; !ok {
				missing = append(missing, c)
			}
		}
		if len(missing) == 0 {
			return got, nil
		}
		err := l.fetchOrWait(ctx, path, missing, got, mode)
		if err == nil {
			continue
		}
		if isContextErr(err) && ctx.Err() == nil && attempt < 3 {
			continue
		}
		return nil, err
	}
}

// fetchOrWait registers the missing chunks nobody is fetching yet, fetches
// them (coalesced), then waits for the ones others are fetching (a demand
// read marks those wanted: a fill fetching them stops yielding). Results go
// into got.
func (l *Layer) fetchOrWait(ctx context.Context, path string, missing []*chunk, got map[chunkKey][]byte, mode fetchMode) error {
	mine, waits := l.register(missing)
	if mode == fetchDemand {
		for _, fl := range waits {
			fl.wanted.Store(true)
		}
	}
	if len(mine) > 0 {
		if err := l.lead(ctx, path, mine, got, mode); err != nil {
			return err
		}
	}

	for d, fl := range waits {
		select {
		case <-fl.done:
		case <-ctx.Done():
			return ctx.Err()
		}
		if fl.err != nil {
			return fl.err
		}
		got[d] = fl.data
	}
	return nil
}

// register claims a flight for each of chunks nobody is fetching yet and
// returns them (mine: the caller must lead them) and the flights others
// have in flight for the rest (waits). A digest repeated within chunks
// counts once.
func (l *Layer) register(chunks []*chunk) (mine []*chunk, waits map[chunkKey]*flight) {
	isMine := map[chunkKey]bool{}
	waits = map[chunkKey]*flight{}
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, c := range chunks {
		if isMine[c.key()] || waits[c.key()] != nil {
			continue
		}
		if fl, ok := l.inflight[c.key()]; ok {
			waits[c.key()] = fl
			continue
		}
		l.inflight[c.key()] = &flight{done: make(chan struct{})}
		isMine[c.key()] = true
		mine = append(mine, c)
	}
	return mine, waits
}

// lead obtains the chunks whose flights this reader registered and lands
// every one of them, success or not, so no waiter is left hanging. Each
// lands as soon as it is verified: waiters on the first chunks of a long
// range go on while the rest is still arriving.
func (l *Layer) lead(ctx context.Context, path string, mine []*chunk, got map[chunkKey][]byte, mode fetchMode) (err error) {
	landed := make(map[chunkKey]bool, len(mine))
	// land wakes the chunk's waiters. A good flight stays registered until
	// retire (after the chunk is cached): a reader that misses the cache
	// in between finds it, already done, instead of fetching the chunk
	// again. A failed flight is retired as it lands, under one lock: a
	// waiter that tries again must fetch for itself, not find the failed
	// flight still registered and fail on it again.
	land := func(c *chunk, data []byte, ferr error) {
		landed[c.key()] = true
		l.mu.Lock()
		fl := l.inflight[c.key()]
		if ferr != nil {
			delete(l.inflight, c.key())
		}
		l.mu.Unlock()
		fl.data, fl.err = data, ferr
		close(fl.done)
		if ferr == nil {
			got[c.key()] = data
		}
	}
	retire := func(c *chunk) {
		l.mu.Lock()
		delete(l.inflight, c.key())
		l.mu.Unlock()
	}
	errs := map[chunkKey]error{}
	defer func() {
		for _, c := range mine {
			if landed[c.key()] {
				continue
			}
			ferr := errs[c.key()]
			if ferr == nil {
				ferr = fmt.Errorf("fetching chunk %s: %w", c.digest, errNoResult)
			}
			if err == nil {
				err = ferr
			}
			land(c, nil, ferr)
		}
	}()

	// Another reader may have finished a chunk between our cache miss and
	// registering the flight: look once more before going to the network.
	var todo []*chunk
	for _, c := range mine {
		if b, ok := l.cache.Get(string(c.digest)); ok && int64(len(b)) == c.size {
			land(c, b, nil)
			retire(c)
			continue
		}
		todo = append(todo, c)
	}
	if mode == fetchDemand && len(todo) > 0 {
		var end int64
		for _, c := range todo {
			end = max(end, c.blobEnd)
		}
		l.missAt.Store(l.fileStart(todo[0]))
		l.readAhead(end)
	}
	l.fetchChunks(ctx, path, todo, mode, func(c *chunk, data []byte) {
		land(c, data, nil)
		l.keep(string(c.digest), data)
		retire(c)
	}, errs)
	return nil
}

// keep caches a chunk this layer just decoded: nothing writes to it
// afterwards (readers only copy out of it), so a cache that can keep it
// without a copy does.
func (l *Layer) keep(key string, data []byte) {
	if k, ok := l.cache.(cache.Keeper); ok {
		k.Keep(key, data)
		return
	}
	l.cache.Add(key, data)
}

var errNoResult = errors.New("fetch ended without a result")

func isContextErr(err error) bool {
	return errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)
}
