package integration

import (
	"encoding/base64"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/poolfs/poolfs/alspath"
	"github.com/poolfs/poolfs/test/fixture"
)

// TestBadPaths feeds the mount paths that fit no grammar, or name layers
// that cannot be served, and checks each is a clean ENOENT (or the kernel's
// ENAMETOOLONG) while the daemon keeps serving good paths.
func TestBadPaths(t *testing.T) {
	reg := fixture.StartRegistry(t)
	ref, layers := pushImage(t, reg, "test/good", [][]byte{fixture.KitchenSinkTar()}, fixture.ImageOptions{})
	gzRef, gzLayers := pushImage(t, reg, "test/plain", [][]byte{fixture.KitchenSinkTar()}, fixture.ImageOptions{Gzip: true})
	m := mountPool(t, reg)
	b64 := func(s string) string { return base64.URLEncoding.EncodeToString([]byte(s)) }
	std := func(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }
	dg := layers[0].Digest.String()
	refKV := alspath.RefAnnotation + "=" + ref
	dgKV := alspath.LayerAnnotation + "=" + dg

	bad := []struct {
		name string
		path string
	}{
		{"not base64", "not-base64!"},
		{"base64 of binary", std("\xff\xfe\x00")},
		{"reference with control char", std("a/b\n:c")},
		{"unknown repo", filepath.Join(std(reg.Host+"/no/such:v1"), dg)},
		{"unknown tag", filepath.Join(std(reg.Host+"/test/good:nope"), dg)},
		{"digest not in image", filepath.Join(std(ref), "sha256:"+strings.Repeat("0", 64))},
		{"wrong digest algorithm", filepath.Join(std(ref), "md5:d41d8cd98f00b204e9800998ecf8427e")},
		{"sha512 digest", filepath.Join(std(ref), "sha512:"+strings.Repeat("0", 128))},
		{"short digest", filepath.Join(std(ref), "sha256:abc")},
		{"digest without reference", "sha256:" + strings.Repeat("0", 64)},
		{"layer file that does not exist", filepath.Join(std(ref), dg, "nope")},
		{"not eStargz", filepath.Join(std(gzRef), gzLayers[0].Digest.String(), "diff")},
		{"unreachable registry", filepath.Join(std("127.0.0.1:1/x/y:z"), "sha256:"+strings.Repeat("1", 64))},
		{"missing reference annotation", filepath.Join(b64(dgKV), "rootfs.x")},
		{"missing digest annotation", filepath.Join(b64(refKV), "rootfs.x")},
		{"reference inside annotation path", filepath.Join(b64(refKV), std(ref))},
		{"unknown key only", filepath.Join(b64("foo=bar"), "rootfs.x")},
		{"empty layer id", filepath.Join(b64(refKV), b64(dgKV), "rootfs.")},
		{"annotation digest bad", filepath.Join(b64(refKV), b64(alspath.LayerAnnotation+"=sha256:zz"), "rootfs.x")},
		{"rootfs at top", "rootfs.x"},
	}
	for _, b := range bad {
		t.Run(b.name, func(t *testing.T) {
			_, err := os.Stat(filepath.Join(m.Dir, b.path))
			if !errors.Is(err, syscall.ENOENT) && !errors.Is(err, syscall.EINVAL) {
				t.Errorf("stat %s: %v, want ENOENT or EINVAL", b.path, err)
			}
		})
	}

	// Names longer than NAME_MAX never reach the daemon; long paths of
	// valid-looking fragments are refused once they get too long.
	long := filepath.Join(m.Dir, strings.Repeat("A", 300))
	if _, err := os.Stat(long); err == nil {
		t.Errorf("stat of a 300-byte name succeeded")
	}
	var deep strings.Builder
	deep.WriteString(m.Dir)
	for range 40 {
		deep.WriteString("/" + strings.Repeat("QUFB", 60))
	}
	if _, err := os.Stat(deep.String() + "/" + dg); err == nil {
		t.Errorf("stat of a 10 KB reference succeeded")
	}

	// The daemon still serves.
	if _, err := os.Stat(filepath.Join(m.Dir, std(ref), dg, "diff")); err != nil {
		t.Fatalf("good path after bad ones: %v", err)
	}
	if _, err := os.Stat(filepath.Join(m.Dir, b64(refKV), b64(dgKV), "rootfs.ok")); err != nil {
		t.Fatalf("good grammar-1 path after bad ones: %v", err)
	}
}
