package remote

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	ggcr "github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/poolfs/poolfs/remote/keychain/keychaintest"
)

// requireBasic refuses requests without the given basic credentials, with
// the challenge a registry sends.
func requireBasic(user, pass string, h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if u, p, ok := r.BasicAuth(); !ok || u != user || p != pass {
			w.Header().Set("WWW-Authenticate", `Basic realm="poolfs-test"`)
			http.Error(w, "unauthorized", http.StatusUnauthorized)
			return
		}
		h.ServeHTTP(w, r)
	})
}

type staticKeychain struct{ user, pass string }

func (k staticKeychain) Resolve(authn.Resource) (authn.Authenticator, error) {
	return &authn.Basic{Username: k.user, Password: k.pass}, nil
}

func TestBasicAuthRegistry(t *testing.T) {
	const user, pass = "poolfs", "s3cr3t-pa55"
	f := newFixture(t, func(h http.Handler) http.Handler { return requireBasic(user, pass, h) })
	ti := makeImage(t, 2, 8<<10, 0, nil)
	tagRef, _ := f.pushImage(t, "private/app", "v1", ti.img)
	want := layerBytes(t, ti.layers[0])

	tests := []struct {
		name  string
		setup func(t *testing.T, dir string)
		ok    bool
	}{
		{"REGISTRY_AUTH_FILE", func(t *testing.T, dir string) {
			p := filepath.Join(dir, "auth.json")
			keychaintest.WriteAuthFile(t, p, map[string]string{f.host: keychaintest.BasicEntry(user, pass)})
			t.Setenv("REGISTRY_AUTH_FILE", p)
		}, true},
		{"XDG_RUNTIME_DIR", func(t *testing.T, dir string) {
			xdg := filepath.Join(dir, "xdg")
			keychaintest.WriteAuthFile(t, filepath.Join(xdg, "containers", "auth.json"), map[string]string{f.host + "/private": keychaintest.BasicEntry(user, pass)})
			t.Setenv("XDG_RUNTIME_DIR", xdg)
		}, true},
		{"DOCKER_CONFIG legacy key", func(t *testing.T, dir string) {
			keychaintest.WriteAuthFile(t, filepath.Join(dir, "docker", "config.json"), map[string]string{"https://" + f.host + "/v1/": keychaintest.BasicEntry(user, pass)})
		}, true},
		{"no credentials", func(t *testing.T, dir string) {}, false},
		{"wrong password", func(t *testing.T, dir string) {
			p := filepath.Join(dir, "auth.json")
			keychaintest.WriteAuthFile(t, p, map[string]string{f.host: keychaintest.BasicEntry(user, "nope")})
			t.Setenv("REGISTRY_AUTH_FILE", p)
		}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir, kc := keychaintest.Isolate(t)
			tc.setup(t, dir)
			r, logs := newTestResolver(t, Options{Keychain: kc})
			ld, err := r.ResolveLayer(context.Background(), tagRef, ti.toc)
			if !tc.ok {
				var se *StatusError
				if !errors.As(err, &se) || se.StatusCode != http.StatusUnauthorized {
					t.Fatalf("err = %v, want 401", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("ResolveLayer: %v", err)
			}
			b, _ := r.Blob(context.Background(), ld)
			p := make([]byte, 512)
			if _, err := b.ReadAt(context.Background(), p, 100); err != nil || !bytes.Equal(p, want[100:612]) {
				t.Fatalf("ReadAt: %v", err)
			}
			for _, secret := range []string{pass, base64.StdEncoding.EncodeToString([]byte(user + ":" + pass)), "Authorization"} {
				if strings.Contains(logs.String(), secret) {
					t.Errorf("log output contains %q", secret)
				}
			}
		})
	}
}

func TestReauthOn401(t *testing.T) {
	// A token/credential that stops working mid-session: the registry
	// answers one blob GET with 401. The reader must redo the handshake
	// once and carry on, without spending retries.
	var (
		expireNext atomic.Bool
		pings      atomic.Int64
	)
	f := newFixture(t, func(h http.Handler) http.Handler {
		inner := requireBasic("u", "p", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if isBlobGet(r) && expireNext.CompareAndSwap(true, false) {
				w.Header().Set("WWW-Authenticate", `Basic realm="poolfs-test"`)
				http.Error(w, "expired", http.StatusUnauthorized)
				return
			}
			h.ServeHTTP(w, r)
		}))
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/v2/" {
				pings.Add(1)
			}
			inner.ServeHTTP(w, r)
		})
	})
	r, _ := newTestResolver(t, Options{Keychain: staticKeychain{"u", "p"}, Retries: -1})
	b, blob := openLayer(t, f, r)
	p0 := pings.Load()

	expireNext.Store(true)
	p := make([]byte, 100)
	if _, err := b.ReadAt(context.Background(), p, 0); err != nil {
		t.Fatalf("ReadAt after 401: %v", err)
	}
	if !bytes.Equal(p, blob[:100]) {
		t.Error("wrong bytes")
	}
	if pings.Load() == p0 {
		t.Error("no new handshake after 401")
	}
}

// countPings counts the /v2/ pings h sees.
func countPings(n *atomic.Int64) func(http.Handler) http.Handler {
	return func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/v2/" {
				n.Add(1)
			}
			h.ServeHTTP(w, r)
		})
	}
}

// readConcurrently reads b from 20 goroutines at once.
func readConcurrently(t *testing.T, b Blob) {
	t.Helper()
	var wg sync.WaitGroup
	for i := 0; i < 20; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := b.ReadAt(context.Background(), make([]byte, 64), int64(i)*100); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
}

// TestNoPingWithoutAuth: a registry that needs no auth is never pinged:
// the manifest and blob requests go out anonymously from the first.
func TestNoPingWithoutAuth(t *testing.T) {
	var pings atomic.Int64
	f := newFixture(t, countPings(&pings))
	r, _ := newTestResolver(t, Options{})
	b, _ := openLayer(t, f, r)
	readConcurrently(t, b)
	if n := pings.Load(); n != 0 {
		t.Errorf("/v2/ pings = %d, want 0", n)
	}
}

// TestHandshakeOncePerRegistry: with credentials the handshake pings the
// registry once, for all concurrent readers and every repository of it.
func TestHandshakeOncePerRegistry(t *testing.T) {
	const user, pass = "poolfs", "s3cr3t-pa55"
	var pings atomic.Int64
	f := newFixture(t, func(h http.Handler) http.Handler { return countPings(&pings)(requireBasic(user, pass, h)) })
	r, _ := newTestResolver(t, Options{Keychain: staticKeychain{user, pass}})
	b, _ := openLayer(t, f, r)
	readConcurrently(t, b)
	ti := makeImage(t, 1, 4<<10, 0, nil)
	tagRef, _ := f.pushImage(t, "other/app", "v1", ti.img)
	if _, err := r.ResolveLayer(context.Background(), tagRef, ti.toc); err != nil {
		t.Fatalf("second repository: %v", err)
	}
	if n := pings.Load(); n != 1 {
		t.Errorf("/v2/ pings = %d, want 1", n)
	}
}

// TestAnonymousTokenRegistry: a registry that hands out tokens to anyone
// (as Docker Hub does) answers the first, anonymous request with its
// challenge, which stands in for the ping: no /v2/ request, one token per
// repository, and a token that expires is renewed.
func TestAnonymousTokenRegistry(t *testing.T) {
	for _, status := range []int{http.StatusUnauthorized, http.StatusForbidden} {
		t.Run(http.StatusText(status), func(t *testing.T) {
			var pings atomic.Int64
			ts := &tokenServer{anonymous: true, expired: status}
			f := newFixture(t, func(h http.Handler) http.Handler { return countPings(&pings)(ts.middleware(h)) })
			r, logs := newTestResolver(t, Options{Retries: -1})
			b, want := openLayer(t, f, r)
			readConcurrently(t, b)
			ti := makeImage(t, 1, 4<<10, 0, nil)
			tagRef, _ := f.pushImage(t, "other/app", "v1", ti.img)
			if _, err := r.ResolveLayer(context.Background(), tagRef, ti.toc); err != nil {
				t.Fatalf("second repository: %v\n%s", err, logs)
			}
			if n := pings.Load(); n != 0 {
				t.Errorf("/v2/ pings = %d, want 0", n)
			}
			if n := ts.issued.Load(); n != 2 {
				t.Errorf("tokens issued = %d, want 2 (one per repository)", n)
			}
			// An expired token, answered with 401 or 403 and no
			// challenge, is renewed by a new handshake (dropAuth), which
			// starts anonymous again and takes the challenge from there.
			ts.expire()
			buf := make([]byte, 1000)
			if _, err := b.ReadAt(context.Background(), buf, 500); err != nil || !bytes.Equal(buf, want[500:1500]) {
				t.Fatalf("ReadAt after the token expired: %v\n%s", err, logs)
			}
			if n := ts.issued.Load(); n != 3 {
				t.Errorf("tokens issued = %d, want 3 (renewed once)", n)
			}
		})
	}
}

// TestLoopbackTLSRegistry: a loopback registry (plain HTTP by default)
// that speaks TLS answers the first, plain request with 400; the
// handshake's ping then finds https, as it did before requests went out
// without one.
func TestLoopbackTLSRegistry(t *testing.T) {
	reg := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	srv := httptest.NewTLSServer(reg)
	t.Cleanup(srv.Close)
	host := strings.TrimPrefix(srv.URL, "https://")
	ti := makeImage(t, 1, 4<<10, 0, nil)
	ref, err := name.ParseReference(host + "/tls/app:v1")
	if err != nil {
		t.Fatal(err)
	}
	if err := ggcr.Write(ref, ti.img, ggcr.WithTransport(srv.Client().Transport)); err != nil {
		t.Fatal(err)
	}
	r, logs := newTestResolver(t, Options{Transport: srv.Client().Transport})
	ld, err := r.ResolveLayer(context.Background(), ref.String(), ti.toc)
	if err != nil {
		t.Fatalf("ResolveLayer: %v\n%s", err, logs)
	}
	b, _ := r.Blob(context.Background(), ld)
	want := layerBytes(t, ti.layers[0])
	buf := make([]byte, 100)
	if _, err := b.ReadAt(context.Background(), buf, 0); err != nil || !bytes.Equal(buf, want[:100]) {
		t.Fatalf("ReadAt: %v\n%s", err, logs)
	}
}
