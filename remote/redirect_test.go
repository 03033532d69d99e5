package remote

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"sync/atomic"
	"testing"
)

// TestBlobRedirectExpired: a registry hands out signed storage URLs, and
// the first URL of every request has expired by the time it is used (the
// storage answers 403). The read asks the registry again, which signs a
// fresh URL, and succeeds, even with no transient-error retries allowed.
func TestBlobRedirectExpired(t *testing.T) {
	var refused, signed atomic.Int64
	cdn := newCDN(t, func(w http.ResponseWriter, r *http.Request) bool {
		// Odd signatures are the stale ones.
		var sig int64
		fmt.Sscanf(r.URL.Query().Get("sig"), "%d", &sig)
		if sig%2 == 1 {
			refused.Add(1)
			http.Error(w, "<Error><Code>AccessDenied</Code><Message>Request has expired</Message></Error>", http.StatusForbidden)
			return false
		}
		return true
	})

	f := newFixture(t, func(h http.Handler) http.Handler {
		return redirectBlobs(h, func(d string) string { return fmt.Sprintf("%s/cdn/%s?sig=%d", cdn.URL, d, signed.Add(1)) })
	})
	ti := makeImage(t, 1, 32<<10, 0, nil)
	tagRef, _ := f.pushImage(t, "signed", "v1", ti.img)
	data := cdn.addImage(t, ti)

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
