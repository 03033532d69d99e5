package remote

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	digest "github.com/opencontainers/go-digest"
)

// openLayer pushes an image and returns a Blob for its TOC layer and the
// layer's bytes.
func openLayer(t *testing.T, f *fixture, r *Resolver) (Blob, []byte) {
	t.Helper()
	ti := makeImage(t, 2, 64<<10, 1, nil)
	tagRef, _ := f.pushImage(t, "blobs/app", "v1", ti.img)
	ld, err := r.ResolveLayer(context.Background(), tagRef, ti.toc)
	if err != nil {
		t.Fatalf("ResolveLayer: %v", err)
	}
	b, err := r.Blob(context.Background(), ld)
	if err != nil {
		t.Fatalf("Blob: %v", err)
	}
	want := layerBytes(t, ti.layers[1])
	if b.Size() != int64(len(want)) || b.Digest() != ld.Digest {
		t.Fatalf("blob %s/%d, layer %d bytes", b.Digest(), b.Size(), len(want))
	}
	return b, want
}

func TestBlobReadAt(t *testing.T) {
	f := newFixture(t, nil)
	r, _ := newTestResolver(t, Options{})
	b, blob := openLayer(t, f, r)
	size := int64(len(blob))
	ctx := context.Background()

	tests := []struct {
		name    string
		off     int64
		len     int
		wantN   int
		wantEOF bool
	}{
		{"first byte", 0, 1, 1, false},
		{"head", 0, 4096, 4096, false},
		{"middle", size / 3, 10000, 10000, false},
		{"last byte", size - 1, 1, 1, false},
		{"whole blob", 0, int(size), int(size), false},
		{"crossing the end", size - 10, 100, 10, true},
		{"larger than blob", 0, int(size) + 1, int(size), true},
		{"at the end", size, 10, 0, true},
		{"past the end", size + 100, 10, 0, true},
		{"empty buffer", 5, 0, 0, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := make([]byte, tc.len)
			n, err := b.ReadAt(ctx, p, tc.off)
			if n != tc.wantN {
				t.Errorf("n = %d, want %d", n, tc.wantN)
			}
			if tc.wantEOF && err != io.EOF {
				t.Errorf("err = %v, want io.EOF", err)
			}
			if !tc.wantEOF && err != nil {
				t.Errorf("err = %v", err)
			}
			if n > 0 && !bytes.Equal(p[:n], blob[tc.off:tc.off+int64(n)]) {
				t.Error("wrong bytes")
			}
		})
	}

	t.Run("negative offset", func(t *testing.T) {
		if _, err := b.ReadAt(ctx, make([]byte, 1), -1); err == nil || err == io.EOF {
			t.Errorf("err = %v", err)
		}
	})

	t.Run("concurrent readers", func(t *testing.T) {
		var wg sync.WaitGroup
		for i := 0; i < 16; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				off := int64(i) * size / 16
				p := make([]byte, 3000)
				n, err := b.ReadAt(ctx, p, off)
				if err != nil && err != io.EOF {
					t.Error(err)
					return
				}
				if !bytes.Equal(p[:n], blob[off:off+int64(n)]) {
					t.Errorf("reader %d: wrong bytes", i)
				}
			}()
		}
		wg.Wait()
	})

	if s := r.Stats(); s.BlobBytes < size || s.Requests == 0 || s.Retries != 0 {
		t.Errorf("stats = %+v", s)
	}
}

func TestBlobNoNetworkUntilRead(t *testing.T) {
	var hits atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		http.Error(w, "no", http.StatusTeapot)
	}))
	defer srv.Close()
	r, _ := newTestResolver(t, Options{})
	ld := LayerDesc{
		Ref:    strings.TrimPrefix(srv.URL, "http://") + "/x/y:z",
		Digest: digest.FromString("blob"),
		Size:   10,
	}
	b, err := r.Blob(context.Background(), ld)
	if err != nil {
		t.Fatal(err)
	}
	if hits.Load() != 0 || r.Stats().Requests != 0 {
		t.Fatal("Blob touched the network")
	}
	if _, err := b.ReadAt(context.Background(), make([]byte, 1), 0); err == nil {
		t.Fatal("read from a teapot succeeded")
	}

	for _, bad := range []LayerDesc{
		{Ref: "!!", Digest: ld.Digest, Size: 1},
		{Ref: ld.Ref, Digest: "sha256:zz", Size: 1},
		{Ref: ld.Ref, Digest: ld.Digest, Size: -1},
	} {
		if _, err := r.Blob(context.Background(), bad); err == nil {
			t.Errorf("Blob(%+v) accepted", bad)
		}
	}
}

func TestBlobMissing(t *testing.T) {
	var blobGets atomic.Int64
	f := newFixture(t, func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if isBlobGet(r) {
				blobGets.Add(1)
			}
			h.ServeHTTP(w, r)
		})
	})
	ti := makeImage(t, 1, 256, -1, nil)
	tagRef, _ := f.pushImage(t, "repo", "v1", ti.img)
	r, _ := newTestResolver(t, Options{})
	missing := digest.FromString("not uploaded")
	b, err := r.Blob(context.Background(), LayerDesc{Ref: tagRef, Digest: missing, Size: 100})
	if err != nil {
		t.Fatal(err)
	}
	_, err = b.ReadAt(context.Background(), make([]byte, 10), 20)
	var se *StatusError
	if !errors.As(err, &se) || se.StatusCode != http.StatusNotFound {
		t.Fatalf("err = %v, want a 404 StatusError", err)
	}
	for _, s := range []string{missing.String(), "bytes=20-29", tagRef, "404"} {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("error %q does not mention %q", err, s)
		}
	}
	if n := blobGets.Load(); n != 1 {
		t.Errorf("blob GETs = %d; 404 must not be retried", n)
	}
}

func TestBlobRangeIgnored(t *testing.T) {
	// A server (or proxy) that drops Range answers 200 with the whole blob;
	// that is usable, the reader slices it.
	f := newFixture(t, func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			r.Header.Del("Range")
			h.ServeHTTP(w, r)
		})
	})
	r, _ := newTestResolver(t, Options{})
	b, blob := openLayer(t, f, r)
	for _, off := range []int64{0, 1000, int64(len(blob)) - 7} {
		p := make([]byte, 7)
		n, err := b.ReadAt(context.Background(), p, off)
		if err != nil || !bytes.Equal(p[:n], blob[off:off+7]) {
			t.Errorf("off %d: n=%d err=%v", off, n, err)
		}
	}
}

func TestBlobRedirect(t *testing.T) {
	// Registries hand blobs off to storage/CDN hosts. The Range header must
	// survive the redirect and credentials must not.
	var (
		mu     sync.Mutex
		ranges []string
		leaked atomic.Bool
	)
	cdn := newCDN(t, func(w http.ResponseWriter, r *http.Request) bool {
		if r.Header.Get("Authorization") != "" {
			leaked.Store(true)
		}
		mu.Lock()
		ranges = append(ranges, r.Header.Get("Range"))
		mu.Unlock()
		return true
	})

	f := newFixture(t, func(h http.Handler) http.Handler {
		return requireBasic("u", "p", redirectBlobs(h, func(d string) string { return cdn.URL + "/cdn/" + d }))
	})
	ti := makeImage(t, 1, 32<<10, 0, nil)
	tagRef, _ := f.pushImage(t, "redirected", "v1", ti.img)
	data := cdn.addImage(t, ti)

	r, _ := newTestResolver(t, Options{Keychain: staticKeychain{"u", "p"}})
	ld, err := r.ResolveLayer(context.Background(), tagRef, ti.toc)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := r.Blob(context.Background(), ld)
	p := make([]byte, 100)
	if _, err := b.ReadAt(context.Background(), p, 500); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(p, data[500:600]) {
		t.Error("wrong bytes")
	}
	mu.Lock()
	defer mu.Unlock()
	if last := ranges[len(ranges)-1]; last != "bytes=500-599" {
		t.Errorf("CDN saw Range %q", last)
	}
	if leaked.Load() {
		t.Error("Authorization header was sent to the redirect target")
	}
}

func TestBlobServerCapsRanges(t *testing.T) {
	// Some servers answer a big range with a smaller 206; the reader keeps
	// asking for the rest, and that is not a failure.
	const maxChunk = 1000
	f := newFixture(t, func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			var first, last int64
			if _, err := fmt.Sscanf(r.Header.Get("Range"), "bytes=%d-%d", &first, &last); err == nil && last-first >= maxChunk {
				r.Header.Set("Range", fmt.Sprintf("bytes=%d-%d", first, first+maxChunk-1))
			}
			h.ServeHTTP(w, r)
		})
	})
	r, _ := newTestResolver(t, Options{Retries: -1})
	b, blob := openLayer(t, f, r)
	p := make([]byte, 20*maxChunk+17)
	n, err := b.ReadAt(context.Background(), p, 333)
	if err != nil || n != len(p) || !bytes.Equal(p, blob[333:333+len(p)]) {
		t.Fatalf("n=%d err=%v", n, err)
	}
	if s := r.Stats(); s.Retries != 0 {
		t.Errorf("capped ranges counted as retries: %+v", s)
	}
}
