package integration

import (
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/poolfs/poolfs/remote"
	"github.com/poolfs/poolfs/test/fixture"
)

// junkManifests answers every manifest request with body (as an OCI
// manifest) and passes everything else through.
func junkManifests(body string) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if !strings.Contains(r.URL.Path, "/manifests/") {
				next.ServeHTTP(w, r)
				return
			}
			w.Header().Set("Content-Type", "application/vnd.oci.image.manifest.v1+json")
			w.Header().Set("Content-Length", strconv.Itoa(len(body)))
			if r.Method == http.MethodHead {
				return
			}
			_, _ = w.Write([]byte(body))
		})
	}
}

// TestMalformedManifests: whatever junk the registry sends as a manifest,
// a lookup is a clean, prompt ENOENT (the client then pulls normally), the
// daemon keeps serving, and the failure is not remembered once the
// registry answers properly.
func TestMalformedManifests(t *testing.T) {
	reg := fixture.StartRegistry(t)
	tarBytes := fixture.KitchenSinkTar()
	ref, layers := pushImage(t, reg, "test/junk", [][]byte{tarBytes}, fixture.ImageOptions{})
	dg := layers[0].Digest.String()
	m := mountPoolOpts(t, reg, mountOpts{Remote: remote.Options{RequestTimeout: 5 * time.Second}})
	diff := filepath.Join(m.grammar2(ref, dg), "diff")

	junk := []struct{ name, body string }{
		{"empty", ""},
		{"not JSON", "<html>oops</html>"},
		{"truncated JSON", `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","layers":[{"digest":"sha`},
		{"JSON array", `[1,2,3]`},
		{"wrong schema version", `{"schemaVersion":1,"layers":[]}`},
		{"layers of wrong type", `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{},"layers":"x"}`},
		{"bad layer digest", `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:zz","size":2},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"` + dg + `","size":-5}]}`},
		{"negative config size", `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"` + dg + `","size":-1},"layers":[]}`},
		{"index with no manifests", `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}`},
		{"deep nesting", strings.Repeat("[", 100000)},
	}
	for _, j := range junk {
		t.Run(j.name, func(t *testing.T) {
			reg.SetMiddleware(junkManifests(j.body))
			start := time.Now()
			_, err := os.Stat(diff)
			elapsed := time.Since(start)
			if !errors.Is(err, syscall.ENOENT) {
				t.Errorf("stat with a junk manifest: %v, want ENOENT", err)
			}
			if elapsed > 30*time.Second {
				t.Errorf("the refusal took %s", elapsed)
			}
		})
	}

	reg.SetMiddleware(nil)
	compareTree(t, diff, tarBytes)
}
