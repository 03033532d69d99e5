package regconf

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// writeConf writes content to name under dir, making the directories it
// needs (drop-ins sit in a subdirectory), and returns the file's path.
func writeConf(t *testing.T, dir, name, content string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	err := os.MkdirAll(filepath.Dir(p), 0o755)
	if err == nil {
		err = os.WriteFile(p, []byte(content), 0o644)
	}
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// TestRegistriesEndpoints reads a registries.conf and a drop-in from real
// files and checks where references go, as podman would send them.
func TestRegistriesEndpoints(t *testing.T) {
	dir := t.TempDir()
	conf := writeConf(t, dir, "registries.conf", `
unqualified-search-registries = ["docker.io"]
short-name-mode = "enforcing"

[[registry]]
prefix = "docker.io"
location = "docker.io"
[[registry.mirror]]
location = "mirror-a.lan:5000"
insecure = true
[[registry.mirror]]
location = "mirror-b.lan/hub"

[[registry]]
prefix = "docker.io/library/secret"
blocked = true

[[registry]]
location = "old.example.com"
blocked = true

[[registry]]
prefix = "quay.io/team"
location = "internal.lan/quay-team"
insecure = true

[[registry]]
prefix = "*.corp.example"
insecure = true

[[registry]]
prefix = "ghcr.io"
mirror-by-digest-only = true
[[registry.mirror]]
location = "ghcr-cache.lan"
`)
	// The drop-in replaces the entry with the same prefix.
	writeConf(t, dir, "registries.conf.d/50-old.conf", `
[[registry]]
location = "old.example.com"
blocked = false
insecure = true
`)
	t.Setenv("CONTAINERS_REGISTRIES_CONF", "/nonexistent") // an explicit path wins
	rs, err := Load(conf)
	if err != nil {
		t.Fatal(err)
	}
	const dg = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	tests := []struct {
		ref     string
		want    []Endpoint
		blocked bool
	}{
		{ref: "docker.io/library/busybox:1", want: []Endpoint{
			{Ref: "mirror-a.lan:5000/library/busybox:1", Insecure: true, Mirror: true},
			{Ref: "mirror-b.lan/hub/library/busybox:1", Mirror: true},
			{Ref: "docker.io/library/busybox:1"},
		}},
		// ggcr's spelling of Docker Hub matches the same entry.
		{ref: "index.docker.io/library/busybox:1", want: []Endpoint{
			{Ref: "mirror-a.lan:5000/library/busybox:1", Insecure: true, Mirror: true},
			{Ref: "mirror-b.lan/hub/library/busybox:1", Mirror: true},
			{Ref: "docker.io/library/busybox:1"},
		}},
		// The longest prefix wins, blocked beats the mirrors.
		{ref: "docker.io/library/secret:1", blocked: true},
		// A prefix matches whole components only.
		{ref: "docker.io/library/secretive:1", want: []Endpoint{
			{Ref: "mirror-a.lan:5000/library/secretive:1", Insecure: true, Mirror: true},
			{Ref: "mirror-b.lan/hub/library/secretive:1", Mirror: true},
			{Ref: "docker.io/library/secretive:1"},
		}},
		{ref: "old.example.com/app@" + dg, want: []Endpoint{{Ref: "old.example.com/app@" + dg, Insecure: true}}},
		{ref: "quay.io/team/app:2", want: []Endpoint{{Ref: "internal.lan/quay-team/app:2", Insecure: true}}},
		{ref: "quay.io/teammate/app:2", want: []Endpoint{{Ref: "quay.io/teammate/app:2"}}},
		{ref: "reg.corp.example/x/y:3", want: []Endpoint{{Ref: "reg.corp.example/x/y:3", Insecure: true}}},
		// mirror-by-digest-only: tags skip the mirror, digests use it.
		{ref: "ghcr.io/o/app:1", want: []Endpoint{{Ref: "ghcr.io/o/app:1"}}},
		{ref: "ghcr.io/o/app@" + dg, want: []Endpoint{{Ref: "ghcr-cache.lan/o/app@" + dg, Mirror: true}, {Ref: "ghcr.io/o/app@" + dg}}},
		{ref: "example.org/free:1", want: []Endpoint{{Ref: "example.org/free:1"}}},
	}
	for _, tc := range tests {
		t.Run(tc.ref, func(t *testing.T) {
			got, err := rs.Endpoints(tc.ref)
			if tc.blocked {
				if !errors.Is(err, ErrBlocked) {
					t.Fatalf("err = %v, want ErrBlocked", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("Endpoints:\n got %+v\nwant %+v", got, tc.want)
			}
		})
	}
}

func TestRegistriesEnvAndErrors(t *testing.T) {
	dir := t.TempDir()
	env := writeConf(t, dir, "env.conf", "[[registry]]\nlocation = \"env.lan\"\nblocked = true\n")
	t.Setenv("CONTAINERS_REGISTRIES_CONF", env)
	rs, err := Load("")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := rs.Endpoints("env.lan/a:1"); !errors.Is(err, ErrBlocked) {
		t.Errorf("CONTAINERS_REGISTRIES_CONF not honoured: %v", err)
	}
	// A missing file is no configuration, not an error.
	if _, err := Load(filepath.Join(dir, "missing.conf")); err != nil {
		t.Errorf("missing file: %v", err)
	}
	bad := []struct{ name, content, want string }{
		{"syntax", "[[registry]\n", "parsing TOML"},
		{"empty entry", "[[registry]]\ninsecure = true\n", "neither prefix nor location"},
		{"wildcard location", "[[registry]]\nprefix = \"*.a.b\"\nlocation = \"x\"\n", "cannot have a location"},
		{"inner wildcard", "[[registry]]\nprefix = \"a.*.b\"\n", "wildcard"},
		{"mirror without location", "[[registry]]\nlocation = \"a\"\n[[registry.mirror]]\ninsecure = true\n", "no location"},
		{"pull-from-mirror", "[[registry]]\nlocation = \"a\"\n[[registry.mirror]]\nlocation = \"m\"\npull-from-mirror = \"sometimes\"\n", "pull-from-mirror"},
	}
	for _, tc := range bad {
		t.Run(tc.name, func(t *testing.T) {
			p := writeConf(t, dir, strings.ReplaceAll(tc.name, " ", "-")+".conf", tc.content)
			_, err := Load(p)
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), p) {
				t.Errorf("err = %v, want one naming %s and %q", err, p, tc.want)
			}
		})
	}
}
