package remote

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/poolfs/poolfs/remote/regconf"
)

// failFirst answers the first n requests matching match with status.
func failFirst(n int64, status int, header map[string]string, match func(*http.Request) bool) func(http.Handler) http.Handler {
	var seen atomic.Int64
	return func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if match(r) && seen.Add(1) <= n {
				for k, v := range header {
					w.Header().Set(k, v)
				}
				http.Error(w, "injected failure", status)
				return
			}
			h.ServeHTTP(w, r)
		})
	}
}

func anyRequest(*http.Request) bool { return true }

// cutBody lets the first n matching responses send only keep bytes of their
// body, then drops the connection: the client sees a truncated body.
func cutBody(n int64, keep int, match func(*http.Request) bool) func(http.Handler) http.Handler {
	var seen atomic.Int64
	return func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if match(r) && seen.Add(1) <= n {
				w = &cuttingWriter{ResponseWriter: w, left: keep}
			}
			h.ServeHTTP(w, r)
		})
	}
}

type cuttingWriter struct {
	http.ResponseWriter
	left int
}

func (c *cuttingWriter) Write(p []byte) (int, error) {
	if len(p) <= c.left {
		c.left -= len(p)
		return c.ResponseWriter.Write(p)
	}
	_, _ = c.ResponseWriter.Write(p[:c.left])
	c.ResponseWriter.(http.Flusher).Flush()
	panic(http.ErrAbortHandler) // net/http closes the connection quietly
}

// hang stalls the first n matching requests until the client gives up.
func hang(n int64, match func(*http.Request) bool) func(http.Handler) http.Handler {
	var seen atomic.Int64
	return func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if match(r) && seen.Add(1) <= n {
				<-r.Context().Done()
				return
			}
			h.ServeHTTP(w, r)
		})
	}
}

func TestFlakyRegistry(t *testing.T) {
	tests := []struct {
		name    string
		mw      func(http.Handler) http.Handler
		timeout time.Duration
	}{
		{"503 on the first requests", failFirst(3, http.StatusServiceUnavailable, nil, anyRequest), 0},
		{"502 on blob reads", failFirst(3, http.StatusBadGateway, nil, isBlobGet), 0},
		{"429 with Retry-After", failFirst(2, http.StatusTooManyRequests, map[string]string{"Retry-After": "0"}, anyRequest), 0},
		{"connection dropped mid-body", cutBody(3, 1000, isBlobGet), 0},
		{"connection dropped at once", cutBody(2, 0, isBlobGet), 0},
		{"manifest cut short", cutBody(2, 10, func(r *http.Request) bool { return strings.Contains(r.URL.Path, "/manifests/") }), 0},
		{"request hangs past the timeout", hang(2, anyRequest), 200 * time.Millisecond},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, tc.mw)
			r, _ := newTestResolver(t, Options{RequestTimeout: tc.timeout})
			b, blob := openLayer(t, f, r)
			for _, off := range []int64{0, 12345, int64(len(blob)) - 3000} {
				p := make([]byte, 3000)
				n, err := b.ReadAt(context.Background(), p, off)
				if err != nil || n != len(p) {
					t.Fatalf("ReadAt(%d) = %d, %v", off, n, err)
				}
				if !bytes.Equal(p, blob[off:off+3000]) {
					t.Fatalf("ReadAt(%d): wrong bytes", off)
				}
			}
			if s := r.Stats(); s.Retries == 0 {
				t.Errorf("no retries counted: %+v", s)
			}
		})
	}
}

func TestRetriesExhausted(t *testing.T) {
	var failing atomic.Bool
	var attempts atomic.Int64
	f := newFixture(t, func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if failing.Load() && isBlobGet(r) {
				attempts.Add(1)
				http.Error(w, "boom", http.StatusInternalServerError)
				return
			}
			h.ServeHTTP(w, r)
		})
	})
	for _, retries := range []int{2, -1} {
		t.Run(fmt.Sprintf("retries=%d", retries), func(t *testing.T) {
			failing.Store(false)
			r, _ := newTestResolver(t, Options{Retries: retries})
			b, _ := openLayer(t, f, r)
			failing.Store(true)
			attempts.Store(0)
			_, err := b.ReadAt(context.Background(), make([]byte, 10), 0)
			var se *StatusError
			if !errors.As(err, &se) || se.StatusCode != http.StatusInternalServerError {
				t.Fatalf("err = %v, want 500 StatusError", err)
			}
			want := int64(max(retries, 0) + 1)
			if n := attempts.Load(); n != want {
				t.Errorf("attempts = %d, want %d", n, want)
			}
			if !strings.Contains(err.Error(), "bytes=0-9") || !strings.Contains(err.Error(), b.Digest().String()) {
				t.Errorf("error lacks context: %v", err)
			}
		})
	}
}

func TestContextStopsRetries(t *testing.T) {
	var failing atomic.Bool
	f := newFixture(t, func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if failing.Load() {
				w.Header().Set("Retry-After", "5")
				http.Error(w, "later", http.StatusServiceUnavailable)
				return
			}
			h.ServeHTTP(w, r)
		})
	})
	r, _ := newTestResolver(t, Options{Retries: 100})
	b, _ := openLayer(t, f, r)
	failing.Store(true)

	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(100*time.Millisecond, cancel)
	start := time.Now()
	_, err := b.ReadAt(ctx, make([]byte, 10), 0)
	if !errors.Is(err, context.Canceled) {
		t.Errorf("err = %v, want context.Canceled", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("ReadAt returned after %v; cancellation must cut the Retry-After wait", d)
	}

	if _, err := b.ReadAt(ctx, make([]byte, 10), 0); !errors.Is(err, context.Canceled) {
		t.Errorf("already-cancelled ctx: %v", err)
	}
}

func TestClassify(t *testing.T) {
	tests := []struct {
		err   error
		retry bool
		unau  bool
	}{
		{&StatusError{StatusCode: 500}, true, false},
		{&StatusError{StatusCode: 503}, true, false},
		{&StatusError{StatusCode: 429}, true, false},
		{&StatusError{StatusCode: 408}, true, false},
		{&StatusError{StatusCode: 501}, false, false},
		{&StatusError{StatusCode: 404}, false, false},
		{&StatusError{StatusCode: 403}, false, true}, // renew the token once, as on 401
		{&StatusError{StatusCode: 416}, false, false},
		{&StatusError{StatusCode: 401}, false, true},
		{fmt.Errorf("wrapped: %w", &StatusError{StatusCode: 502}), true, false},
		{io.ErrUnexpectedEOF, true, false},
		{fmt.Errorf("x: %w", errShortBody), true, false},
		{context.DeadlineExceeded, true, false},
		{ErrLayerNotFound, false, false},
		{errors.New("manifest digest does not match"), false, false},
	}
	for _, tc := range tests {
		v := classify(tc.err)
		if v.retry != tc.retry || v.unauthorized != tc.unau {
			t.Errorf("classify(%v) = %+v", tc.err, v)
		}
	}
}

func TestBackoff(t *testing.T) {
	base, ceiling := 50*time.Millisecond, 2*time.Second
	for n := 1; n <= 10; n++ {
		full := min(base<<(n-1), ceiling)
		for i := 0; i < 50; i++ {
			d := backoff(n, base, ceiling)
			if d < full/2 || d > full {
				t.Fatalf("backoff(%d) = %v, want in [%v, %v]", n, d, full/2, full)
			}
		}
	}
}

func TestParseRetryAfter(t *testing.T) {
	now := time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)
	tests := map[string]time.Duration{
		"":       0,
		"0":      0,
		"-3":     0,
		"2":      2 * time.Second,
		"100000": maxRetryAfter,
		"soon":   0,
		now.Add(3 * time.Second).Format(http.TimeFormat):  3 * time.Second,
		now.Add(-3 * time.Second).Format(http.TimeFormat): 0,
		now.Add(time.Hour).Format(http.TimeFormat):        maxRetryAfter,
	}
	for in, want := range tests {
		if got := parseRetryAfter(in, now); got != want {
			t.Errorf("parseRetryAfter(%q) = %v, want %v", in, got, want)
		}
	}
}

func TestParseContentRange(t *testing.T) {
	tests := []struct {
		in          string
		first, last int64
		ok          bool
	}{
		{"bytes 0-9/100", 0, 9, true},
		{"bytes 10-19/*", 10, 19, true},
		{"bytes */100", 0, 0, false},
		{"", 0, 0, false},
		{"bytes 9-3/100", 0, 0, false},
	}
	for _, tc := range tests {
		f, l, ok := parseContentRange(tc.in)
		if f != tc.first || l != tc.last || ok != tc.ok {
			t.Errorf("parseContentRange(%q) = %d, %d, %v", tc.in, f, l, ok)
		}
	}
}

// TestReadAtProgress: progress counts only grow, end at the read's length,
// and the bytes below each count are already the blob's, also when a
// response is cut short and the rest comes from a retry or, once a mirror
// gives up, from the next endpoint, which picks up where the first stopped.
func TestReadAtProgress(t *testing.T) {
	cutForever := func(keep int) func(http.Handler) http.Handler { return cutBody(1<<40, keep, isBlobGet) }
	tests := []struct {
		name   string
		mirror func(http.Handler) http.Handler // nil: no mirror in front
		reg    func(http.Handler) http.Handler
	}{
		{"clean", nil, nil},
		{"body cut twice", nil, cutBody(2, 5000, isBlobGet)},
		{"mirror cuts every body", cutForever(7000), nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var ranges []string
			var mu sync.Mutex
			f := newFixture(t, func(h http.Handler) http.Handler {
				if tc.reg != nil {
					h = tc.reg(h)
				}
				return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					if isBlobGet(r) {
						mu.Lock()
						ranges = append(ranges, r.Header.Get("Range"))
						mu.Unlock()
					}
					h.ServeHTTP(w, r)
				})
			})
			ti := makeImage(t, 2, 64<<10, 1, nil)
			f.pushImage(t, "library/app", "v1", ti.img)
			want := layerBytes(t, ti.layers[1])
			ref := f.host + "/library/app:v1"
			var opts Options
			if tc.mirror != nil {
				m := newFixture(t, tc.mirror)
				m.pushImage(t, "library/app", "v1", ti.img)
				conf := filepath.Join(t.TempDir(), "registries.conf")
				writeFile(t, conf, "[[registry]]\nprefix = \"registry.invalid\"\nlocation = \""+f.host+"\"\n[[registry.mirror]]\nlocation = \""+m.host+"\"\n")
				rs, err := regconf.Load(conf)
				if err != nil {
					t.Fatal(err)
				}
				opts = Options{Registries: rs, Retries: 1}
				ref = "registry.invalid/library/app:v1"
			}
			r, logs := newTestResolver(t, opts)
			ld, err := r.ResolveLayer(context.Background(), ref, ti.toc)
			if err != nil {
				t.Fatalf("ResolveLayer: %v\n%s", err, logs)
			}
			b, err := r.Blob(context.Background(), ld)
			if err != nil {
				t.Fatal(err)
			}
			mu.Lock()
			ranges = nil
			mu.Unlock()

			p := make([]byte, len(want))
			last := 0
			n, err := b.ReadAtProgress(context.Background(), p, 0, func(n int) {
				if n < last || n > len(p) {
					t.Errorf("progress %d after %d (read of %d)", n, last, len(p))
				}
				last = n
				if !bytes.Equal(p[:n], want[:n]) {
					t.Errorf("progress %d: the bytes below it are not the blob's", n)
				}
			})
			if err != nil || n != len(want) || !bytes.Equal(p, want) {
				t.Fatalf("ReadAtProgress = %d, %v (same bytes: %v)\n%s", n, err, bytes.Equal(p, want), logs)
			}
			if last != len(want) {
				t.Errorf("last progress %d, want %d", last, len(want))
			}
			if tc.mirror != nil {
				// The registry is asked only for what the mirror did not
				// send: 7000 bytes in each of its two attempts (Retries 1).
				mu.Lock()
				defer mu.Unlock()
				if len(ranges) != 1 || ranges[0] != fmt.Sprintf("bytes=14000-%d", len(want)-1) {
					t.Errorf("registry asked for %q, want the rest after the mirror's 14000 bytes", ranges)
				}
			}
		})
	}
}
