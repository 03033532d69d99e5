// Package keychaintest writes the credential files package keychain reads,
// for the tests of keychain and of the code that uses it.
package keychaintest

import (
	"encoding/base64"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/poolfs/poolfs/remote/keychain"
)

// RootAuthFile is the name, in Isolate's directory, of the file Isolate's
// keychain reads where podman's /run/containers/0/auth.json would be.
const RootAuthFile = "run-containers-0-auth.json"

// Isolate points every credential location keychain.New reads into an
// empty temporary directory, so the developer's own files do not
// interfere, and returns that directory and a keychain.New reading there.
// $DOCKER_CONFIG is dir/docker.
func Isolate(t *testing.T) (dir string, kc authn.Keychain) {
	t.Helper()
	dir = t.TempDir()
	t.Setenv("HOME", dir)
	t.Setenv("REGISTRY_AUTH_FILE", "")
	t.Setenv("XDG_RUNTIME_DIR", "")
	t.Setenv("DOCKER_CONFIG", filepath.Join(dir, "docker"))
	return dir, keychain.New(keychain.WithRootAuthFile(filepath.Join(dir, RootAuthFile)))
}

// WriteAuthFile writes an auth.json at path whose "auths" maps each key of
// entries to its value, a JSON object (see BasicEntry).
func WriteAuthFile(t *testing.T, path string, entries map[string]string) {
	t.Helper()
	var b strings.Builder
	b.WriteString(`{"auths":{`)
	first := true
	for k, v := range entries {
		if !first {
			b.WriteString(",")
		}
		first = false
		b.WriteString(`"` + k + `":` + v)
	}
	b.WriteString("}}")
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
}

// BasicEntry is an auth.json entry for user and pass, as podman login
// writes it.
func BasicEntry(user, pass string) string {
	return `{"auth":"` + base64.StdEncoding.EncodeToString([]byte(user+":"+pass)) + `"}`
}
