package remote

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/poolfs/poolfs/remote/keychain"
	"github.com/poolfs/poolfs/remote/keychain/keychaintest"
)

// fakeHelper installs docker-credential-<name> on PATH: it answers `get`
// for server with user/secret and "not found" for anything else, and
// records the servers it was asked for in <dir>/asked.
func fakeHelper(t *testing.T, dir, helper, server, user, secret string) string {
	t.Helper()
	bin := filepath.Join(dir, "bin")
	asked := filepath.Join(dir, "asked-"+helper)
	script := fmt.Sprintf(`#!/bin/sh
[ "$1" = get ] || exit 2
read -r server
echo "$server" >> %q
if [ "$server" = %q ]; then
  printf '{"ServerURL":"%%s","Username":%q,"Secret":%q}\n' "$server"
  exit 0
fi
echo "credentials not found in native keychain"
exit 1
`, asked, server, user, secret)
	writeFile(t, filepath.Join(bin, "docker-credential-"+helper), script)
	if err := os.Chmod(filepath.Join(bin, "docker-credential-"+helper), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", bin+string(os.PathListSeparator)+os.Getenv("PATH"))
	return asked
}

func TestCredentialHelpers(t *testing.T) {
	const user, pass = "helper-user", "helper-pa55"
	f := newFixture(t, func(h http.Handler) http.Handler { return requireBasic(user, pass, h) })
	ti := makeImage(t, 1, 8<<10, 0, nil)
	tagRef, _ := f.pushImage(t, "private/app", "v1", ti.img)

	tests := []struct {
		name   string
		config func(dir string) string // docker config.json contents
		helper string
		ok     bool
	}{
		{"credHelpers", func(string) string {
			return `{"credHelpers":{"` + f.host + `":"fake"}}`
		}, "fake", true},
		{"credsStore", func(string) string {
			return `{"credsStore":"store","auths":{"` + f.host + `":{}}}`
		}, "store", true},
		{"helper does not know the host, auths entry used", func(string) string {
			return `{"credsStore":"other","auths":{"` + f.host + `":` + keychaintest.BasicEntry(user, pass) + `}}`
		}, "", true},
		{"helper for another host", func(string) string {
			return `{"credHelpers":{"elsewhere.example":"fake"}}`
		}, "fake", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir, kc := keychaintest.Isolate(t)
			var asked string
			switch tc.helper {
			case "fake":
				asked = fakeHelper(t, dir, "fake", f.host, user, pass)
			case "store":
				asked = fakeHelper(t, dir, "store", f.host, user, pass)
			default:
				fakeHelper(t, dir, "other", "nobody.example", "x", "y")
			}
			writeFile(t, filepath.Join(dir, "docker", "config.json"), tc.config(dir))
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
				t.Fatalf("ResolveLayer: %v\n%s", err, logs)
			}
			b, _ := r.Blob(context.Background(), ld)
			if _, err := b.ReadAt(context.Background(), make([]byte, 64), 0); err != nil {
				t.Fatal(err)
			}
			if asked != "" {
				got, _ := os.ReadFile(asked)
				if !strings.Contains(string(got), f.host) {
					t.Errorf("helper was asked for %q, want %s", got, f.host)
				}
			}
			if strings.Contains(logs.String(), pass) {
				t.Error("log output contains the secret")
			}
		})
	}
}

// tokenServer is a registry behind bearer tokens: /token hands out a new
// token for basic credentials, and the registry accepts only the latest
// token, answering older ones with 403 (as some registries do for expired
// tokens) or 401.
type tokenServer struct {
	user, pass string
	anonymous  bool // tokens for anyone, as Docker Hub hands out for public images
	expired    int  // status for a stale token
	mu         sync.Mutex
	current    string
	issued     atomic.Int64
}

func (ts *tokenServer) middleware(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/token" {
			if u, p, ok := r.BasicAuth(); !ts.anonymous && (!ok || u != ts.user || p != ts.pass) {
				http.Error(w, "bad credentials", http.StatusUnauthorized)
				return
			}
			tok := fmt.Sprintf("token-%d", ts.issued.Add(1))
			ts.mu.Lock()
			ts.current = tok
			ts.mu.Unlock()
			_ = json.NewEncoder(w).Encode(map[string]string{"token": tok})
			return
		}
		ts.mu.Lock()
		cur := ts.current
		ts.mu.Unlock()
		got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if !ok {
			w.Header().Set("WWW-Authenticate", fmt.Sprintf(`Bearer realm="http://%s/token",service="poolfs-test"`, r.Host))
			http.Error(w, "token required", http.StatusUnauthorized)
			return
		}
		if got != cur {
			http.Error(w, "token expired", ts.expired)
			return
		}
		h.ServeHTTP(w, r)
	})
}

// expire invalidates the token in use, as a token's lifetime running out.
func (ts *tokenServer) expire() {
	ts.mu.Lock()
	ts.current = "expired"
	ts.mu.Unlock()
}

func TestBearerTokenRefresh(t *testing.T) {
	for _, status := range []int{http.StatusUnauthorized, http.StatusForbidden} {
		t.Run(http.StatusText(status), func(t *testing.T) {
			ts := &tokenServer{user: "tok-user", pass: "tok-pass", expired: status}
			f := newFixture(t, ts.middleware)
			ti := makeImage(t, 1, 16<<10, 0, nil)
			tagRef, _ := f.pushImage(t, "private/app", "v1", ti.img)
			want := layerBytes(t, ti.layers[0])
			dir, kc := keychaintest.Isolate(t)
			p := filepath.Join(dir, "auth.json")
			keychaintest.WriteAuthFile(t, p, map[string]string{f.host: keychaintest.BasicEntry(ts.user, ts.pass)})
			t.Setenv("REGISTRY_AUTH_FILE", p)

			r, logs := newTestResolver(t, Options{Keychain: kc, Retries: -1})
			ld, err := r.ResolveLayer(context.Background(), tagRef, ti.toc)
			if err != nil {
				t.Fatalf("ResolveLayer: %v\n%s", err, logs)
			}
			b, _ := r.Blob(context.Background(), ld)
			before := ts.issued.Load()
			ts.expire()
			buf := make([]byte, 1000)
			if _, err := b.ReadAt(context.Background(), buf, 500); err != nil || !bytes.Equal(buf, want[500:1500]) {
				t.Fatalf("ReadAt after the token expired: %v\n%s", err, logs)
			}
			if ts.issued.Load() == before {
				t.Error("no new token was fetched")
			}
			for _, secret := range []string{ts.pass, "token-"} {
				if strings.Contains(logs.String(), secret) {
					t.Errorf("log output contains %q", secret)
				}
			}
		})
	}
}

// TestSessionKeychain: credentials handed over for an image reference are
// used for its registry only, and replace the file keychain there.
func TestSessionKeychain(t *testing.T) {
	const user, pass = "session", "s3ss10n"
	f := newFixture(t, func(h http.Handler) http.Handler { return requireBasic(user, pass, h) })
	other := newFixture(t, func(h http.Handler) http.Handler { return requireBasic(user, pass, h) })
	ti := makeImage(t, 1, 4<<10, 0, nil)
	tagRef, _ := f.pushImage(t, "private/app", "v1", ti.img)
	otherRef, _ := other.pushImage(t, "private/app", "v1", ti.img)
	_, files := keychaintest.Isolate(t)

	kc := keychain.NewSession(files)
	r, _ := newTestResolver(t, Options{Keychain: kc})
	if _, err := r.ResolveLayer(context.Background(), tagRef, ti.toc); err == nil {
		t.Fatal("resolved without credentials")
	}
	reg, err := kc.Set(tagRef, authn.AuthConfig{Username: user, Password: pass})
	if err != nil || reg != f.host {
		t.Fatalf("Set: %q, %v", reg, err)
	}
	r.ForgetRegistry(reg)
	r2, _ := newTestResolver(t, Options{Keychain: kc})
	for _, res := range []*Resolver{r, r2} {
		if _, err := res.ResolveLayer(context.Background(), tagRef, ti.toc); err != nil {
			t.Errorf("with session credentials: %v", err)
		}
	}
	if _, err := r2.ResolveLayer(context.Background(), otherRef, ti.toc); err == nil {
		t.Error("credentials for one registry were used for another")
	}
}
