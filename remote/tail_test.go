package remote

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"
)

// blobServer serves one blob at /v2/x/y/blobs/<digest>, ranges as
// http.ServeContent does them (suffix ranges included) unless answer
// says otherwise, and counts the requests for it.
func blobServer(t *testing.T, blob []byte, answer func(w http.ResponseWriter, r *http.Request) bool) (host string, dgst digest.Digest, requests *atomic.Int64) {
	t.Helper()
	dgst = digest.FromBytes(blob)
	requests = &atomic.Int64{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/v2/x/y/blobs/"+dgst.String() {
			http.NotFound(w, r)
			return
		}
		requests.Add(1)
		if answer != nil && answer(w, r) {
			return
		}
		http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(blob))
	}))
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://"), dgst, requests
}

func TestTail(t *testing.T) {
	blob := make([]byte, 300<<10)
	for i := range blob {
		blob[i] = byte(rand.N(256))
	}
	host, dgst, _ := blobServer(t, blob, nil)
	r, _ := newTestResolver(t, Options{})
	ctx := context.Background()
	var reported int
	data, size, err := r.Tail(ctx, host+"/x/y:z", dgst, 100<<10, func(n int) { reported = n })
	if err != nil {
		t.Fatal(err)
	}
	if size != int64(len(blob)) || !bytes.Equal(data, blob[len(blob)-100<<10:]) || reported != len(data) {
		t.Errorf("got %d bytes (reported %d), size %d; want the last %d of %d", len(data), reported, size, 100<<10, len(blob))
	}
	// Longer than the blob: all of it.
	data, size, err = r.Tail(ctx, host+"/x/y:z", dgst, 1<<20, nil)
	if err != nil || size != int64(len(blob)) || !bytes.Equal(data, blob) {
		t.Errorf("n > size: %d bytes, size %d, %v", len(data), size, err)
	}
	// A blob the repository does not have.
	if _, _, err := r.Tail(ctx, host+"/x/y:z", digest.FromString("other"), 100, nil); err == nil {
		t.Error("no error for a missing blob")
	}
}

// TestTailRefused: a registry that refuses suffix ranges (416) or sends
// the whole blob (200) gives ErrNoSuffixRange, and is asked once.
func TestTailRefused(t *testing.T) {
	blob := bytes.Repeat([]byte("poolfs"), 2<<20) // 12 MiB
	for _, tc := range []struct {
		name   string
		answer func(w http.ResponseWriter, r *http.Request) bool
	}{
		{"416", func(w http.ResponseWriter, r *http.Request) bool {
			if strings.HasPrefix(r.Header.Get("Range"), "bytes=-") {
				http.Error(w, "We don't understand your Range", http.StatusRequestedRangeNotSatisfiable)
				return true
			}
			return false
		}},
		{"200", func(w http.ResponseWriter, r *http.Request) bool {
			w.Header().Set("Content-Length", "12582912")
			_, _ = w.Write(blob)
			return true
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			host, dgst, requests := blobServer(t, blob, tc.answer)
			r, _ := newTestResolver(t, Options{})
			for range 2 {
				_, _, err := r.Tail(context.Background(), host+"/x/y:z", dgst, 1<<20, nil)
				if !errors.Is(err, ErrNoSuffixRange) {
					t.Fatalf("err = %v, want ErrNoSuffixRange", err)
				}
			}
			if n := requests.Load(); n != 1 {
				t.Errorf("%d requests, want 1", n)
			}
			if got := r.Stats().BlobBytes; got >= int64(len(blob)) {
				t.Errorf("read %d bytes of the refusing answer", got)
			}
		})
	}
}

// TestTailOneAttempt: Tail is a head start, not a read a caller waits on:
// an error the ordinary reads would retry (503, a 429 with Retry-After) is
// reported after one request.
func TestTailOneAttempt(t *testing.T) {
	blob := bytes.Repeat([]byte("poolfs"), 1<<10)
	for _, tc := range []struct {
		name     string
		status   int
		header   [2]string
		requests int64
	}{
		{"503", http.StatusServiceUnavailable, [2]string{}, 1},
		{"429", http.StatusTooManyRequests, [2]string{"Retry-After", "1"}, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			host, dgst, requests := blobServer(t, blob, func(w http.ResponseWriter, r *http.Request) bool {
				if tc.header[0] != "" {
					w.Header().Set(tc.header[0], tc.header[1])
				}
				http.Error(w, http.StatusText(tc.status), tc.status)
				return true
			})
			r, _ := newTestResolver(t, Options{})
			if _, _, err := r.Tail(context.Background(), host+"/x/y:z", dgst, 100, nil); err == nil {
				t.Fatal("no error")
			}
			if n := requests.Load(); n != tc.requests {
				t.Errorf("%d requests, want %d", n, tc.requests)
			}
		})
	}
}
