package remote

import (
	"bytes"
	"context"
	"errors"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/poolfs/poolfs/remote/regconf"
)

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestEndpointSchemes: insecure from registries.conf means plain HTTP for
// that endpoint only.
func TestEndpointSchemes(t *testing.T) {
	conf := filepath.Join(t.TempDir(), "registries.conf")
	writeFile(t, conf, `
[[registry]]
prefix = "quay.io/team"
location = "internal.lan/quay-team"
insecure = true
[[registry.mirror]]
location = "mirror.lan"
`)
	rs, err := regconf.Load(conf)
	if err != nil {
		t.Fatal(err)
	}
	r, _ := newTestResolver(t, Options{Registries: rs})
	eps, err := r.endpoints("quay.io/team/app:2")
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, ep := range eps {
		got = append(got, ep.Context().Scheme()+"://"+ep.String())
	}
	want := []string{"https://mirror.lan/app:2", "http://internal.lan/quay-team/app:2"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("endpoints %v, want %v", got, want)
	}
	eps, _ = r.endpoints("quay.io/other/app:2")
	if len(eps) != 1 || eps[0].Context().Scheme() != "https" {
		t.Errorf("unmatched reference: %v", eps)
	}
}

// deadHost returns a loopback address nothing listens on.
func deadHost(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// TestMirrorFallthrough: the first mirror is down, the second serves; the
// logical registry (which does not exist) is never needed, and the layer
// keeps its logical reference.
func TestMirrorFallthrough(t *testing.T) {
	var mirrorReqs atomic.Int64
	f := newFixture(t, func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			mirrorReqs.Add(1)
			h.ServeHTTP(w, r)
		})
	})
	ti := makeImage(t, 2, 32<<10, 1, nil)
	f.pushImage(t, "library/app", "v1", ti.img)
	want := layerBytes(t, ti.layers[1])

	conf := filepath.Join(t.TempDir(), "registries.conf")
	writeFile(t, conf, `
[[registry]]
prefix = "registry.invalid"
[[registry.mirror]]
location = "`+deadHost(t)+`"
[[registry.mirror]]
location = "`+f.host+`"
`)
	rs, err := regconf.Load(conf)
	if err != nil {
		t.Fatal(err)
	}
	r, logs := newTestResolver(t, Options{Registries: rs, Retries: 1})
	const logical = "registry.invalid/library/app:v1"
	ld, err := r.ResolveLayer(context.Background(), logical, ti.toc)
	if err != nil {
		t.Fatalf("ResolveLayer: %v\n%s", err, logs)
	}
	if ld.Ref != logical {
		t.Errorf("Ref = %q, want the logical %q", ld.Ref, logical)
	}
	b, err := r.Blob(context.Background(), ld)
	if err != nil {
		t.Fatal(err)
	}
	for _, off := range []int64{0, 1000, 20000} {
		p := make([]byte, 4096)
		if _, err := b.ReadAt(context.Background(), p, off); err != nil || !bytes.Equal(p, want[off:off+4096]) {
			t.Fatalf("ReadAt %d: %v", off, err)
		}
	}
	if mirrorReqs.Load() == 0 {
		t.Error("the second mirror served nothing")
	}
	if n := strings.Count(logs.String(), "endpoint failed; trying the next one"); n != 2 {
		// Once for the manifest, once for the first blob read: later reads
		// start at the mirror that worked.
		t.Errorf("fell through %d times, want 2\n%s", n, logs)
	}
	if got := b.(interface{ FetchedBytes() int64 }).FetchedBytes(); got != 4096+4096+4096-(4096-1000) {
		t.Errorf("FetchedBytes = %d", got)
	}
}

// behindEmptyMirror serves ti's image as example.com/team/app:v1 from a
// registry (its location rewritten by registries.conf) behind a mirror
// that has nothing, and returns a resolver so configured.
func behindEmptyMirror(t *testing.T, ti testImage) (*Resolver, *syncBuffer) {
	t.Helper()
	empty := newFixture(t, nil)
	f := newFixture(t, nil)
	f.pushImage(t, "team/app", "v1", ti.img)
	conf := filepath.Join(t.TempDir(), "registries.conf")
	writeFile(t, conf, `
[[registry]]
prefix = "example.com/team"
location = "`+f.host+`/team"
[[registry.mirror]]
location = "`+empty.host+`/team"
`)
	rs, err := regconf.Load(conf)
	if err != nil {
		t.Fatal(err)
	}
	return newTestResolver(t, Options{Registries: rs})
}

// TestMirrorMissingImage: a mirror that answers 404 falls through to the
// registry, reached at its rewritten location.
func TestMirrorMissingImage(t *testing.T) {
	ti := makeImage(t, 1, 16<<10, 0, nil)
	r, logs := behindEmptyMirror(t, ti)
	ld, err := r.ResolveLayer(context.Background(), "example.com/team/app:v1", ti.toc)
	if err != nil {
		t.Fatalf("ResolveLayer: %v\n%s", err, logs)
	}
	b, _ := r.Blob(context.Background(), ld)
	p := make([]byte, 100)
	if _, err := b.ReadAt(context.Background(), p, 0); err != nil || !bytes.Equal(p, layerBytes(t, ti.layers[0])[:100]) {
		t.Fatalf("ReadAt: %v", err)
	}
}

func TestBlockedRegistry(t *testing.T) {
	var reqs atomic.Int64
	f := newFixture(t, func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { reqs.Add(1); h.ServeHTTP(w, r) })
	})
	ti := makeImage(t, 1, 1<<10, 0, nil)
	tagRef, _ := f.pushImage(t, "app", "v1", ti.img)
	conf := filepath.Join(t.TempDir(), "registries.conf")
	writeFile(t, conf, "[[registry]]\nlocation = \""+f.host+"\"\nblocked = true\n")
	rs, err := regconf.Load(conf)
	if err != nil {
		t.Fatal(err)
	}
	r, _ := newTestResolver(t, Options{Registries: rs})
	_, err = r.ResolveLayer(context.Background(), tagRef, ti.toc)
	if !errors.Is(err, regconf.ErrBlocked) || !strings.Contains(err.Error(), "blocked") {
		t.Errorf("err = %v, want regconf.ErrBlocked", err)
	}
	if _, err := r.Blob(context.Background(), LayerDesc{Ref: tagRef, Digest: layerDigest(t, ti.layers[0]), Size: 1}); !errors.Is(err, regconf.ErrBlocked) {
		t.Errorf("Blob: %v, want regconf.ErrBlocked", err)
	}
	if n := reqs.Load(); n != 0 {
		t.Errorf("%d requests reached a blocked registry", n)
	}
}

func TestRangeSet(t *testing.T) {
	var s rangeSet
	for _, iv := range [][2]int64{{10, 20}, {30, 40}, {15, 35}, {0, 5}, {5, 6}, {100, 100}, {39, 41}} {
		s.add(iv[0], iv[1])
	}
	if got := s.total(); got != 6+31 {
		t.Errorf("total = %d, want 37 (%v)", got, s.ivs)
	}
}

func TestCheckRef(t *testing.T) {
	conf := filepath.Join(t.TempDir(), "registries.conf")
	writeFile(t, conf, "[[registry]]\nprefix = \"reg.lan/secret\"\nblocked = true\n")
	rs, err := regconf.Load(conf)
	if err != nil {
		t.Fatal(err)
	}
	r, _ := newTestResolver(t, Options{Registries: rs})
	if err := r.CheckRef("reg.lan/secret/app:1"); !errors.Is(err, regconf.ErrBlocked) {
		t.Errorf("blocked: %v", err)
	}
	for _, ok := range []string{"reg.lan/open/app:1", "not a reference"} {
		if err := r.CheckRef(ok); err != nil {
			t.Errorf("CheckRef(%q) = %v", ok, err)
		}
	}
}
