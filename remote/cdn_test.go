package remote

import (
	"bytes"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

// cdn is a storage host a registry hands blob GETs off to with a redirect,
// serving the blobs of images added to it under /cdn/<digest>. gate, if
// not nil, sees every request first and may answer it itself (return
// false) instead of the blob being served.
type cdn struct {
	*httptest.Server
	mu    sync.Mutex
	blobs map[string][]byte
}

func newCDN(t *testing.T, gate func(w http.ResponseWriter, r *http.Request) bool) *cdn {
	t.Helper()
	c := &cdn{blobs: map[string][]byte{}}
	c.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if gate != nil && !gate(w, r) {
			return
		}
		c.mu.Lock()
		data, ok := c.blobs[strings.TrimPrefix(r.URL.Path, "/cdn/")]
		c.mu.Unlock()
		if !ok {
			http.NotFound(w, r)
			return
		}
		http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(data))
	}))
	t.Cleanup(c.Close)
	return c
}

// addImage makes the CDN serve ti's config and first layer, and returns
// that layer's bytes.
func (c *cdn) addImage(t *testing.T, ti testImage) []byte {
	t.Helper()
	cfgName, err := ti.img.ConfigName()
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := ti.img.RawConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	data := layerBytes(t, ti.layers[0])
	c.mu.Lock()
	defer c.mu.Unlock()
	c.blobs[cfgName.String()] = cfg
	c.blobs[layerDigest(t, ti.layers[0]).String()] = data
	return data
}

// redirectBlobs wraps a registry handler so that blob GETs are redirected
// to location(digest); everything else is served by h.
func redirectBlobs(h http.Handler, location func(digest string) string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if isBlobGet(r) {
			d := r.URL.Path[strings.LastIndex(r.URL.Path, "/")+1:]
			http.Redirect(w, r, location(d), http.StatusTemporaryRedirect)
			return
		}
		h.ServeHTTP(w, r)
	})
}
