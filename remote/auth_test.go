package remote

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/google/go-containerregistry/pkg/authn"
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

func TestHandshakeOnce(t *testing.T) {
	var pings atomic.Int64
	f := newFixture(t, func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/v2/" {
				pings.Add(1)
			}
			h.ServeHTTP(w, r)
		})
	})
	r, _ := newTestResolver(t, Options{})
	b, _ := openLayer(t, f, r)
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
	if n := pings.Load(); n != 1 {
		t.Errorf("/v2/ pings = %d, want 1", n)
	}
}
