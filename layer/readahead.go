package layer

import (
	"context"
	"sort"
	"time"
)

// A read that has to go to the registry is often followed by reads of the
// files stored right after it in the layer: a package's modules, a library
// and the data beside it. Whoever built the layer put them next to each
// other, and on a link with a round trip of tens of milliseconds a read
// that finds its chunks already fetched, or on their way, saves that
// round trip. So such a read also fetches, in the background and in one
// range request, the chunks that follow its own in the blob, up to the
// layer's read-ahead size. Those chunks go through the same singleflight
// as reads: none is fetched twice, and a reader that needs one waits for
// it as it arrives.

// readaheadTimeout bounds one background read-ahead.
const readaheadTimeout = 30 * time.Second

// WithReadahead sets how many compressed bytes past the end of a read that
// had to fetch are fetched too (default 0: none).
func WithReadahead(bytes int64) Option { return func(o *options) { o.readahead = max(bytes, 0) } }

// WithReadaheadSameDir makes read-ahead, in a layer with no prioritized
// files, take at most n compressed bytes (a quarter of that until it has
// fetched something read, see sameDirStart) and stop at the first chunk of a
// file in another directory than the read's (n 0: as in other layers).
// Without a builder's order, what a program reads next is far more often a
// file of the same directory (a package's modules) than whatever follows
// in the blob. In an optimized layer the reads that miss are mostly parts
// of big files past the prioritized ones, which did better with the plain
// blob read-ahead (java -version, measured side by side).
func WithReadaheadSameDir(n int64) Option { return func(o *options) { o.readaheadDir = max(n, 0) } }

// sameDirAhead reports whether read-ahead keeps to the read's directory
// in this layer (see WithReadaheadSameDir).
func (l *Layer) sameDirAhead() bool { return l.readaheadDir > 0 && len(l.tree.prioritized) == 0 }

// Same-directory read-ahead starts with a quarter of its size, and takes
// all of it once a read has asked for a chunk the latest read-ahead
// fetched. A start that reads a few files of many directories wastes
// little then: python's print(42) reads one to three files each of the
// locale, gconv, zoneinfo, encodings and python's own directory, and 5 of
// its 6 read-aheads fetched nothing that was read (0.37 MB of the 1.4 MB
// it fetched beyond what it needed). One that reads many modules of the
// same packages (the import workload) soon has a hit and reads ahead as
// before: a fixed 32 KiB cost it 20% more time, growing by doubling 10%.

// sameDirStart is the first window of same-directory read-ahead of size n.
func sameDirStart(n int64) int64 { return max(n/4, min(n, 4<<10)) }

// readAheadSize is how many compressed bytes the next read-ahead takes.
func (l *Layer) readAheadSize() int64 {
	if l.readahead <= 0 || !l.sameDirAhead() {
		return l.readahead
	}
	l.sameDir.mu.Lock()
	defer l.sameDir.mu.Unlock()
	return l.sameDir.window
}

// noteReadAhead records the chunks a same-directory read-ahead fetches,
// while its window is still the first one.
func (l *Layer) noteReadAhead(mine []*chunk) {
	if !l.sameDirAhead() {
		return
	}
	l.sameDir.mu.Lock()
	defer l.sameDir.mu.Unlock()
	if l.sameDir.window >= l.readaheadDir {
		l.sameDir.last = nil
		return
	}
	l.sameDir.last = make(map[chunkKey]bool, len(mine))
	for _, c := range mine {
		l.sameDir.last[c.key()] = true
	}
}

// noteRead gives same-directory read-ahead its whole size once a read
// asks for chunks the latest read-ahead fetched.
func (l *Layer) noteRead(chunks []*chunk) {
	if !l.sameDirAhead() {
		return
	}
	l.sameDir.mu.Lock()
	defer l.sameDir.mu.Unlock()
	if len(l.sameDir.last) == 0 {
		return
	}
	for _, c := range chunks {
		if l.sameDir.last[c.key()] {
			l.sameDir.window = l.readaheadDir
			l.sameDir.last = nil
			return
		}
	}
}

// readAhead starts fetching the chunks that follow blob offset from, unless
// read-ahead is off or one is already running for this layer (reads that
// come while it runs are mostly ones it serves). The chunks are claimed
// before it returns, so a read that comes next waits for them rather than
// fetching them itself; the fetch runs in the background.
func (l *Layer) readAhead(from int64) {
	n := l.readAheadSize()
	if n <= 0 || !l.readingAhead.CompareAndSwap(false, true) {
		return
	}
	mine := l.claim(l.chunksAfter(from, n))
	if len(mine) == 0 {
		l.readingAhead.Store(false)
		return
	}
	l.noteReadAhead(mine)
	go func() {
		defer l.readingAhead.Store(false)
		ctx, cancel := context.WithTimeout(context.Background(), readaheadTimeout)
		defer cancel()
		// lead lands every flight it was given, success or not.
		_ = l.lead(ctx, "(read-ahead)", mine, make(map[chunkKey][]byte, len(mine)), fetchOther)
	}()
}

// chunksAfter returns the chunks that start at or after blob offset from,
// in blob order, as far as they end within n compressed bytes of it: a
// chunk (gzip member) that would cross that line, however big, is left for
// a read to ask for. Chunks a read would refuse are left out too. Where
// read-ahead keeps to the read's directory (sameDirAhead), it also stops
// at the first chunk of a file in another directory than the file whose
// chunk ends at from.
func (l *Layer) chunksAfter(from, n int64) []*chunk {
	order, dirs := l.chunksByOffset()
	i := sort.Search(len(order), func(i int) bool { return order[i].blobOff >= from })
	dir := uint32(0)
	sameDir := l.sameDirAhead() && i > 0
	if sameDir {
		dir = dirs[i-1]
	}
	var out []*chunk
	for ; i < len(order) && order[i].blobEnd-from <= n; i++ {
		if sameDir && dirs[i] != dir {
			break
		}
		if c := order[i]; c.servable() {
			out = append(out, c)
		}
	}
	return out
}

// chunksByOffset lists every chunk of the layer by blob offset, with the
// directory (entry index) of the file it belongs to, built on first use.
func (l *Layer) chunksByOffset() ([]*chunk, []uint32) {
	l.blobOrder.once.Do(func() {
		type owned struct {
			c         *chunk
			dir       uint32
			fileStart int64
		}
		var all []owned
		for _, e := range l.contentFiles() {
			start, _ := e.file().span()
			for _, c := range e.file().chunks {
				all = append(all, owned{c, e.parent, start})
			}
		}
		sort.Slice(all, func(i, j int) bool {
			a, b := all[i].c, all[j].c
			return a.blobOff < b.blobOff || (a.blobOff == b.blobOff && a.inner < b.inner)
		})
		l.blobOrder.chunks = make([]*chunk, len(all))
		l.blobOrder.dirs = make([]uint32, len(all))
		l.blobOrder.fileStarts = make([]int64, len(all))
		for i, o := range all {
			l.blobOrder.chunks[i], l.blobOrder.dirs[i], l.blobOrder.fileStarts[i] = o.c, o.dir, o.fileStart
		}
	})
	return l.blobOrder.chunks, l.blobOrder.dirs
}

// fileStart returns where the compressed bytes of the file holding c start
// (c's own offset if no file of the layer holds it).
func (l *Layer) fileStart(c *chunk) int64 {
	order, _ := l.chunksByOffset()
	i := sort.Search(len(order), func(i int) bool { return order[i].blobOff >= c.blobOff })
	for ; i < len(order) && order[i].blobOff == c.blobOff; i++ {
		if order[i] == c {
			return l.blobOrder.fileStarts[i]
		}
	}
	return c.blobOff
}

// claim registers flights for those of chunks that are neither cached
// (as far as the cache can tell without reading) nor being fetched, and
// returns them: the caller must lead them.
func (l *Layer) claim(chunks []*chunk) []*chunk {
	var uncached []*chunk
	for _, c := range chunks {
		if !l.cached(c) {
			uncached = append(uncached, c)
		}
	}
	mine, _ := l.register(uncached) // not waiting for the others
	return mine
}
