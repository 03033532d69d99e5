package remote

import (
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

func TestPlatformMatches(t *testing.T) {
	tests := []struct {
		have, want v1.Platform
		ok         bool
	}{
		{v1.Platform{OS: "linux", Architecture: "amd64"}, v1.Platform{OS: "linux", Architecture: "amd64"}, true},
		{v1.Platform{OS: "linux", Architecture: "amd64"}, v1.Platform{OS: "linux", Architecture: "arm64"}, false},
		{v1.Platform{OS: "windows", Architecture: "amd64"}, v1.Platform{OS: "linux", Architecture: "amd64"}, false},
		{v1.Platform{OS: "linux", Architecture: "arm64"}, v1.Platform{OS: "linux", Architecture: "arm64", Variant: "v8"}, true},
		{v1.Platform{OS: "linux", Architecture: "arm64", Variant: "v8"}, v1.Platform{OS: "linux", Architecture: "arm64"}, true},
		{v1.Platform{OS: "linux", Architecture: "arm", Variant: "v6"}, v1.Platform{OS: "linux", Architecture: "arm", Variant: "v7"}, false},
		{v1.Platform{OS: "linux", Architecture: "arm"}, v1.Platform{OS: "linux", Architecture: "arm", Variant: "v7"}, true},
		{v1.Platform{OS: "linux", Architecture: "amd64", Features: []string{"a", "b"}}, v1.Platform{OS: "linux", Architecture: "amd64", Features: []string{"b"}}, true},
		{v1.Platform{OS: "linux", Architecture: "amd64"}, v1.Platform{OS: "linux", Architecture: "amd64", Features: []string{"b"}}, false},
		{v1.Platform{OS: "unknown", Architecture: "unknown"}, v1.Platform{OS: "linux", Architecture: "amd64"}, false},
	}
	for _, tc := range tests {
		if got := platformMatches(tc.have, tc.want); got != tc.ok {
			t.Errorf("platformMatches(%v, %v) = %v", tc.have, tc.want, got)
		}
	}
}

func TestHostPlatform(t *testing.T) {
	p := hostPlatform()
	if p.OS == "" || p.Architecture == "" {
		t.Fatalf("hostPlatform() = %+v", p)
	}
	if (p.Architecture == "arm" || p.Architecture == "arm64") && p.Variant == "" {
		t.Errorf("no variant for %s", p.Architecture)
	}
}

func TestInsecureHost(t *testing.T) {
	r := New(Options{Insecure: []string{"reg.lan:5000", "plain.lan"}, Keychain: anonKeychain{}})
	tests := map[string]bool{
		"127.0.0.1:5000": true,
		"127.1.2.3:80":   true,
		"localhost:5000": true,
		"localhost":      true,
		"[::1]:5000":     true,
		"reg.lan:5000":   true,
		"reg.lan:5001":   false,
		"plain.lan":      true,
		"plain.lan:8080": true,
		"ghcr.io":        false,
		"10.0.0.1:5000":  false,
	}
	for host, want := range tests {
		if got := r.insecureHost(host); got != want {
			t.Errorf("insecureHost(%q) = %v, want %v", host, got, want)
		}
	}
	ref, err := r.parseRef("reg.lan:5000/app:1")
	if err != nil || ref.Context().Scheme() != "http" {
		t.Errorf("parseRef: %v scheme %q", err, ref.Context().Scheme())
	}
	ref, err = r.parseRef("127.0.0.2:5000/app:1")
	if err != nil || ref.Context().Scheme() != "http" {
		t.Errorf("parseRef loopback: %v", err)
	}
}

func TestManifestKind(t *testing.T) {
	tests := []struct {
		mt   string
		body string
		want manifestType
	}{
		{"application/vnd.oci.image.manifest.v1+json", "", kindImage},
		{"application/vnd.docker.distribution.manifest.v2+json", "", kindImage},
		{"application/vnd.oci.image.index.v1+json", "", kindIndex},
		{"application/vnd.docker.distribution.manifest.list.v2+json", "", kindIndex},
		{"application/vnd.docker.distribution.manifest.v1+prettyjws", "", kindUnknown},
		{"application/json", `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}`, kindIndex},
		{"application/json", `{"schemaVersion":2,"config":{},"layers":[]}`, kindImage},
		{"application/json", `{"schemaVersion":2,"manifests":[]}`, kindIndex},
		{"application/json", `{"schemaVersion":1}`, kindUnknown},
		{"text/plain", `garbage`, kindUnknown},
	}
	for _, tc := range tests {
		if got := manifestKind(types.MediaType(tc.mt), []byte(tc.body)); got != tc.want {
			t.Errorf("manifestKind(%s, %s) = %v, want %v", tc.mt, tc.body, got, tc.want)
		}
	}
}
