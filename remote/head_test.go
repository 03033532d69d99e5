package remote

import (
	"bytes"
	"context"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// rangeRecorder is middleware that records the Range header of every blob
// GET, and lets a test spoil the answers to the head stream of headOf
// (Range bytes=0-32767).
type rangeRecorder struct {
	mu     sync.Mutex
	ranges []string
	// spoil, if set, writes the answer to a head stream request itself.
	spoil func(w http.ResponseWriter, r *http.Request, h http.Handler)
}

func (rr *rangeRecorder) wrap(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !isBlobGet(r) {
			h.ServeHTTP(w, r)
			return
		}
		rr.mu.Lock()
		rr.ranges = append(rr.ranges, r.Header.Get("Range"))
		spoil := rr.spoil
		rr.mu.Unlock()
		if spoil != nil && r.Header.Get("Range") == "bytes=0-32767" {
			spoil(w, r, h)
			return
		}
		h.ServeHTTP(w, r)
	})
}

func (rr *rangeRecorder) take() []string {
	rr.mu.Lock()
	defer rr.mu.Unlock()
	out := rr.ranges
	rr.ranges = nil
	return out
}

// headOf opens the test layer's blob (through rr) and a Head of n bytes.
func headOf(t *testing.T, rr *rangeRecorder, opts Options, n int64) (*Head, []byte) {
	t.Helper()
	f := newFixture(t, rr.wrap)
	r, _ := newTestResolver(t, opts)
	b, data := openLayer(t, f, r)
	rr.take()
	h := b.(HeadStreamer).StreamHead(n)
	t.Cleanup(h.Release)
	return h, data
}

// TestHeadServesReadsFromOneStream: reads inside the head come from one
// stream, the parts outside from the blob's own requests, every byte right;
// a range asked for a second time goes to the registry.
func TestHeadServesReadsFromOneStream(t *testing.T) {
	rr := &rangeRecorder{}
	h, data := headOf(t, rr, Options{}, 32<<10)
	ctx := context.Background()
	size := int64(len(data))

	reads := []struct {
		name      string
		off, n    int64
		newRanges []string // blob GETs the read adds
	}{
		{"first bytes start the stream", 0, 100, []string{"bytes=0-32767"}},
		{"inside, later", 100, 5000, nil},
		{"crossing the head's end", 30000, 5000, []string{"bytes=32768-34999"}},
		{"beyond the head", 40000, 1000, []string{"bytes=40000-40999"}},
		{"served before: from the blob", 0, 100, []string{"bytes=0-99"}},
		{"overlapping a served range", 5000, 200, []string{"bytes=5000-5199"}},
		{"not served yet", 10000, 2000, nil},
		{"crossing the blob's end", size - 10, 20, []string{"bytes=" + itoa(size-10) + "-" + itoa(size-1)}},
	}
	for _, rd := range reads {
		p := make([]byte, rd.n)
		var reported []int
		n, err := h.ReadAtProgress(ctx, p, rd.off, func(n int) { reported = append(reported, n) })
		want := data[rd.off:min(rd.off+rd.n, size)]
		if n != len(want) || !bytes.Equal(p[:n], want) {
			t.Errorf("%s: read %d bytes (err %v), want %d, or wrong bytes", rd.name, n, err, len(want))
		}
		if rd.off+rd.n <= size && err != nil {
			t.Errorf("%s: %v", rd.name, err)
		}
		for i := 1; i < len(reported); i++ {
			if reported[i] < reported[i-1] {
				t.Errorf("%s: progress went back: %v", rd.name, reported)
			}
		}
		if got := rr.take(); strings.Join(got, " ") != strings.Join(rd.newRanges, " ") {
			t.Errorf("%s: blob GETs %q, want %q", rd.name, got, rd.newRanges)
		}
	}
	h.Wait()
	if n, over := h.Streamed(); n != 32<<10 || !over {
		t.Errorf("streamed %d bytes (over %v), want %d", n, over, 32<<10)
	}
	if got := h.b.FetchedBytes(); got < 32<<10 {
		t.Errorf("FetchedBytes = %d, does not count the stream", got)
	}
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }

// TestHeadLimitAndRelease: what the stream asks for and serves follows
// Limit and Release.
func TestHeadLimitAndRelease(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name   string
		before func(h *Head) // before the first read
		ranges []string      // blob GETs of a read of [0, 2000)
	}{
		{"limited before it starts", func(h *Head) { h.Limit(1000) }, []string{"bytes=0-999", "bytes=1000-1999"}},
		{"limited to nothing", func(h *Head) { h.Limit(0) }, []string{"bytes=0-1999"}},
		{"released before it starts", func(h *Head) { h.Release() }, []string{"bytes=0-1999"}},
		{"started by TailRead, then limited below what it has", func(h *Head) {
			h.TailRead()
			waitStreamed(t, h, 1500)
			h.Limit(10)
		}, nil},
		{"limit never raises the end", func(h *Head) { h.Limit(1000); h.Limit(1 << 20) }, []string{"bytes=0-999", "bytes=1000-1999"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			rr := &rangeRecorder{}
			h, data := headOf(t, rr, Options{}, 32<<10)
			tc.before(h)
			p := make([]byte, 2000)
			if n, err := h.ReadAt(ctx, p, 0); err != nil || !bytes.Equal(p[:n], data[:2000]) {
				t.Fatalf("read %d bytes: %v", n, err)
			}
			got := rr.take()
			if tc.ranges == nil {
				// The stream already had the bytes: its one request only.
				if len(got) != 1 || !strings.HasPrefix(got[0], "bytes=0-") {
					t.Errorf("blob GETs %q, want only the stream's", got)
				}
				return
			}
			if strings.Join(got, " ") != strings.Join(tc.ranges, " ") {
				t.Errorf("blob GETs %q, want %q", got, tc.ranges)
			}
		})
	}
}

func waitStreamed(t *testing.T, h *Head, n int64) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(time.Millisecond) {
		if got, over := h.Streamed(); got >= n || over {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("stream did not reach %d bytes", n)
		}
	}
}

// TestHeadStreamFaults: a stream that breaks, stalls, is refused or brings
// wrong bytes costs the reads it would have served nothing but a request of
// their own: every byte is right in the end, and a spoiled byte is handed
// out once at most.
func TestHeadStreamFaults(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name  string
		spoil func(w http.ResponseWriter, r *http.Request, h http.Handler)
		// spoiled: the first read may get wrong bytes (what a layer's
		// verification catches), the second must get right ones.
		spoiled bool
	}{
		{"cut after 10 KB", func(w http.ResponseWriter, r *http.Request, h http.Handler) {
			r.Header.Set("Range", "bytes=0-10239")
			h.ServeHTTP(w, r) // a 206 shorter than asked, then EOF
		}, false},
		{"connection dropped mid-body", func(w http.ResponseWriter, r *http.Request, h http.Handler) {
			relay(w, r, h, func(b []byte) []byte { return b[:5000] })
			panic(http.ErrAbortHandler)
		}, false},
		{"refused", func(w http.ResponseWriter, r *http.Request, h http.Handler) {
			http.Error(w, "busy", http.StatusServiceUnavailable)
		}, false},
		{"stalls", func(w http.ResponseWriter, r *http.Request, h http.Handler) {
			w.Header().Set("Content-Range", "bytes 0-32767/*")
			w.WriteHeader(http.StatusPartialContent)
			_, _ = w.Write(make([]byte, 100)) // zeros: wrong, but served once at most
			w.(http.Flusher).Flush()
			<-r.Context().Done()
		}, true},
		{"flipped byte", func(w http.ResponseWriter, r *http.Request, h http.Handler) {
			relay(w, r, h, func(b []byte) []byte { b[50] ^= 0xff; return b })
		}, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			rr := &rangeRecorder{}
			h, data := headOf(t, rr, Options{FetchTimeout: 300 * time.Millisecond, Retries: -1}, 32<<10)
			rr.mu.Lock()
			rr.spoil = tc.spoil // after the set-up, which reads the config with bytes=0-...
			rr.mu.Unlock()
			for i := 0; i < 2; i++ {
				p := make([]byte, 20000)
				n, err := h.ReadAt(ctx, p, 0)
				if err != nil || n != len(p) {
					t.Fatalf("read %d: %d bytes, %v", i, n, err)
				}
				if !bytes.Equal(p, data[:len(p)]) && (i == 1 || !tc.spoiled) {
					t.Fatalf("read %d: wrong bytes", i)
				}
			}
			h.Wait()
		})
	}
}

// relay serves r with h and passes the answer on to w with its body edited.
func relay(w http.ResponseWriter, r *http.Request, h http.Handler, edit func([]byte) []byte) {
	rec := &capture{header: http.Header{}}
	h.ServeHTTP(rec, r)
	for k, v := range rec.header {
		w.Header()[k] = v
	}
	w.WriteHeader(rec.status)
	_, _ = w.Write(edit(rec.body.Bytes()))
}

// capture is an http.ResponseWriter that keeps the answer.
type capture struct {
	header http.Header
	status int
	body   bytes.Buffer
}

func (c *capture) Header() http.Header         { return c.header }
func (c *capture) WriteHeader(s int)           { c.status = s }
func (c *capture) Write(b []byte) (int, error) { return c.body.Write(b) }

// TestHeadPrefix: Prefix waits for the first bytes, and says nothing once
// released.
func TestHeadPrefix(t *testing.T) {
	rr := &rangeRecorder{}
	h, data := headOf(t, rr, Options{}, 32<<10)
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if got := h.Prefix(ctx, 10); got != nil {
		t.Errorf("Prefix before the stream started = %d bytes, want nil once ctx ends", len(got))
	}
	h.Start()
	if got := h.Prefix(context.Background(), 4096); !bytes.Equal(got, data[:4096]) {
		t.Errorf("Prefix = %d bytes, want the first 4096", len(got))
	}
	h.Release()
	if got := h.Prefix(context.Background(), 10); got != nil {
		t.Errorf("Prefix after Release = %d bytes", len(got))
	}
}

// TestHeadStartsOneRoundTripEarly: while the stream waits, a large read it
// does not serve (the TOC) starts it about a round trip before that read
// is done, not at once and not after.
func TestHeadStartsOneRoundTripEarly(t *testing.T) {
	const rtt = 40 * time.Millisecond
	var (
		mu        sync.Mutex
		headAsked time.Time
		bigFirst  time.Time
	)
	f := newFixture(t, func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if !isBlobGet(r) {
				h.ServeHTTP(w, r)
				return
			}
			if r.Header.Get("Range") == "bytes=0-65535" {
				mu.Lock()
				headAsked = time.Now()
				mu.Unlock()
			}
			time.Sleep(rtt)
			tw := &trickleWriter{ResponseWriter: w, piece: 32 << 10, every: 20 * time.Millisecond, first: func() {
				mu.Lock()
				if bigFirst.IsZero() && strings.HasPrefix(r.Header.Get("Range"), "bytes=524288-") {
					bigFirst = time.Now()
				}
				mu.Unlock()
			}}
			h.ServeHTTP(tw, r)
		})
	})
	r, _ := newTestResolver(t, Options{})
	ti := makeImage(t, 1, 1<<20, 0, nil)
	tagRef, _ := f.pushImage(t, "blobs/big", "v1", ti.img)
	ld, err := r.ResolveLayer(context.Background(), tagRef, ti.toc)
	if err != nil {
		t.Fatal(err)
	}
	b, err := r.Blob(context.Background(), ld)
	if err != nil {
		t.Fatal(err)
	}
	data := layerBytes(t, ti.layers[0])
	h := b.(HeadStreamer).StreamHead(64 << 10)
	defer h.Release()

	p := make([]byte, 512<<10)
	if n, err := h.ReadAt(context.Background(), p, 512<<10); err != nil || !bytes.Equal(p[:n], data[512<<10:512<<10+n]) {
		t.Fatalf("read %d bytes: %v", n, err)
	}
	done := time.Now()
	mu.Lock()
	asked, first := headAsked, bigFirst
	mu.Unlock()
	switch {
	case asked.IsZero():
		t.Fatal("the stream did not start before the read was done")
	case asked.Before(first):
		t.Errorf("the stream started %v before the read's first byte: it shares the link with the whole read", first.Sub(asked))
	default:
		t.Logf("stream asked for %v after the read's first byte, %v before the read was done", asked.Sub(first), done.Sub(asked))
	}
}

// trickleWriter writes a body in pieces, a pause before each but the first.
type trickleWriter struct {
	http.ResponseWriter
	piece int
	every time.Duration
	first func() // called before the first body byte
	wrote bool
}

func (w *trickleWriter) Write(b []byte) (int, error) {
	n := 0
	for n < len(b) {
		if w.wrote {
			time.Sleep(w.every)
		} else if w.first != nil {
			w.first()
		}
		w.wrote = true
		m, err := w.ResponseWriter.Write(b[n:min(len(b), n+w.piece)])
		n += m
		if err != nil {
			return n, err
		}
		w.ResponseWriter.(http.Flusher).Flush()
	}
	return n, nil
}
