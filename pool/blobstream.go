package pool

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/poolfs/poolfs/remote"
)

// The blob file's read pattern: containers/storage decompresses it from
// start to end for `podman push` and `podman save`, and the kernel turns
// that into 128 KiB reads, several in flight and not always in order. Each
// read used to cost a range request of its own; a stream costs the blob
// about once, in a few requests.
const (
	// firstSegment is what a read nothing covers asks for: a random read
	// costs this much, a read that turns out to start a sequential run
	// little more.
	firstSegment = 256 << 10
	// maxSegment caps the doubling of the segments of a run: a 70 MB blob
	// read from start to end takes 11 requests.
	maxSegment = 8 << 20
	// streamWindow is how many bytes of finished segments a layer's
	// stream keeps for reads the kernel sends late, out of order, or
	// again. Segments still arriving come on top: at most two per run.
	// A read landing in a segment asked for ahead asks for the next one
	// at once, while reads a little behind it (the kernel has several in
	// flight, and a busy machine delays some) still need the segment
	// before: so the window holds that one, the one being read and the
	// new one, or a late read would fetch its segment again.
	streamWindow = 3 * maxSegment
	// streamIdle is how long a stream nobody reads keeps its window.
	streamIdle = 30 * time.Second
)

// ReadBlob reads the compressed blob at off (see blobStream). It returns
// fewer bytes than len(p) only at the end of the blob.
func (l *Layer) ReadBlob(ctx context.Context, p []byte, off int64) (int, error) {
	l.streamOnce.Do(func() {
		// The tail fetched with the TOC, if the tree is loaded; without
		// it the stream only fetches that last MiB again.
		var off int64
		var tail []byte
		if v, err := l.View(ctx); err == nil {
			off, tail = v.FetchedTail()
		}
		l.stream = newBlobStream(l.Blob, off, tail)
	})
	return l.stream.ReadAt(ctx, p, off)
}

// blobStream serves reads of one layer's compressed blob. A read that no
// segment covers starts a run: a range request of firstSegment bytes
// whose bytes are handed out as they arrive (ReadAtProgress). A read that
// reaches the second half of a segment, or lands in a segment that was
// itself asked for ahead, asks for the next segment of the run at once,
// twice as large (up to maxSegment): sequential readers find their bytes
// on the wire before they ask, and the link stays busy. Finished segments
// stay, oldest dropped first, within streamWindow, and all of them go
// after streamIdle without reads.
//
// The bytes the layer fetched with its TOC (the blob's last MiB, all of a
// small blob) are served from the layer's copy.
//
// Blob bytes are not verified (only the whole blob has a digest) and are
// not put in the chunk cache, which holds verified bytes only; the blob
// file is opened with FOPEN_KEEP_CACHE, so the kernel's page cache keeps
// what was read for the next reader.
type blobStream struct {
	blob remote.Blob
	size int64

	mu   sync.Mutex
	segs []*segment // oldest first
	idle *time.Timer
}

// segment is one range request of a run and its bytes.
type segment struct {
	off   int64
	buf   []byte
	ahead bool // asked for before anyone read it: the run is sequential
	known bool // bytes the layer fetched with its TOC: never dropped

	// Guarded by blobStream.mu.
	avail int           // buf[:avail] have arrived
	done  bool          // no more bytes will arrive
	err   error         // why the request failed, if it did
	more  chan struct{} // closed and replaced when avail grows or done is set
	next  bool          // the segment that follows was asked for
}

func (g *segment) end() int64 { return g.off + int64(len(g.buf)) }

// newBlobStream reads b; known, if not nil, is b's bytes [knownOff,
// knownOff+len(known)) as the layer already has them (layer.FetchedTail):
// they are served as a segment that never goes, and runs stop where they
// start.
func newBlobStream(b remote.Blob, knownOff int64, known []byte) *blobStream {
	s := &blobStream{blob: b, size: b.Size()}
	if end := knownOff + int64(len(known)); len(known) > 0 && knownOff >= 0 && end <= s.size {
		s.segs = append(s.segs, &segment{off: knownOff, buf: known, known: true, avail: len(known), done: true, next: end == s.size, more: make(chan struct{})})
	}
	return s
}

// ReadAt fills p with the blob's bytes at off; it returns fewer only at
// the end of the blob.
func (s *blobStream) ReadAt(ctx context.Context, p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("reading blob %s: negative offset %d", s.blob.Digest(), off)
	}
	end := min(off+int64(len(p)), s.size)
	n := 0
	for off+int64(n) < end {
		pos := off + int64(n)
		g := s.segmentFor(pos, end-pos)
		m, err := s.copyFrom(ctx, g, p[n:end-off], pos)
		n += m
		if err != nil {
			return n, fmt.Errorf("reading blob %s at %d: %w", s.blob.Digest(), pos, err)
		}
	}
	return n, nil
}

// segmentFor returns the segment that serves the byte at pos, starting one
// (of at least want bytes) if none does, and asks for the next segment of
// its run if the read shows the run is sequential.
func (s *blobStream) segmentFor(pos, want int64) *segment {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.touchLocked()
	g := s.coveringLocked(pos)
	if g == nil {
		if prev := s.endingBeforeLocked(pos); prev != nil {
			// A read a little past the end of a run is mostly a sequential
			// reader's that came before the reads just behind it (the
			// kernel sends several at once): the run goes on from its end,
			// where the reads behind will land, rather than a new run
			// starting at pos and an old one growing into it in pieces.
			prev.next = true
			start := prev.end()
			g = s.startLocked(start, max(pos+want-start, firstSegment), false)
			if pos >= g.end() {
				g = nil // clipped by a segment after the run's end
			}
		}
		if g == nil {
			g = s.startLocked(pos, max(want, firstSegment), false)
		}
	}
	if !g.next && g.end() < s.size && (g.ahead || pos >= g.off+int64(len(g.buf))/2) {
		g.next = true
		if s.coveringLocked(g.end()) == nil {
			s.startLocked(g.end(), min(2*int64(len(g.buf)), maxSegment), true)
		}
	}
	return g
}

// endingBeforeLocked returns the segment that ends less than firstSegment
// bytes before pos with nothing after it up to pos, if there is one.
func (s *blobStream) endingBeforeLocked(pos int64) *segment {
	var prev *segment
	for _, g := range s.segs {
		if e := g.end(); e <= pos && pos-e < firstSegment && (prev == nil || e > prev.end()) {
			prev = g
		}
	}
	if prev == nil || s.coveringLocked(prev.end()) != nil {
		return nil
	}
	return prev
}

// coveringLocked returns the newest segment holding the byte at pos.
func (s *blobStream) coveringLocked(pos int64) *segment {
	for i := len(s.segs) - 1; i >= 0; i-- {
		if g := s.segs[i]; g.off <= pos && pos < g.end() {
			return g
		}
	}
	return nil
}

// startLocked asks for [off, off+n), clipped to the blob and to the next
// segment (reads out of order start runs that meet), making room in the
// window first.
func (s *blobStream) startLocked(off, n int64, ahead bool) *segment {
	n = min(n, s.size-off)
	for _, g := range s.segs {
		if g.off > off {
			n = min(n, g.off-off)
		}
	}
	s.trimLocked(n)
	g := &segment{off: off, buf: make([]byte, n), ahead: ahead, more: make(chan struct{})}
	s.segs = append(s.segs, g)
	go s.fetch(g)
	return g
}

// trimLocked drops the oldest finished segments until n more bytes fit in
// the window. Segments still arriving stay: readers wait for them.
func (s *blobStream) trimLocked(n int64) {
	held := n
	for _, g := range s.segs {
		if g.done && !g.known {
			held += int64(len(g.buf))
		}
	}
	kept := s.segs[:0]
	for _, g := range s.segs {
		if g.done && !g.known && held > streamWindow {
			held -= int64(len(g.buf))
			continue
		}
		kept = append(kept, g)
	}
	clear(s.segs[len(kept):])
	s.segs = kept
}

// touchLocked restarts the idle timer that empties the window.
func (s *blobStream) touchLocked() {
	if s.idle == nil {
		s.idle = time.AfterFunc(streamIdle, s.drop)
		return
	}
	s.idle.Reset(streamIdle)
}

// drop forgets the finished segments; one still arriving is left to finish
// for whoever waits for it.
func (s *blobStream) drop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	kept := s.segs[:0]
	for _, g := range s.segs {
		if !g.done || g.known {
			kept = append(kept, g)
		}
	}
	clear(s.segs[len(kept):])
	s.segs = kept
}

// fetch is the segment's range request. The request is detached from the
// read that started it (other reads wait for the same bytes); the blob's
// own fetch timeout bounds it.
func (s *blobStream) fetch(g *segment) {
	n, err := s.blob.ReadAtProgress(context.Background(), g.buf, g.off, func(n int) {
		s.mu.Lock()
		defer s.mu.Unlock()
		g.avail = n
		close(g.more)
		g.more = make(chan struct{})
	})
	if errors.Is(err, io.EOF) && n == len(g.buf) {
		err = nil // io.ReaderAt may say EOF along with the last bytes
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	g.avail, g.done, g.err = n, true, err
	s.trimLocked(0)
	if err != nil {
		// Not kept: the next read asks again.
		for i, c := range s.segs {
			if c == g {
				s.segs = append(s.segs[:i], s.segs[i+1:]...)
				break
			}
		}
	}
	close(g.more)
	g.more = make(chan struct{})
}

// copyFrom copies into p the bytes of g from pos, as far as p or g goes,
// waiting for them to arrive.
func (s *blobStream) copyFrom(ctx context.Context, g *segment, p []byte, pos int64) (int, error) {
	want := int(min(int64(len(p)), g.end()-pos))
	from := int(pos - g.off)
	for {
		s.mu.Lock()
		avail, done, err, more := g.avail, g.done, g.err, g.more
		s.mu.Unlock()
		if avail >= from+want {
			return copy(p[:want], g.buf[from:from+want]), nil
		}
		if done {
			if err == nil {
				err = io.ErrUnexpectedEOF
			}
			return 0, err
		}
		select {
		case <-more:
		case <-ctx.Done():
			return 0, ctx.Err()
		}
	}
}
