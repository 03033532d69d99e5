package layer

import (
	"context"
	"fmt"
	"io"
	"sort"
	"sync"
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
// BlobReader retries on its own).
//
// Each run is decoded by a goroutine of its own while the reading one
// fills its buffer, and a format that can decompress a chunk from a
// stream (streamDecoder) does so as the chunk's bytes arrive: a 4 MiB
// eStargz chunk takes about 20 ms to decompress and hash, which a reader
// waiting on it (the kernel loading a program) would otherwise wait for
// after the last byte is in. deliver, errs and failed are only touched by
// the run's decoder, and the next run starts once it has finished.
//
// The fill (mode fetchFill) reads in segments that give way to demand
// reads (see readSegments).
func (l *Layer) fetchChunks(ctx context.Context, path string, todo []*chunk, mode fetchMode, deliver func(*chunk, []byte), errs map[chunkKey]error) {
	pending := append([]*chunk(nil), todo...)
	for attempt := 1; attempt <= verifyAttempts && len(pending) > 0; attempt++ {
		var failed []*chunk
		runs := l.coalesce(pending)
		if attempt == 1 {
			runs = l.splitTail(runs)
		}
		for _, r := range runs {
			a := newArrival()
			done := 0 // r.chunks[:done] are decoded, set by the decoder
			decoded := make(chan struct{})
			go func() {
				defer close(decoded)
				for done < len(r.chunks) {
					c := r.chunks[done]
					data, err := l.decodeArriving(c, a, r.start)
					if err != nil && a.cut(c.blobEnd-r.start) {
						return // the read ended before c's bytes were in: not c's fault
					}
					done++
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
			}()
			var pending []*chunk // what a demand read may wait for
			if mode == fetchFill {
				pending = todo
			}
			buf, err := l.readRun(ctx, r, attempt == 1, mode == fetchFill, pending, a.progress)
			a.end(buf, err == nil)
			<-decoded
			if err != nil {
				err = fmt.Errorf("reading blob range [%d, %d): %w", r.start, r.end, err)
				for _, c := range r.chunks[done:] {
					errs[c.key()] = err
				}
			}
		}
		pending = failed
	}
}

// streamDecoder is a format that can decompress a chunk from its
// compressed bytes as they arrive; r ends at c.blobEnd, and a read from it
// fails if the range's read ends before then.
type streamDecoder interface {
	decodeChunkFrom(c *chunk, r io.Reader) ([]byte, error)
}

// decodeArriving decodes c, whose compressed bytes are at c.blobOff-start
// in the buffer a is filling: as they arrive if the format streams, else
// once they are all in.
func (l *Layer) decodeArriving(c *chunk, a *arrival, start int64) ([]byte, error) {
	from, to := c.blobOff-start, c.blobEnd-start
	if sd, ok := l.format.(streamDecoder); ok {
		return sd.decodeChunkFrom(c, &arrivalReader{a: a, pos: from, end: to})
	}
	buf, ok := a.wait(to)
	if !ok {
		return nil, fmt.Errorf("chunk at blob offset %d: %w", c.blobOff, io.ErrUnexpectedEOF)
	}
	return l.format.decodeChunk(c, buf[from:to])
}

// arrival is the buffer of one run as its read fills it: bytes below
// filled are final.
type arrival struct {
	mu     sync.Mutex
	cond   sync.Cond
	buf    []byte
	filled int64
	ended  bool // the read returned; filled is all there will be
}

func newArrival() *arrival {
	a := &arrival{}
	a.cond.L = &a.mu
	return a
}

// progress is readRun's progress callback.
func (a *arrival) progress(buf []byte, filled int64) {
	a.mu.Lock()
	a.buf, a.filled = buf, filled
	a.mu.Unlock()
	a.cond.Broadcast()
}

// end records that the read returned, with the whole buffer if ok.
func (a *arrival) end(buf []byte, ok bool) {
	a.mu.Lock()
	if ok {
		a.buf, a.filled = buf, int64(len(buf))
	}
	a.ended = true
	a.mu.Unlock()
	a.cond.Broadcast()
}

// wait blocks until the buffer is filled up to n, and returns it; false
// if the read ended short of n.
func (a *arrival) wait(n int64) ([]byte, bool) {
	buf, filled := a.waitAny(n)
	return buf, filled >= n
}

// waitAny blocks until the buffer is filled up to n or the read ended,
// and returns it with how much of it is filled.
func (a *arrival) waitAny(n int64) ([]byte, int64) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for a.filled < n && !a.ended {
		if streamWaitHook != nil {
			streamWaitHook(n)
		}
		a.cond.Wait()
	}
	return a.buf, a.filled
}

// cut reports whether the read ended before filling the buffer up to n.
func (a *arrival) cut(n int64) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.ended && a.filled < n
}

// streamWaitHook, if set (by tests, before any read), is called with how
// much of the buffer a decoder waits for each time it has to.
var streamWaitHook func(n int64)

// arrivalReader reads [pos, end) of an arrival's buffer, blocking until
// the bytes are in.
type arrivalReader struct {
	a        *arrival
	pos, end int64
}

func (r *arrivalReader) Read(p []byte) (int, error) {
	if r.pos >= r.end {
		return 0, io.EOF
	}
	if len(p) == 0 {
		return 0, nil
	}
	buf, filled := r.a.waitAny(r.pos + 1)
	if filled <= r.pos {
		return 0, fmt.Errorf("blob range read ended at %d of the run: %w", filled, io.ErrUnexpectedEOF)
	}
	n := copy(p, buf[r.pos:min(filled, r.end)])
	r.pos += int64(n)
	return n, nil
}

// readRun returns the compressed bytes of r, calling progress with the
// buffer and how much of it is filled while a read is under way (never
// concurrently with the caller). With useTail, bytes Open already fetched
// are not fetched again: a run inside the tail costs no request, and a run
// that reaches into it (a chunk straddling the tail's start) fetches only
// the part before it. Refetches after a failed verification (useTail
// false) go to the registry for every byte. With segmented, the bytes from
// the registry are read in segments that give way to demand reads
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
