package remote

import (
	"bytes"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	ggcr "github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
	digest "github.com/opencontainers/go-digest"
	"github.com/sirupsen/logrus"
)

// fixture is one in-process registry reachable through two servers: push
// talks to it directly (so test setup never meets injected faults), host
// goes through the middleware under test. Both share the storage.
type fixture struct {
	push string
	host string
}

func newFixture(t *testing.T, mw func(http.Handler) http.Handler, opts ...registry.Option) *fixture {
	t.Helper()
	reg := registry.New(append([]registry.Option{registry.Logger(log.New(io.Discard, "", 0))}, opts...)...)
	push := httptest.NewServer(reg)
	t.Cleanup(push.Close)
	var h http.Handler = reg
	if mw != nil {
		h = mw(reg)
	}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return &fixture{
		push: strings.TrimPrefix(push.URL, "http://"),
		host: strings.TrimPrefix(srv.URL, "http://"),
	}
}

// pushImage writes img as repo:tag and returns the tag and digest
// references on the host under test.
func (f *fixture) pushImage(t *testing.T, repo, tag string, img v1.Image) (tagRef, digestRef string) {
	t.Helper()
	ref, err := name.ParseReference(f.push + "/" + repo + ":" + tag)
	if err != nil {
		t.Fatal(err)
	}
	if err := ggcr.Write(ref, img); err != nil {
		t.Fatalf("push %s:%s: %v", repo, tag, err)
	}
	d, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return f.host + "/" + repo + ":" + tag, f.host + "/" + repo + "@" + d.String()
}

func (f *fixture) pushIndex(t *testing.T, repo, tag string, idx v1.ImageIndex) string {
	t.Helper()
	ref, err := name.ParseReference(f.push + "/" + repo + ":" + tag)
	if err != nil {
		t.Fatal(err)
	}
	if err := ggcr.WriteIndex(ref, idx); err != nil {
		t.Fatalf("push index %s:%s: %v", repo, tag, err)
	}
	return f.host + "/" + repo + ":" + tag
}

// testImage is an OCI image with random layers; layer tocAt (if >= 0)
// carries a TOC digest annotation, as eStargz converters write it.
type testImage struct {
	img    v1.Image
	layers []v1.Layer
	toc    digest.Digest
	tocAt  int
}

func makeImage(t *testing.T, nLayers int, size int64, tocAt int, plat *v1.Platform) testImage {
	t.Helper()
	img := mutate.ConfigMediaType(mutate.MediaType(empty.Image, types.OCIManifestSchema1), types.OCIConfigJSON)
	ti := testImage{tocAt: tocAt}
	for i := 0; i < nLayers; i++ {
		l, err := random.Layer(size, types.OCILayer)
		if err != nil {
			t.Fatal(err)
		}
		add := mutate.Addendum{Layer: l}
		if i == tocAt {
			ti.toc = digest.FromString(t.Name() + " toc")
			add.Annotations = map[string]string{TOCDigestAnnotation: ti.toc.String(), "other": "x"}
		}
		if img, err = mutate.Append(img, add); err != nil {
			t.Fatal(err)
		}
		ti.layers = append(ti.layers, l)
	}
	if plat != nil {
		cf, err := img.ConfigFile()
		if err != nil {
			t.Fatal(err)
		}
		cf = cf.DeepCopy()
		cf.OS, cf.Architecture, cf.Variant = plat.OS, plat.Architecture, plat.Variant
		if img, err = mutate.ConfigFile(img, cf); err != nil {
			t.Fatal(err)
		}
	}
	ti.img = img
	return ti
}

func layerDigest(t *testing.T, l v1.Layer) digest.Digest {
	t.Helper()
	h, err := l.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return digest.Digest(h.String())
}

func layerDiffID(t *testing.T, l v1.Layer) digest.Digest {
	t.Helper()
	h, err := l.DiffID()
	if err != nil {
		t.Fatal(err)
	}
	return digest.Digest(h.String())
}

func layerBytes(t *testing.T, l v1.Layer) []byte {
	t.Helper()
	rc, err := l.Compressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// syncBuffer collects log output from concurrent goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// newTestResolver returns a Resolver with fast backoff, logging everything
// into the returned buffer, and no credentials unless opts.Keychain is set.
func newTestResolver(t *testing.T, opts Options) (*Resolver, *syncBuffer) {
	t.Helper()
	buf := &syncBuffer{}
	if opts.Log == nil {
		l := logrus.New()
		l.SetOutput(buf)
		l.SetLevel(logrus.TraceLevel)
		opts.Log = logrus.NewEntry(l)
	}
	if opts.Keychain == nil {
		opts.Keychain = anonKeychain{}
	}
	r := New(opts)
	r.s.backoff = time.Millisecond
	r.s.backoffMx = 10 * time.Millisecond
	return r, buf
}

type anonKeychain struct{}

func (anonKeychain) Resolve(authn.Resource) (authn.Authenticator, error) {
	return authn.Anonymous, nil
}

// isBlobGet tells blob downloads apart from manifests, pings and uploads.
func isBlobGet(r *http.Request) bool {
	return r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/blobs/sha256:")
}

// TOCDigestAnnotation is eStargz's TOC digest annotation: remote passes it
// on as any other (layer.TOCDigestFromAnnotations reads it).
const TOCDigestAnnotation = "containerd.io/snapshot/stargz/toc.digest"
