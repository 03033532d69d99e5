package remote

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestBlobRedirectExpired: a registry hands out signed storage URLs, and
// the first URL of every request has expired by the time it is used (the
// storage answers 403). The read asks the registry again, which signs a
// fresh URL, and succeeds, even with no transient-error retries allowed.
func TestBlobRedirectExpired(t *testing.T) {
	var (
		mu      sync.Mutex
		blobs   = map[string][]byte{}
		refused atomic.Int64
		signed  atomic.Int64
	)
	cdn := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// Odd signatures are the stale ones.
		var sig int64
		fmt.Sscanf(r.URL.Query().Get("sig"), "%d", &sig)
		if sig%2 == 1 {
			refused.Add(1)
			http.Error(w, "<Error><Code>AccessDenied</Code><Message>Request has expired</Message></Error>", http.StatusForbidden)
			return
		}
		mu.Lock()
		data, ok := blobs[strings.TrimPrefix(r.URL.Path, "/cdn/")]
		mu.Unlock()
		if !ok {
			http.NotFound(w, r)
			return
		}
		http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(data))
	}))
	defer cdn.Close()

	f := newFixture(t, func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if isBlobGet(r) {
				d := r.URL.Path[strings.LastIndex(r.URL.Path, "/")+1:]
				http.Redirect(w, r, fmt.Sprintf("%s/cdn/%s?sig=%d", cdn.URL, d, signed.Add(1)), http.StatusTemporaryRedirect)
				return
			}
			h.ServeHTTP(w, r)
		})
	})
	ti := makeImage(t, 1, 32<<10, 0, nil)
	tagRef, _ := f.pushImage(t, "signed", "v1", ti.img)
	cfgName, _ := ti.img.ConfigName()
	cfg, _ := ti.img.RawConfigFile()
	data := layerBytes(t, ti.layers[0])
	mu.Lock()
	blobs[cfgName.String()] = cfg
	blobs[layerDigest(t, ti.layers[0]).String()] = data
	mu.Unlock()

	r, _ := newTestResolver(t, Options{Retries: -1})
	ld, err := r.ResolveLayer(context.Background(), tagRef, ti.toc)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := r.Blob(context.Background(), ld)
	for _, off := range []int64{0, 500, int64(len(data)) - 100} {
		p := make([]byte, 100)
		if _, err := b.ReadAt(context.Background(), p, off); err != nil {
			t.Fatalf("read at %d: %v", off, err)
		}
		if !bytes.Equal(p, data[off:off+100]) {
			t.Errorf("read at %d: wrong bytes", off)
		}
	}
	if refused.Load() == 0 {
		t.Error("no stale URL was refused: the test proves nothing")
	}
}
