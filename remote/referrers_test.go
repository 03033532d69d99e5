package remote

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/registry"
	digest "github.com/opencontainers/go-digest"
)

// referrerLog records the referrers lookups a registry saw.
type referrerLog struct {
	mu   sync.Mutex
	reqs []string // path?query of referrers API and referrers tag GETs
}

func (l *referrerLog) middleware(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet && (strings.Contains(r.URL.Path, "/referrers/") || strings.Contains(r.URL.Path, "/manifests/sha256-")) {
			l.mu.Lock()
			l.reqs = append(l.reqs, r.URL.RequestURI())
			l.mu.Unlock()
		}
		next.ServeHTTP(w, r)
	})
}

func (l *referrerLog) take() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := l.reqs
	l.reqs = nil
	return out
}

// TestReferrers pushes artifacts of two types onto an image and lists
// them by type, through the referrers API (asked with ?artifactType=) and
// through the referrers tag, which a registry seen without the API gets
// asked for directly afterwards.
func TestReferrers(t *testing.T) {
	for _, api := range []bool{true, false} {
		t.Run(map[bool]string{true: "referrers API", false: "referrers tag"}[api], func(t *testing.T) {
			var opts []registry.Option
			if api {
				opts = append(opts, registry.WithReferrersSupport(true))
			}
			var rl referrerLog
			f := newFixture(t, rl.middleware, opts...)
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			r, _ := newTestResolver(t, Options{})
			const typeA, typeB = "application/vnd.test.a", "application/vnd.test.b"

			var subjects []digest.Digest
			for i, repo := range []string{"app/one", "app/two"} {
				tagRef, digestRef := f.pushImage(t, repo, "v1", makeImage(t, 1, 100, -1, nil).img)
				subject := digest.Digest(digestRef[strings.LastIndexByte(digestRef, '@')+1:])
				subjects = append(subjects, subject)
				blob := []byte("payload " + repo)
				pa, err := r.PushArtifact(ctx, tagRef, Artifact{ArtifactType: typeA, Annotations: map[string]string{"n": "a"},
					Blobs: []ArtifactBlob{{MediaType: "application/vnd.test.blob", Data: blob, Annotations: map[string]string{"k": "v"}}}})
				if err != nil {
					t.Fatal(err)
				}
				if pa.Subject != subject {
					t.Errorf("pushed onto %s, want %s", pa.Subject, subject)
				}
				if _, err := r.PushArtifact(ctx, tagRef, Artifact{ArtifactType: typeB, Blobs: []ArtifactBlob{{MediaType: "x/y", Data: []byte("b")}}}); err != nil {
					t.Fatal(err)
				}
				rl.take()

				got, err := r.Referrers(ctx, tagRef, subject, typeA)
				if err != nil {
					t.Fatal(err)
				}
				if len(got) != 1 || got[0].Digest != pa.Digest || got[0].ArtifactType != typeA || got[0].Annotations["n"] != "a" {
					t.Fatalf("referrers of type A: %+v, want the one pushed (%s)", got, pa.Digest)
				}
				reqs := rl.take()
				switch {
				case api && (len(reqs) != 1 || !strings.Contains(reqs[0], "artifactType=application%2Fvnd.test.a")):
					t.Errorf("lookup asked %q, want one referrers request filtered by type", reqs)
				case !api && i == 0 && len(reqs) != 2:
					t.Errorf("first lookup asked %q, want the referrers API, then the tag", reqs)
				case !api && i == 1 && (len(reqs) != 1 || !strings.Contains(reqs[0], "/manifests/sha256-")):
					t.Errorf("lookup on a registry known without the API asked %q, want the tag alone", reqs)
				}

				art, err := r.ReadArtifact(ctx, tagRef, pa.Digest)
				if err != nil {
					t.Fatal(err)
				}
				if art.ArtifactType != typeA || len(art.Blobs) != 1 || art.Blobs[0].Annotations["k"] != "v" || art.Blobs[0].MediaType != "application/vnd.test.blob" {
					t.Fatalf("artifact read back: %+v", art)
				}
				data, err := r.ReadBlob(ctx, tagRef, art.Blobs[0].Digest, art.Blobs[0].Size)
				if err != nil || !bytes.Equal(data, blob) {
					t.Fatalf("blob read back: %q, %v", data, err)
				}
				if _, err := r.ReadBlob(ctx, tagRef, digest.FromString("other"), art.Blobs[0].Size); err == nil {
					t.Error("reading a blob that is not there succeeded")
				}
			}
			none, err := r.Referrers(ctx, f.host+"/app/one:v1", subjects[1], typeA)
			if err != nil || len(none) != 0 {
				t.Errorf("referrers of another repository's image: %+v, %v; want none", none, err)
			}
		})
	}
}

// TestReferrersPaged: a referrers answer in pages (Link: <...>; rel="next")
// is followed to its last page on the same registry; a next page on
// another host is not asked for.
func TestReferrersPaged(t *testing.T) {
	const typeA = "application/vnd.test.a"
	var rl referrerLog
	desc := func(n int) string {
		return fmt.Sprintf(`{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"%s","size":10,"artifactType":"%s","annotations":{"n":"%d"}}`,
			digest.FromString(fmt.Sprint(n)), typeA, n)
	}
	pages := func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if !strings.Contains(r.URL.Path, "/referrers/") {
				next.ServeHTTP(w, r)
				return
			}
			w.Header().Set("Content-Type", "application/vnd.oci.image.index.v1+json")
			var body string
			switch r.URL.Query().Get("last") {
			case "":
				w.Header().Set("Link", fmt.Sprintf(`<%s?n=1&last=a>; rel="next"`, r.URL.Path))
				body = desc(1)
			case "a":
				w.Header().Add("Link", `<http://elsewhere.example/x>; rel="prev"`)
				w.Header().Add("Link", fmt.Sprintf(`<%s?n=1&last=b>; rel="next"`, r.URL.Path))
				body = desc(2)
			case "b":
				w.Header().Set("Link", `<http://elsewhere.example/v2/x/referrers/y?last=c>; rel="next"`)
				body = desc(3)
			default:
				t.Errorf("asked for page %q", r.URL.RawQuery)
			}
			fmt.Fprintf(w, `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[%s]}`, body)
		})
	}
	f := newFixture(t, func(next http.Handler) http.Handler { return rl.middleware(pages(next)) }, registry.WithReferrersSupport(true))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	r, _ := newTestResolver(t, Options{})
	tagRef, digestRef := f.pushImage(t, "app/paged", "v1", makeImage(t, 1, 100, -1, nil).img)
	subject := digest.Digest(digestRef[strings.LastIndexByte(digestRef, '@')+1:])
	got, err := r.Referrers(ctx, tagRef, subject, typeA)
	if err != nil {
		t.Fatal(err)
	}
	var ns []string
	for _, g := range got {
		ns = append(ns, g.Annotations["n"])
	}
	if strings.Join(ns, ",") != "1,2,3" {
		t.Errorf("referrers %v, want those of the three pages", ns)
	}
	if reqs := rl.take(); len(reqs) != 3 {
		t.Errorf("asked %q, want the three pages on the registry", reqs)
	}
}
