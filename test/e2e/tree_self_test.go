package e2e

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/poolfs/poolfs/test/fixture"
)

// TestTreeCheckerOnHandMadeView checks compareTree itself, and the overlay
// expectations of TestLinkAsOverlayLower, on a pool view made by hand with
// GNU tar on the local disk (no poolfs): so a failure of the poolfs tests
// points at poolfs, not at the checker or the kernel.
func TestTreeCheckerOnHandMadeView(t *testing.T) {
	requireRoot(t)
	if _, err := exec.LookPath("tar"); err != nil {
		t.Skip("skipping: needs GNU tar")
	}
	src := fixture.KitchenSinkTar()
	entries, err := fixture.ReadTar(src)
	if err != nil {
		t.Fatal(err)
	}
	view := filepath.Join(tempDir(t), "view")
	if err := os.MkdirAll(view, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("tar", "-x", "-p", "--numeric-owner", "--xattrs", "--xattrs-include=*", "-C", view)
	cmd.Stdin = bytes.NewReader(src)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("tar -x: %v\n%s", err, out)
	}
	// Turn the .wh. files into the overlay form poolfs must show. Work from
	// the tar's list, deepest names first do not matter here.
	for _, e := range entries {
		dir, base := filepath.Split(strings.TrimSuffix(e.Name, "/"))
		if !strings.HasPrefix(base, ".wh.") {
			continue
		}
		p := filepath.Join(view, e.Name)
		if err := os.Remove(p); err != nil {
			t.Fatal(err)
		}
		if base == ".wh..wh..opq" {
			if err := syscall.Setxattr(filepath.Join(view, dir), "trusted.overlay.opaque", []byte("y"), 0); err != nil {
				t.Fatal(err)
			}
			continue
		}
		wo := filepath.Join(view, dir, strings.TrimPrefix(base, ".wh."))
		if err := syscall.Mknod(wo, syscall.S_IFCHR|0o644, 0); err != nil {
			t.Fatal(err)
		}
		if err := os.Lchown(wo, 0, 0); err != nil {
			t.Fatal(err)
		}
	}
	// tar -x sets directory mtimes and modes after their contents; nothing
	// else to fix. (GNU tar restores mode 0000 and setuid bits with -p as root.)

	t.Run("pool view", func(t *testing.T) { fixture.CompareTree(t, view, entries, fixture.PoolView) })
	merged := mountOverlay(t, view)
	t.Run("overlay", func(t *testing.T) {
		fixture.CompareTree(t, merged, entries, fixture.MergedView)
		if _, err := os.Lstat(filepath.Join(merged, fixture.KitchenSinkWhiteout)); !os.IsNotExist(err) {
			t.Errorf("whiteout visible through overlayfs: %v", err)
		}
	})
}
