package layer

import (
	"context"
	"fmt"
	"sort"
	"sync/atomic"

	"github.com/sirupsen/logrus"
)

const (
	// verifyAttempts is how often a chunk is fetched before a digest
	// mismatch is final: a flipped bit in transit should not fail a read,
	// a corrupt blob should not be fetched forever.
	verifyAttempts = 3

	// maxRun caps one coalesced blob read so a huge ReadAt does not turn
	// into one unbounded request.
	maxRun = 32 << 20

	// maxChunkSize bounds the memory one chunk takes; estargz writes 4 MiB
	// chunks, and a chunk has to be held whole to be verified.
	maxChunkSize = 1 << 30
)

// flight is one chunk being fetched; readers needing the same chunk wait
// on done instead of fetching it again.
type flight struct {
	done chan struct{}
	data []byte // verified content, set before done is closed
	err  error
	// wanted is set when a demand read waits for the chunk: a fill
	// fetching it then goes on regardless of the gate (see readSegments).
	wanted atomic.Bool
}

// fetchMode says whose fetch it is, which decides how it shares the link.
type fetchMode uint8

const (
	// fetchOther: read-ahead, ELF dependencies, profile replay, the
	// engine's files, whole-file copies: each run in one request, at once.
	fetchOther fetchMode = iota
	// fetchDemand: ReadAt, which a process waits on: it reads ahead, moves
	// the fill to its file when it misses (see pieceQueue), and holds the
	// fill back while it waits (see DemandGate).
	fetchDemand
	// fetchFill: Prefetch and FetchAll, which nobody waits on yet: in
	// segments, one at a time while a demand read waits (see
	// readSegments).
	fetchFill
)

// run is a set of chunks whose compressed ranges touch, fetched with one
// blob read.
type run struct {
	start, end int64
	chunks     []*chunk
}

// fetchChunks fetches, decompresses and verifies todo, handing each
// verified chunk to deliver as soon as its compressed bytes are in (a
// BlobReader that reports progress lets that happen while the rest of the
// range is still arriving) and putting failures into errs; path only
// labels logs. Chunks that fail verification are refetched up to
// verifyAttempts times in all; transport errors are final here (the
// BlobReader retries on its own). The fill (mode fetchFill) reads in
// segments that yield to demand reads (see readSegments).
func (l *Layer) fetchChunks(ctx context.Context, path string, todo []*chunk, mode fetchMode, deliver func(*chunk, []byte), errs map[chunkKey]error) {
	pending := append([]*chunk(nil), todo...)
	for attempt := 1; attempt <= verifyAttempts && len(pending) > 0; attempt++ {
		var failed []*chunk
		runs := l.coalesce(pending)
		if attempt == 1 {
			runs = l.splitTail(runs)
		}
		for _, r := range runs {
			done := 0 // r.chunks[:done] are decoded
			decode := func(buf []byte, filled int64) {
				for done < len(r.chunks) && r.chunks[done].blobEnd-r.start <= filled {
					c := r.chunks[done]
					done++
					data, err := l.format.decodeChunk(c, buf[c.blobOff-r.start:c.blobEnd-r.start])
					if err != nil {
						verifyFailures.Add(1)
						l.log.WithFields(logrus.Fields{"path": path, "digest": c.digest, "blob_offset": c.blobOff, "attempt": attempt}).
							WithError(err).Warn("chunk failed verification")
						errs[c.key()] = err
						failed = append(failed, c)
						continue
					}
					delete(errs, c.key())
					deliver(c, data)
				}
			}
			var pending []*chunk // what a demand read may wait for
			if mode == fetchFill {
				pending = todo
			}
			buf, err := l.readRun(ctx, r, attempt == 1, mode == fetchFill, pending, decode)
			if err != nil {
				err = fmt.Errorf("reading blob range [%d, %d): %w", r.start, r.end, err)
				for _, c := range r.chunks[done:] {
					errs[c.key()] = err
				}
				continue
			}
			decode(buf, r.end-r.start)
		}
		pending = failed
	}
}

// readRun returns the compressed bytes of r, calling progress with the
// buffer and how much of it is filled while a read is under way (never
// concurrently with the caller). With useTail, bytes Open already fetched
// are not fetched again: a run inside the tail costs no request, and a run
// that reaches into it (a chunk straddling the tail's start) fetches only
// the part before it. Refetches after a failed verification (useTail
// false) go to the registry for every byte. With segmented, the bytes from
// the registry are read in segments that yield to demand reads
// (readSegments, pending being the chunks this fetch leads).
func (l *Layer) readRun(ctx context.Context, r run, useTail, segmented bool, pending []*chunk, progress func(buf []byte, filled int64)) ([]byte, error) {
	if useTail {
		if buf, ok := l.fromTail(r.start, r.end); ok {
			return buf, nil
		}
		if r.start < l.tailStart && r.end > l.tailStart {
			if rest, ok := l.fromTail(l.tailStart, r.end); ok && len(rest) > 0 {
				buf := make([]byte, r.end-r.start)
				head := buf[:l.tailStart-r.start]
				if err := readFull(ctx, l.blob, head, r.start); err != nil {
					return nil, err
				}
				copy(buf[len(head):], rest)
				return buf, nil
			}
		}
	}
	buf := make([]byte, r.end-r.start)
	if segmented {
		if err := l.readSegments(ctx, buf, r.start, pending, progress); err != nil {
			return nil, err
		}
		return buf, nil
	}
	if err := readFullProgress(ctx, l.blob, buf, r.start, func(n int) { progress(buf, int64(n)) }); err != nil {
		return nil, err
	}
	return buf, nil
}

// fromTail returns blob bytes [start, end) if Open already fetched them.
func (l *Layer) fromTail(start, end int64) ([]byte, bool) {
	if start < l.tailStart || end < start || end > l.tailStart+int64(len(l.tail)) {
		return nil, false
	}
	return l.tail[start-l.tailStart : end-l.tailStart], true
}

// headerGap is the largest hole between two chunks that a run bridges when
// the hole holds no chunk at all: in a zstd:chunked blob each entry's tar
// header is a frame of its own between the content frames, so the chunks
// of files stored one after another never touch, and a run that stopped
// at every header would cost a request per file where one would do. A
// hole holding chunks is never bridged here (Replay's bridge adds them as
// chunks), so no run asks for bytes a chunk it does not carry holds.
const headerGap = 64 << 10

// coalesce groups chunks (deduplicated by the caller) into runs of touching
// compressed ranges, in blob order; runs also cross holes of up to
// headerGap bytes that hold no chunk.
func (l *Layer) coalesce(chunks []*chunk) []run {
	sorted := append([]*chunk(nil), chunks...)
	sortByBlobOffset(sorted)
	var runs []run
	for _, c := range sorted {
		if n := len(runs); n > 0 {
			r := &runs[n-1]
			// Chunks sharing a gzip member, or whose members are adjacent
			// or apart only by tar headers, join the current run unless it
			// would grow too big.
			joins := c.blobOff <= r.end || (c.blobOff-r.end <= headerGap && !l.chunkIn(r.end, c.blobOff))
			if joins && max(r.end, c.blobEnd)-r.start <= maxRun {
				r.end = max(r.end, c.blobEnd)
				r.chunks = append(r.chunks, c)
				continue
			}
		}
		runs = append(runs, run{start: c.blobOff, end: c.blobEnd, chunks: []*chunk{c}})
	}
	return runs
}

// chunkIn reports whether any chunk of the layer starts in [from, to).
func (l *Layer) chunkIn(from, to int64) bool {
	order, _ := l.chunksByOffset()
	i := sort.Search(len(order), func(i int) bool { return order[i].blobOff >= from })
	return i < len(order) && order[i].blobOff < to
}

// checkChunk is the check every format's decodeChunk ends with: the
// decompressed bytes are c's size and hash to c's digest.
func checkChunk(c *chunk, data []byte) ([]byte, error) {
	if int64(len(data)) != c.size {
		return nil, fmt.Errorf("chunk %s at blob offset %d decompresses to %d bytes, want %d: %w", c.digest, c.blobOff, len(data), c.size, ErrVerify)
	}
	if got := c.digest.Algorithm().FromBytes(data); got != c.digest {
		return nil, fmt.Errorf("chunk at blob offset %d hashes to %s, want %s: %w", c.blobOff, got, c.digest, ErrVerify)
	}
	return data, nil
}
