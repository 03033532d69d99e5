package integration

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"

	"github.com/poolfs/poolfs/test/fixture"
)

// The first lookup of a layer, before the daemon has its image's manifest:
// no /v2/ ping to a registry that needs no auth, and the blob's end (the
// TOC) asked for beside the manifest, by the digest in the path, but used
// only once the manifest confirms it.

// tailReads sorts the requests for blob li: suffix ranges (the read
// beside the manifest) and first-last ranges that end at the blob's end
// (the TOC read after the manifest).
func tailReads(reg *fixture.Registry, li fixture.LayerInfo) (suffix, after int) {
	for _, rec := range reg.Requests() {
		if rec.Method != http.MethodGet || !strings.HasSuffix(rec.Path, "/blobs/"+li.Digest.String()) {
			continue
		}
		if strings.HasPrefix(rec.Range, "bytes=-") {
			suffix++
			continue
		}
		if _, last, ok := strings.Cut(rec.Range, "-"); ok {
			if end, err := strconv.ParseInt(last, 10, 64); err == nil && end == li.Size-1 {
				after++
			}
		}
	}
	return suffix, after
}

// holdManifests makes reg answer a manifest request of each repository in
// blobs only once a GET of that repository's blob named there has come,
// or wait has passed; what it returns says whether a wait ran out.
func holdManifests(reg *fixture.Registry, wait time.Duration, blobs map[string]digest.Digest) *atomic.Bool {
	awaited := map[string]string{}
	for repo, d := range blobs {
		awaited[repo] = "/v2/" + repo + "/blobs/" + d.String()
	}
	return fixture.HoldManifestsUntil(reg, wait, awaited)
}

func noPings(t *testing.T, reg *fixture.Registry) {
	t.Helper()
	for _, rec := range reg.Requests() {
		if rec.Path == "/v2/" {
			t.Errorf("the registry was pinged:\n%s", reg.RequestLog())
			return
		}
	}
}

// TestFirstLookupBlobBeforeManifest: the registry holds back its answer to
// the manifest request until the layer's blob has been asked for, so a
// daemon that asks for the blob only once it has the manifest makes the
// gate time out. The TOC comes from that first request: no other read of
// the blob's end follows.
func TestFirstLookupBlobBeforeManifest(t *testing.T) {
	reg := fixture.StartRegistry(t)
	tarB := layerTar(61, 8)
	ref, layers := pushImage(t, reg, "test/crit", [][]byte{tarB}, fixture.ImageOptions{})
	li := layers[0]
	gateTimedOut := holdManifests(reg, 30*time.Second, map[string]digest.Digest{"test/crit": li.Digest})
	reg.ResetStats()
	m := mountPool(t, reg)
	compareTree(t, filepath.Join(m.grammar2(ref, li.Digest.String()), "diff"), tarB)
	if gateTimedOut.Load() {
		t.Errorf("the manifest was answered before the layer's blob was asked for:\n%s", reg.RequestLog())
	}
	noPings(t, reg)
	if suffix, after := tailReads(reg, li); suffix != 1 || after != 0 {
		t.Errorf("%d reads of the blob's end beside the manifest and %d after it, want 1 and 0:\n%s", suffix, after, reg.RequestLog())
	}
	// The whole tree was read, so the blob's bytes the layer reports as
	// fetched are every byte the registry sent for it, the early read of
	// its end included.
	if got, want := fetchedBytes(t, m, li), servedBytes(reg, li); got != want {
		t.Errorf("the layer reports %d bytes fetched; the registry sent %d distinct bytes of its blob:\n%s", got, want, reg.RequestLog())
	}
}

// fetchedBytes is the distinct bytes of li's blob the pool reports as
// received (what `poolfs status` shows).
func fetchedBytes(t *testing.T, m *mounted, li fixture.LayerInfo) int64 {
	t.Helper()
	for _, l := range m.Pool.Layers() {
		if l.Desc.Digest == li.Digest {
			f, ok := l.Blob.(interface{ FetchedBytes() int64 })
			if !ok {
				t.Fatalf("layer %s: its blob does not count fetched bytes", li.Digest)
			}
			return f.FetchedBytes()
		}
	}
	t.Fatalf("layer %s is not in the pool", li.Digest)
	return 0
}

// servedBytes is the distinct bytes of li's blob the registry sent in
// answers to range requests.
func servedBytes(reg *fixture.Registry, li fixture.LayerInfo) int64 {
	var ivs [][2]int64
	for _, rec := range reg.Requests() {
		if rec.Method != http.MethodGet || !strings.HasSuffix(rec.Path, "/blobs/"+li.Digest.String()) || rec.Status != http.StatusPartialContent {
			continue
		}
		var start, end, size int64
		if _, err := fmt.Sscanf(rec.ContentRange, "bytes %d-%d/%d", &start, &end, &size); err == nil {
			ivs = append(ivs, [2]int64{start, end + 1})
		}
	}
	sort.Slice(ivs, func(i, j int) bool { return ivs[i][0] < ivs[j][0] })
	var total, reach int64
	for _, iv := range ivs {
		if iv[1] > reach {
			total += iv[1] - max(iv[0], reach)
			reach = iv[1]
		}
	}
	return total
}

// TestFirstLookupTokenRegistry: a registry that wants a bearer token (one
// for anyone, as Docker Hub hands out for public images) answers the first
// requests with its challenge, which stands in for the ping.
func TestFirstLookupTokenRegistry(t *testing.T) {
	reg := fixture.StartRegistry(t)
	tarB := layerTar(62, 8)
	ref, layers := pushImage(t, reg, "test/token", [][]byte{tarB}, fixture.ImageOptions{})
	li := layers[0]
	var issued atomic.Int64
	reg.SetMiddleware(func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/token" {
				_ = json.NewEncoder(w).Encode(map[string]string{"token": fmt.Sprintf("anon-%d", issued.Add(1))})
				return
			}
			if !strings.HasPrefix(r.Header.Get("Authorization"), "Bearer anon-") {
				w.Header().Set("WWW-Authenticate", fmt.Sprintf(`Bearer realm="http://%s/token",service="poolfs-test"`, r.Host))
				http.Error(w, "token required", http.StatusUnauthorized)
				return
			}
			next.ServeHTTP(w, r)
		})
	})
	reg.ResetStats()
	m := mountPool(t, reg)
	compareTree(t, filepath.Join(m.grammar2(ref, li.Digest.String()), "diff"), tarB)
	noPings(t, reg)
	if issued.Load() == 0 {
		t.Error("no token was asked for")
	}
}

// TestFirstLookupTailNotServedUnlessItFits: the answer to the read beside
// the manifest is doctored, with the size of another blob or with its TOC
// spoiled; the layer is still served right, from the TOC read again.
func TestFirstLookupTailNotServedUnlessItFits(t *testing.T) {
	for _, tc := range []struct {
		name   string
		doctor func(li fixture.LayerInfo, contentRange string, body []byte) (string, []byte)
	}{
		{"size", func(li fixture.LayerInfo, _ string, body []byte) (string, []byte) {
			// The same bytes at the end of a blob 1000 bytes longer (the
			// layer is smaller than the window read: all of it).
			longer := append(make([]byte, 1000), body...)
			return fmt.Sprintf("bytes 0-%d/%d", len(longer)-1, len(longer)), longer
		}},
		{"toc", func(li fixture.LayerInfo, contentRange string, body []byte) (string, []byte) {
			spoiled := append([]byte(nil), body...)
			for i := len(spoiled) - 51 - 100; i < len(spoiled)-51-60; i++ {
				spoiled[i] ^= 0xff // the TOC's compressed JSON, before the gzip trailer and the footer
			}
			return contentRange, spoiled
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			reg := fixture.StartRegistry(t)
			tarB := layerTar(63, 8)
			ref, layers := pushImage(t, reg, "test/doctored", [][]byte{tarB}, fixture.ImageOptions{})
			li := layers[0]
			reg.SetMiddleware(func(next http.Handler) http.Handler {
				return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					if !strings.HasPrefix(r.Header.Get("Range"), "bytes=-") || !strings.HasSuffix(r.URL.Path, li.Digest.String()) {
						next.ServeHTTP(w, r)
						return
					}
					rec := httptest.NewRecorder()
					next.ServeHTTP(rec, r)
					cr, body := tc.doctor(li, rec.Header().Get("Content-Range"), rec.Body.Bytes())
					w.Header().Set("Content-Range", cr)
					w.Header().Set("Content-Length", strconv.Itoa(len(body)))
					w.WriteHeader(http.StatusPartialContent)
					_, _ = w.Write(body)
				})
			})
			reg.ResetStats()
			m := mountPool(t, reg)
			compareTree(t, filepath.Join(m.grammar2(ref, li.Digest.String()), "diff"), tarB)
			if suffix, after := tailReads(reg, li); suffix != 1 || after == 0 {
				t.Errorf("%d reads of the blob's end beside the manifest and %d after it, want 1 and at least 1:\n%s", suffix, after, reg.RequestLog())
			}
		})
	}
}

// TestFirstLookupRegistryWithoutSuffixRanges: a registry that refuses
// suffix ranges (416) or ignores them (the whole blob, 200) still serves
// the layer, from the TOC read after the manifest.
func TestFirstLookupRegistryWithoutSuffixRanges(t *testing.T) {
	for _, tc := range []struct {
		name string
		opts []fixture.RegistryOption
		mw   func(http.Handler) http.Handler
	}{
		{"416", []fixture.RegistryOption{fixture.WithoutSuffixRanges()}, nil},
		{"200", nil, func(next http.Handler) http.Handler {
			return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if strings.HasPrefix(r.Header.Get("Range"), "bytes=-") {
					r.Header.Del("Range")
				}
				next.ServeHTTP(w, r)
			})
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			reg := fixture.StartRegistry(t, tc.opts...)
			tarB := layerTar(64, 8)
			ref, layers := pushImage(t, reg, "test/nosuffix", [][]byte{tarB}, fixture.ImageOptions{})
			li := layers[0]
			if tc.mw != nil {
				reg.SetMiddleware(tc.mw)
			}
			reg.ResetStats()
			m := mountPool(t, reg)
			compareTree(t, filepath.Join(m.grammar2(ref, li.Digest.String()), "diff"), tarB)
			if suffix, after := tailReads(reg, li); suffix != 1 || after != 1 {
				t.Errorf("%d reads of the blob's end beside the manifest and %d after it, want 1 and 1:\n%s", suffix, after, reg.RequestLog())
			}
		})
	}
}

// TestFirstLookupByTOCDigest: podman 5.1 and later name layers by their
// TOC digest, which addresses no blob. The first such lookup's read of the
// "blob" beside the manifest gets a 404; once a manifest has shown that a
// path named a TOC digest, first lookups of other images make no such
// read.
func TestFirstLookupByTOCDigest(t *testing.T) {
	reg := fixture.StartRegistry(t)
	tars := [][]byte{layerTar(64, 6), layerTar(65, 6)}
	var refs []string
	var layers []fixture.LayerInfo
	for i, tarB := range tars {
		ref, ls := pushImage(t, reg, fmt.Sprintf("test/bytoc%d", i), [][]byte{tarB}, fixture.ImageOptions{})
		refs, layers = append(refs, ref), append(layers, ls[0])
	}
	// Each manifest is answered once the read beside it has reached the
	// registry, or after a while: the read is not dropped unsent.
	holdManifests(reg, 300*time.Millisecond, map[string]digest.Digest{"test/bytoc0": layers[0].TOCDigest, "test/bytoc1": layers[1].TOCDigest})
	reg.ResetStats()
	m := mountPool(t, reg)
	asks := func(li fixture.LayerInfo) (n int) {
		for _, rec := range reg.Requests() {
			if strings.HasSuffix(rec.Path, "/blobs/"+li.TOCDigest.String()) {
				n++
			}
		}
		return n
	}
	for i, li := range layers {
		compareTree(t, filepath.Join(m.grammar2(refs[i], li.TOCDigest.String()), "diff"), tars[i])
		if want := map[int]int{0: 1, 1: 0}[i]; asks(li) != want {
			t.Errorf("image %d: %d requests for a blob named by its layer's TOC digest, want %d:\n%s", i, asks(li), want, reg.RequestLog())
		}
	}
}
