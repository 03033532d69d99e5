package remote

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"
)

// TestFetchTimeoutBoundsBlobRead: a registry that accepts the request and
// never answers makes ReadAt fail with ErrFetchTimeout (not a context
// error, which layer would take for its own caller giving up) within a
// generous bound of FetchTimeout, even though one attempt alone may take
// longer.
func TestFetchTimeoutBoundsBlobRead(t *testing.T) {
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.Contains(r.URL.Path, "/blobs/") {
			select {
			case <-release:
			case <-r.Context().Done():
			}
			return
		}
		w.WriteHeader(http.StatusOK) // the /v2/ ping
	}))
	defer srv.Close()
	defer close(release)
	host := strings.TrimPrefix(srv.URL, "http://")

	tests := []struct {
		name         string
		fetchTimeout time.Duration
		reqTimeout   time.Duration
	}{
		{"attempt longer than the read budget", 300 * time.Millisecond, time.Minute},
		{"many short attempts", 500 * time.Millisecond, 100 * time.Millisecond},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := New(Options{Insecure: []string{host}, FetchTimeout: tc.fetchTimeout, RequestTimeout: tc.reqTimeout, Retries: 100})
			b, err := r.Blob(context.Background(), LayerDesc{
				Ref:    host + "/x/y:z",
				Digest: digest.FromString("blob"),
				Size:   1000,
			})
			if err != nil {
				t.Fatal(err)
			}
			start := time.Now()
			_, err = b.ReadAt(context.Background(), make([]byte, 10), 0)
			elapsed := time.Since(start)
			if !errors.Is(err, ErrFetchTimeout) {
				t.Fatalf("ReadAt: %v, want ErrFetchTimeout", err)
			}
			if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
				t.Errorf("ReadAt error %v matches a context error", err)
			}
			if elapsed > 10*tc.fetchTimeout {
				t.Errorf("ReadAt took %s with a fetch timeout of %s", elapsed, tc.fetchTimeout)
			}
		})
	}
}
