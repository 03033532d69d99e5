package layer

import (
	"archive/tar"
	"bytes"
	"context"
	"path"
	"sort"
	"sync"
	"time"

	"github.com/containerd/stargz-snapshotter/estargz"
	"github.com/klauspost/compress/gzip"
)

const (
	// prefetchPiece is how many compressed bytes one prefetch range
	// request asks for. Chunks are handed out as their bytes arrive (see
	// ProgressReader), so a big piece does not delay the first files; but
	// pieces in flight share the link, so the first piece, which holds
	// the files wanted first, should not compete with many others.
	prefetchPiece = 4 << 20

	// prefetchParallel range requests are in flight at once, so the link
	// stays busy across round trips. Measured on the python image (bench,
	// 20 ms, 200 Mbit/s): 4 MiB x 2 beat 1 MiB x 4 and 16 MiB x 1.
	prefetchParallel = 2

	// backgroundPiece is the size of one range request of FetchAll; it
	// runs one at a time, so a reader waits for at most one of them.
	backgroundPiece = 4 << 20
)

// FetchStats says what a Prefetch or FetchAll call covered.
type FetchStats struct {
	Files  int   // regular files with content
	Chunks int   // distinct chunks they need
	Bytes  int64 // compressed bytes of those chunks (some may have been cached already)
}

// Prefetch fetches the content of the prioritized files (those before
// .prefetch.landmark, see Prioritized) into the cache, in blob order but
// following the demand reads that miss (see pieceQueue), in pieces of
// about prefetchPiece bytes, a few at once, each read in segments that
// give way to demand reads (see DemandGate).
// Chunks go through the same singleflight as ReadAt: a chunk already
// cached or being fetched for a reader is not fetched again, and a reader
// that needs a chunk this call is fetching waits for it instead of
// fetching it itself. It returns when all pieces are done; the error is
// the first failure (the other pieces are still fetched).
func (l *Layer) Prefetch(ctx context.Context) (FetchStats, error) {
	return l.fetchEntries(ctx, l.Prioritized(), prefetchPiece, prefetchParallel, false)
}

// FetchAll fetches the content of every file of the layer into the cache,
// as Prefetch does its files but one piece of about backgroundPiece bytes
// at a time, pausing while ReadAt calls are in progress so that on-demand
// reads have the link to themselves. Like Prefetch it never fetches a chunk that
// is cached or in flight. Meant to run in the background after Prefetch.
func (l *Layer) FetchAll(ctx context.Context) (FetchStats, error) {
	return l.fetchEntries(ctx, l.contentFiles(), backgroundPiece, 1, true)
}

// contentFiles lists the regular files of the layer that have content in
// the blob, each once (hard links share theirs).
func (l *Layer) contentFiles() []*Entry {
	var files []*Entry
	seen := map[*Entry]bool{}
	var walk func(e *Entry)
	walk = func(e *Entry) {
		for i := range e.NumChildren() {
			_, c := e.ChildAt(i)
			switch {
			case c.Type == TypeDir:
				walk(c)
			case c.Type == TypeReg && c.b > 0 && !seen[c]:
				seen[c] = true
				files = append(files, c)
			}
		}
	}
	walk(l.Root())
	return files
}

// sortByBlobOffset puts chunks in the order their bytes are in the blob.
func sortByBlobOffset(chunks []*chunk) {
	sort.Slice(chunks, func(i, j int) bool {
		a, b := chunks[i], chunks[j]
		return a.blobOff < b.blobOff || (a.blobOff == b.blobOff && a.inner < b.inner)
	})
}

// fetchEntries fetches the chunks of entries in pieces of about piece
// compressed bytes, parallel pieces at a time.
func (l *Layer) fetchEntries(ctx context.Context, entries []*Entry, piece int64, parallel int, yield bool) (FetchStats, error) {
	var st FetchStats
	seen := map[chunkKey]bool{}
	var chunks []*chunk
	for _, e := range entries {
		if e == nil || e.file() == nil {
			continue
		}
		st.Files++
		for _, c := range e.file().chunks {
			if !c.servable() || seen[c.key()] {
				continue // ReadAt refuses these anyway
			}
			seen[c.key()] = true
			chunks = append(chunks, c)
			st.Chunks++
			st.Bytes += c.blobEnd - c.blobOff
		}
	}
	sortByBlobOffset(chunks)
	return st, l.fetchPieces(ctx, "(prefetch)", cutPieces(chunks, piece), parallel, yield, fetchFill)
}

// cutPieces cuts chunks, in blob order, into pieces of consecutive chunks
// of about piece compressed bytes; chunks sharing a gzip member stay in
// one piece so that no member is fetched by two requests.
func cutPieces(chunks []*chunk, piece int64) [][]*chunk {
	var pieces [][]*chunk
	var cur []*chunk
	var curStart int64
	for _, c := range chunks {
		if len(cur) > 0 && c.blobEnd-curStart > piece && c.blobOff != cur[len(cur)-1].blobOff {
			pieces = append(pieces, cur)
			cur = nil
		}
		if len(cur) == 0 {
			curStart = c.blobOff
		}
		cur = append(cur, c)
	}
	if len(cur) > 0 {
		pieces = append(pieces, cur)
	}
	return pieces
}

// fetchPieces fetches pieces (each a set of chunks, coalesced into as few
// range requests as touch) in order (for the fill, mode fetchFill: from
// where demand reads miss, see pieceQueue), parallel pieces at a time,
// through the singleflight; with yield a piece waits until no ReadAt is in
// progress. The error is the first failure (later pieces are still
// fetched).
func (l *Layer) fetchPieces(ctx context.Context, path string, pieces [][]*chunk, parallel int, yield bool, mode fetchMode) error {
	q := &pieceQueue{pieces: pieces}
	if mode == fetchFill {
		q.follow = l.missAt.Load
	}
	var mu sync.Mutex
	var firstErr error
	var wg sync.WaitGroup
	for range max(parallel, 1) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				p := q.take()
				if p == nil {
					return
				}
				if yield {
					l.waitIdle(ctx)
				}
				if _, err := l.getChunks(ctx, path, p, mode); err != nil {
					mu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	if firstErr == nil && ctx.Err() != nil {
		firstErr = ctx.Err()
	}
	return firstErr
}

// pieceQueue hands fetchPieces' workers its pieces: in order, or, with
// follow, from where the latest demand read that missed was (see missAt).
type pieceQueue struct {
	mu     sync.Mutex
	pieces [][]*chunk // nil once taken
	follow func() int64
}

// take returns the next piece, nil when none is left. With follow, that is
// the first piece left that ends past follow's offset (pieces are in blob
// order), else the first left: a reader that went past the fill's
// position (in an optimized layer, a program done with the prioritized
// files before, or needing only parts of them, as java does with its 44
// MB lib/modules) reads next what follows where it is, and the fill goes
// there; what it skipped is fetched afterwards.
func (q *pieceQueue) take() []*chunk {
	q.mu.Lock()
	defer q.mu.Unlock()
	var at int64
	if q.follow != nil {
		at = q.follow()
	}
	pick := -1
	for i, p := range q.pieces {
		if p == nil {
			continue
		}
		if pick < 0 {
			pick = i
			if at <= 0 {
				break
			}
		}
		if p[len(p)-1].blobEnd > at {
			pick = i
			break
		}
	}
	if pick < 0 {
		return nil
	}
	p := q.pieces[pick]
	q.pieces[pick] = nil
	if at > 0 && p[0].blobOff < at {
		// The piece begins before the file being read (in the file
		// before it): that part waits for its turn.
		k := sort.Search(len(p), func(i int) bool { return p[i].blobOff >= at })
		if k > 0 && k < len(p) {
			q.pieces[pick], p = p[:k], p[k:]
		}
	}
	return p
}

// waitIdle returns once no ReadAt is in progress (or ctx ends).
func (l *Layer) waitIdle(ctx context.Context) {
	for l.reading.Load() > 0 && ctx.Err() == nil {
		time.Sleep(2 * time.Millisecond)
	}
}

// splitTail splits runs that reach into the tail Open fetched: the chunks
// wholly inside it are served from it, only the others are fetched (the
// tail is the end of the blob, so both parts stay contiguous).
func (l *Layer) splitTail(runs []run) []run {
	if len(l.tail) == 0 {
		return runs
	}
	tailEnd := l.tailStart + int64(len(l.tail))
	out := make([]run, 0, len(runs))
	for _, r := range runs {
		if r.end <= l.tailStart || (r.start >= l.tailStart && r.end <= tailEnd) {
			out = append(out, r)
			continue
		}
		var in, rest run
		for _, c := range r.chunks {
			part := &rest
			if c.blobOff >= l.tailStart && c.blobEnd <= tailEnd {
				part = &in
			}
			if len(part.chunks) == 0 {
				part.start, part.end = c.blobOff, c.blobEnd
			}
			part.start, part.end = min(part.start, c.blobOff), max(part.end, c.blobEnd)
			part.chunks = append(part.chunks, c)
		}
		for _, p := range []run{rest, in} {
			if len(p.chunks) > 0 {
				out = append(out, p)
			}
		}
	}
	return out
}

// headGap is the largest hole between prioritized chunks that
// PrioritizedHead still bridges: directory headers and small files the
// builder put among the prioritized ones cost less to stream through than
// a request of their own.
const headGap = 64 << 10

// PrioritizedHead is where the prioritized content that starts the blob
// ends: the chunks of the files before .prefetch.landmark, from the first
// byte on, as long as no hole of more than headGap bytes separates them.
// A stream of the blob's first bytes (see remote.Head) needs to go no
// further for Prefetch. It is 0 when nothing is prioritized.
func (l *Layer) PrioritizedHead() int64 {
	var chunks []*chunk
	for _, e := range l.Prioritized() {
		if e.file() != nil {
			chunks = append(chunks, e.file().chunks...)
		}
	}
	sortByBlobOffset(chunks)
	var end int64
	for _, c := range chunks {
		if c.blobOff > end+headGap {
			break
		}
		end = max(end, c.blobEnd)
	}
	return end
}

// SaysNoPrefetch reports whether a blob whose first bytes are head starts
// with the .no.prefetch.landmark entry, which eStargz builders write first
// when no files were prioritized: a stream of the blob's head would fetch
// nothing Prefetch wants. So does a zstd:chunked blob (a zstd frame
// first): the format has no prioritized files. A head too short to tell,
// or of neither format, says no.
func SaysNoPrefetch(head []byte) bool {
	if bytes.HasPrefix(head, zstdFrameMagic) {
		return true
	}
	zr, err := gzip.NewReader(bytes.NewReader(head))
	if err != nil {
		return false
	}
	h, err := tar.NewReader(zr).Next()
	return err == nil && path.Clean("/"+h.Name) == "/"+estargz.NoPrefetchLandmark
}

// TailSize is how many bytes of a blob's end Open reads in one request
// when a TOC digest is expected (when none is, it reads fewer): what a
// caller reading a blob's end ahead of Open, before its size is known,
// should ask for.
func TailSize() int64 { return tailSize }

// TailStart is where the window of the blob's end that Open reads in one
// request begins, for a blob of size bytes.
func TailStart(size int64) int64 {
	return size - min(size, tailSize)
}

// smallFileMax is the largest file FetchFiles fetches.
const smallFileMax = 1 << 20

// FetchFiles fetches the content of the regular files at paths (absolute
// in the layer, symlinks followed within it) that the layer has and that
// are at most smallFileMax bytes, each in its own request, all at once,
// through the singleflight like Prefetch. Paths the layer lacks are
// skipped.
func (l *Layer) FetchFiles(ctx context.Context, paths []string) (FetchStats, error) {
	var files []*Entry
	for _, p := range paths {
		if e := l.lookupPath(p); e != nil && e.Type == TypeReg && e.Size <= smallFileMax {
			files = append(files, e)
		}
	}
	return l.fetchFilesEach(ctx, "(start files)", files)
}

// fetchFilesEach fetches files (elfPiece of each: whole, up to
// elfWholeFile) each in its own request, all at once, through the
// singleflight.
func (l *Layer) fetchFilesEach(ctx context.Context, what string, files []*Entry) (FetchStats, error) {
	var st FetchStats
	var pieces [][]*chunk
	for _, e := range files {
		piece := elfPiece(e)
		for _, c := range piece {
			st.Chunks++
			st.Bytes += c.blobEnd - c.blobOff
		}
		if len(piece) > 0 {
			st.Files++
			pieces = append(pieces, piece)
		}
	}
	return st, l.fetchPieces(ctx, what, pieces, len(pieces), false, fetchOther)
}
