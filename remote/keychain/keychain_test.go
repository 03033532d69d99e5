package keychain_test

import (
	"context"
	"encoding/base64"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/poolfs/poolfs/remote/keychain/keychaintest"
)

func resolveUser(t *testing.T, kc authn.Keychain, image string) (*authn.AuthConfig, error) {
	t.Helper()
	ref, err := name.ParseReference(image)
	if err != nil {
		t.Fatal(err)
	}
	a, err := kc.Resolve(ref.Context())
	if err != nil {
		return nil, err
	}
	return authn.Authorization(context.Background(), a)
}

func TestKeychainLookup(t *testing.T) {
	tests := []struct {
		name    string
		entries map[string]string
		image   string
		user    string // "" means anonymous
	}{
		{"host key", map[string]string{"reg.example": keychaintest.BasicEntry("host", "p")}, "reg.example/ns/app:1", "host"},
		{"repo key beats host key",
			map[string]string{"reg.example": keychaintest.BasicEntry("host", "p"), "reg.example/ns/app": keychaintest.BasicEntry("repo", "p")},
			"reg.example/ns/app:1", "repo"},
		{"namespace key beats host key",
			map[string]string{"reg.example": keychaintest.BasicEntry("host", "p"), "reg.example/ns": keychaintest.BasicEntry("ns", "p")},
			"reg.example/ns/app:1", "ns"},
		{"other repo's key does not apply",
			map[string]string{"reg.example/other": keychaintest.BasicEntry("other", "p")},
			"reg.example/ns/app:1", ""},
		{"key is not a string prefix match",
			map[string]string{"reg.example/n": keychaintest.BasicEntry("n", "p")},
			"reg.example/ns/app:1", ""},
		{"legacy URL key", map[string]string{"https://reg.example/v1/": keychaintest.BasicEntry("legacy", "p")}, "reg.example/app", "legacy"},
		{"exact key beats legacy URL key",
			map[string]string{"https://reg.example/v1/": keychaintest.BasicEntry("legacy", "p"), "reg.example": keychaintest.BasicEntry("host", "p")},
			"reg.example/app", "host"},
		{"port is part of the host", map[string]string{"reg.example:5000": keychaintest.BasicEntry("port", "p")}, "reg.example/app", ""},
		{"with port", map[string]string{"reg.example:5000": keychaintest.BasicEntry("port", "p")}, "reg.example:5000/app", "port"},
		{"docker hub as docker.io", map[string]string{"docker.io": keychaintest.BasicEntry("hub", "p")}, "library/alpine", "hub"},
		{"docker hub repo key", map[string]string{"docker.io/library/alpine": keychaintest.BasicEntry("hubrepo", "p"), "docker.io": keychaintest.BasicEntry("hub", "p")}, "alpine", "hubrepo"},
		{"docker hub legacy key", map[string]string{"https://index.docker.io/v1/": keychaintest.BasicEntry("hublegacy", "p")}, "alpine", "hublegacy"},
		{"unknown registry", map[string]string{"reg.example": keychaintest.BasicEntry("host", "p")}, "other.example/app", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir, kc := keychaintest.Isolate(t)
			p := filepath.Join(dir, "auth.json")
			keychaintest.WriteAuthFile(t, p, tc.entries)
			t.Setenv("REGISTRY_AUTH_FILE", p)
			cfg, err := resolveUser(t, kc, tc.image)
			if err != nil {
				t.Fatal(err)
			}
			if cfg.Username != tc.user {
				t.Errorf("user = %q, want %q", cfg.Username, tc.user)
			}
		})
	}
}

func TestKeychainFileOrder(t *testing.T) {
	dir, kc := keychaintest.Isolate(t)
	regAuth := filepath.Join(dir, "registry-auth.json")
	xdg := filepath.Join(dir, "xdg")
	files := map[string]string{
		"REGISTRY_AUTH_FILE": regAuth,
		"XDG_RUNTIME_DIR":    filepath.Join(xdg, "containers", "auth.json"),
		"root":               filepath.Join(dir, keychaintest.RootAuthFile),
		"DOCKER_CONFIG":      filepath.Join(dir, "docker", "config.json"),
	}
	t.Setenv("REGISTRY_AUTH_FILE", regAuth)
	t.Setenv("XDG_RUNTIME_DIR", xdg)

	// Each file knows a.example; later files also know their own hosts.
	// The most specific key in a later file must not beat the first file
	// that has any entry (podman's rule).
	order := []string{"REGISTRY_AUTH_FILE", "XDG_RUNTIME_DIR", "root", "DOCKER_CONFIG"}
	for _, src := range order {
		keychaintest.WriteAuthFile(t, files[src], map[string]string{
			"a.example":                       keychaintest.BasicEntry(src, "p"),
			"a.example/ns/app":                keychaintest.BasicEntry(src+"-repo", "p"),
			strings.ToLower(src) + ".example": keychaintest.BasicEntry(src, "p"),
		})
	}
	// Make the first file know only the host.
	keychaintest.WriteAuthFile(t, regAuth, map[string]string{"a.example": keychaintest.BasicEntry("REGISTRY_AUTH_FILE", "p")})

	check := func(image, want string) {
		t.Helper()
		cfg, err := resolveUser(t, kc, image)
		if err != nil {
			t.Fatal(err)
		}
		if cfg.Username != want {
			t.Errorf("%s: user = %q, want %q", image, cfg.Username, want)
		}
	}
	check("a.example/ns/app", "REGISTRY_AUTH_FILE")
	check("xdg_runtime_dir.example/x", "XDG_RUNTIME_DIR")
	check("root.example/x", "root")
	check("docker_config.example/x", "DOCKER_CONFIG")

	// Files that vanish are skipped.
	for _, src := range order[:3] {
		if err := os.Remove(files[src]); err != nil {
			t.Fatal(err)
		}
	}
	check("a.example/ns/app", "DOCKER_CONFIG-repo")

	// Without DOCKER_CONFIG, ~/.docker/config.json is read.
	if err := os.Remove(files["DOCKER_CONFIG"]); err != nil {
		t.Fatal(err)
	}
	t.Setenv("DOCKER_CONFIG", "")
	keychaintest.WriteAuthFile(t, filepath.Join(dir, ".docker", "config.json"), map[string]string{"a.example": keychaintest.BasicEntry("home", "p")})
	check("a.example/ns/app", "home")
}

func TestKeychainEntries(t *testing.T) {
	dir, kc := keychaintest.Isolate(t)
	p := filepath.Join(dir, "auth.json")
	t.Setenv("REGISTRY_AUTH_FILE", p)

	keychaintest.WriteAuthFile(t, p, map[string]string{"tok.example": `{"auth":"` + base64.StdEncoding.EncodeToString([]byte("<token>:")) + `","identitytoken":"refresh-me"}`})
	cfg, err := resolveUser(t, kc, "tok.example/app")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.IdentityToken != "refresh-me" || cfg.Password != "" {
		t.Errorf("identity token entry gave %+v", cfg)
	}

	keychaintest.WriteAuthFile(t, p, map[string]string{"bad.example": `{"auth":"%%%"}`, "good.example": keychaintest.BasicEntry("g", "p")})
	if _, err := resolveUser(t, kc, "bad.example/app"); err == nil || !strings.Contains(err.Error(), "bad.example") {
		t.Errorf("malformed auth: err = %v", err)
	}
	// A broken entry for another registry is none of our business.
	if cfg, err := resolveUser(t, kc, "good.example/app"); err != nil || cfg.Username != "g" {
		t.Errorf("good entry next to a bad one: %+v, %v", cfg, err)
	}

	if err := os.WriteFile(p, []byte("{not json"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := resolveUser(t, kc, "good.example/app"); err == nil || !strings.Contains(err.Error(), p) {
		t.Errorf("unparsable file: err = %v", err)
	}

	if err := os.Remove(p); err != nil {
		t.Fatal(err)
	}
	cfg, err = resolveUser(t, kc, "good.example/app")
	if err != nil || *cfg != (authn.AuthConfig{}) {
		t.Errorf("no files: %+v, %v; want anonymous", cfg, err)
	}
}
