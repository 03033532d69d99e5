package layer

import (
	"testing"

	digest "github.com/opencontainers/go-digest"
)

// The fast digest path accepts exactly what digest.Parse accepts.
func TestParseDigest(t *testing.T) {
	hex := "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
	for _, s := range []string{
		"sha256:" + hex,
		"sha256:" + hex[:63],
		"sha256:" + hex + "0",
		"sha256:" + "E3" + hex[2:],
		"sha256:" + "g3" + hex[2:],
		"SHA256:" + hex,
		"sha512:" + hex + hex,
		"sha384:" + hex[:48] + hex[:48],
		"",
		"sha256:",
		":" + hex,
	} {
		_, wantErr := digest.Parse(s)
		_, err := parseDigest(s)
		if (err != nil) != (wantErr != nil) {
			t.Errorf("parseDigest(%q) error %v, digest.Parse error %v", s, err, wantErr)
		}
	}
}
