package remote

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	testfixture "github.com/poolfs/poolfs/test/fixture"
)

// The head streams of these tests: 32 KiB in two requests, the probe and
// the rest.
const (
	probeRange = "bytes=0-4095"
	restRange  = "bytes=4096-32767"
)

// rangeRecorder is middleware that records the Range header of every blob
// GET, and lets a test spoil the answers to the head stream's requests.
type rangeRecorder struct {
	mu     sync.Mutex
	ranges []string
	// spoil, if set, writes the answer to the requests of the ranges in
	// spoiled itself.
	spoil   func(w http.ResponseWriter, r *http.Request, h http.Handler)
	spoiled map[string]bool
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
		if !rr.spoiled[r.Header.Get("Range")] {
			spoil = nil
		}
		rr.mu.Unlock()
		if spoil != nil {
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

// headOf opens the test layer's blob (through rr) and a Head of n bytes;
// the probe request is on its way when it returns.
func headOf(t *testing.T, rr *rangeRecorder, opts Options, n int64, probe func([]byte) bool) (*Head, []byte) {
	t.Helper()
	f := newFixture(t, rr.wrap)
	r, _ := newTestResolver(t, opts)
	b, data := openLayer(t, f, r)
	rr.take()
	h := b.(HeadStreamer).StreamHead(n, probe)
	t.Cleanup(h.Release)
	return h, data
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

// TestHeadServesReadsFromOneStream: reads inside the head come from one
// stream, the parts outside from the blob's own requests, every byte right;
// a range asked for a second time goes to the registry.
func TestHeadServesReadsFromOneStream(t *testing.T) {
	rr := &rangeRecorder{}
	var probed []byte
	h, data := headOf(t, rr, Options{}, 32<<10, func(first []byte) bool { probed = append([]byte(nil), first...); return true })
	ctx := context.Background()
	size := int64(len(data))
	waitStreamed(t, h, 4096)
	if got := rr.take(); strings.Join(got, " ") != probeRange {
		t.Fatalf("before Start: blob GETs %q, want the probe %q", got, probeRange)
	}
	h.Start()
	h.Wait()
	if got := rr.take(); strings.Join(got, " ") != restRange {
		t.Fatalf("after Start: blob GETs %q, want the rest %q", got, restRange)
	}
	if !bytes.Equal(probed, data[:4096]) {
		t.Errorf("the probe function saw %d bytes, want the blob's first 4096", len(probed))
	}

	reads := []struct {
		name      string
		off, n    int64
		newRanges []string // blob GETs the read adds
	}{
		{"first bytes", 0, 100, nil},
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

// TestHeadProbeLimitAndRelease: what the stream asks for past its probe
// follows the probe function, Limit and Release; a read of [0, 20000) gets
// the right bytes in every case, from the stream or from the blob.
func TestHeadProbeLimitAndRelease(t *testing.T) {
	ctx := context.Background()
	yes := func([]byte) bool { return true }
	tests := []struct {
		name   string
		probe  func([]byte) bool
		before func(h *Head) // once the probe is in, before the read
		ranges []string      // every blob GET, the read's included
	}{
		{"probe says no: the stream ends with it", func([]byte) bool { return false }, func(h *Head) { h.Start() },
			[]string{probeRange, "bytes=4096-19999"}},
		{"no probe function: the rest follows Start", nil, func(h *Head) { h.Start(); h.Wait() },
			[]string{probeRange, restRange}},
		{"started by the read", yes, func(h *Head) {}, []string{probeRange, restRange}},
		{"limited before the rest", yes, func(h *Head) { h.Limit(10000); h.Start(); h.Wait() },
			[]string{probeRange, "bytes=4096-9999", "bytes=10000-19999"}},
		{"limit never raises the end", yes, func(h *Head) { h.Limit(10000); h.Limit(1 << 20); h.Start(); h.Wait() },
			[]string{probeRange, "bytes=4096-9999", "bytes=10000-19999"}},
		{"limited below what it has: no more requests", yes, func(h *Head) { h.Limit(10); h.Start(); h.Wait() },
			[]string{probeRange, "bytes=4096-19999"}},
		{"released", yes, func(h *Head) { h.Release(); h.Start() }, []string{probeRange, "bytes=0-19999"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			rr := &rangeRecorder{}
			h, data := headOf(t, rr, Options{}, 32<<10, tc.probe)
			waitStreamed(t, h, 4096)
			tc.before(h)
			p := make([]byte, 20000)
			if n, err := h.ReadAt(ctx, p, 0); err != nil || !bytes.Equal(p[:n], data[:20000]) {
				t.Fatalf("read %d bytes: %v", n, err)
			}
			h.Release()
			h.Wait()
			if got := rr.take(); strings.Join(got, " ") != strings.Join(tc.ranges, " ") {
				t.Errorf("blob GETs %q, want %q", got, tc.ranges)
			}
		})
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
		{"cut after 1 KiB", func(w http.ResponseWriter, r *http.Request, h http.Handler) {
			first, _ := rangeOf(r)
			r.Header.Set("Range", fmt.Sprintf("bytes=%d-%d", first, first+1023))
			h.ServeHTTP(w, r) // a 206 shorter than asked, then EOF
		}, false},
		{"connection dropped mid-body", func(w http.ResponseWriter, r *http.Request, h http.Handler) {
			relay(w, r, h, func(b []byte) []byte { return b[:len(b)/3] })
			panic(http.ErrAbortHandler)
		}, false},
		{"refused", func(w http.ResponseWriter, r *http.Request, h http.Handler) {
			http.Error(w, "busy", http.StatusServiceUnavailable)
		}, false},
		{"stalls", func(w http.ResponseWriter, r *http.Request, h http.Handler) {
			first, last := rangeOf(r)
			w.Header().Set("Content-Range", fmt.Sprintf("bytes %d-%d/*", first, last))
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
		for _, which := range []string{probeRange, restRange} {
			t.Run(tc.name+", "+which, func(t *testing.T) {
				rr := &rangeRecorder{spoil: tc.spoil, spoiled: map[string]bool{which: true}}
				h, data := headOf(t, rr, Options{FetchTimeout: 300 * time.Millisecond, Retries: -1}, 32<<10, nil)
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
}

// rangeOf parses a request's Range: bytes=first-last.
func rangeOf(r *http.Request) (first, last int64) {
	_, _ = fmt.Sscanf(r.Header.Get("Range"), "bytes=%d-%d", &first, &last)
	return first, last
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

// TestHeadProbe: the probe function sees the blob's first bytes, all of a
// head shorter than the probe, and nothing is fetched past a head that
// short.
func TestHeadProbe(t *testing.T) {
	for _, n := range []int64{100, 4096, 10000} {
		t.Run(itoa(n), func(t *testing.T) {
			rr := &rangeRecorder{}
			seen := make(chan []byte, 1)
			h, data := headOf(t, rr, Options{}, n, func(b []byte) bool { seen <- append([]byte(nil), b...); return true })
			want := data[:min(n, 4096)]
			select {
			case got := <-seen:
				if !bytes.Equal(got, want) {
					t.Errorf("probe saw %d bytes, want the first %d", len(got), len(want))
				}
			case <-time.After(10 * time.Second):
				t.Fatal("probe function not called")
			}
			h.Start()
			h.Wait()
			if got, _ := h.Streamed(); got != n {
				t.Errorf("streamed %d bytes, want %d", got, n)
			}
		})
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
			if r.Header.Get("Range") == "bytes=4096-65535" {
				mu.Lock()
				headAsked = time.Now()
				mu.Unlock()
			}
			time.Sleep(rtt)
			tw := &testfixture.Trickle{ResponseWriter: w, Piece: 32 << 10, Every: 20 * time.Millisecond, OnFirst: func() {
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
	h := b.(HeadStreamer).StreamHead(64<<10, nil)
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

// TestHeadReleasedAroundTheProbe: a Release that comes as the probe's bytes
// arrive (a layer whose open failed, or that another open won) stops the
// stream whichever comes first, and reads still get the right bytes.
func TestHeadReleasedAroundTheProbe(t *testing.T) {
	var current atomic.Pointer[Head]
	rr := &rangeRecorder{spoiled: map[string]bool{probeRange: true}}
	rr.spoil = func(w http.ResponseWriter, r *http.Request, h http.Handler) {
		h.ServeHTTP(w, r)
		w.(http.Flusher).Flush()
		for current.Load() == nil {
			time.Sleep(50 * time.Microsecond)
		}
		current.Load().Release()
	}
	f := newFixture(t, rr.wrap)
	r, _ := newTestResolver(t, Options{})
	b, data := openLayer(t, f, r)
	for i := range 100 {
		current.Store(nil)
		h := b.(HeadStreamer).StreamHead(32<<10, func([]byte) bool { return true })
		current.Store(h)
		h.Wait()
		p := make([]byte, 8000)
		if n, err := h.ReadAt(context.Background(), p, 0); err != nil || !bytes.Equal(p[:n], data[:8000]) {
			t.Fatalf("round %d: read %d bytes: %v", i, n, err)
		}
	}
}
