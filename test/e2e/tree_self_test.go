package e2e

import (
	"archive/tar"
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/poolfs/poolfs/fs/fstest"
	"github.com/poolfs/poolfs/test/fixture"
)

// TestTreeCheckerOnHandMadeView checks fstest's comparisons themselves, and
// the overlay expectations of TestLinkAsOverlayLower, on a pool view made by
// hand with GNU tar on the local disk (no poolfs): so a failure of the
// poolfs tests points at poolfs, not at the checker or the kernel.
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
	// Turn the .wh. files into the overlay form poolfs must show.
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
			for _, x := range []string{"trusted.overlay.opaque", "user.overlay.opaque"} {
				if err := syscall.Setxattr(filepath.Join(view, dir), x, []byte("y"), 0); err != nil {
					t.Fatal(err)
				}
			}
			continue
		}
		wo := filepath.Join(view, dir, strings.TrimPrefix(base, ".wh."))
		if err := syscall.Mknod(wo, syscall.S_IFCHR|uint32(e.Mode), 0); err != nil {
			t.Fatal(err)
		}
		if err := os.Lchown(wo, e.UID, e.GID); err != nil {
			t.Fatal(err)
		}
		setMtime(t, wo, entryTime(e))
	}
	// Those edits, and tar -x itself for directories without an entry
	// (the root, implicit parents), left directory mtimes that the tar
	// does not say: put back what it says, the epoch where it says
	// nothing.
	dirTimes := map[string]time.Time{"": time.Unix(0, 0)}
	for _, e := range entries {
		name := strings.TrimSuffix(e.Name, "/")
		for d := filepath.Dir(name); d != "."; d = filepath.Dir(d) {
			if _, ok := dirTimes[d]; !ok {
				dirTimes[d] = time.Unix(0, 0)
			}
		}
		if e.Type == tar.TypeDir {
			dirTimes[name] = entryTime(e)
		}
	}
	for d, mt := range dirTimes {
		setMtime(t, filepath.Join(view, d), mt)
	}

	t.Run("pool view", func(t *testing.T) { fstest.CompareTree(t, view, src) })
	merged := mountOverlay(t, view)
	t.Run("overlay", func(t *testing.T) {
		fstest.CompareMergedTree(t, merged, src)
		if _, err := os.Lstat(filepath.Join(merged, fixture.KitchenSinkWhiteout)); !os.IsNotExist(err) {
			t.Errorf("whiteout visible through overlayfs: %v", err)
		}
	})

	// The checker must see every kind of difference: spoil the view in one
	// way per entry and look for each in the diff.
	t.Run("spoiled view", func(t *testing.T) {
		spoils := []struct {
			path, field string
			spoil       func(p string) error
		}{
			{"small.txt", "content sha256", func(p string) error { return os.WriteFile(p, []byte("SMALL FILE\n"), 0o644) }},
			{"bin/hello.sh", "mode", func(p string) error { return os.Chmod(p, 0o644) }},
			{"owned/file", "owner", func(p string) error { return os.Lchown(p, 1, 1) }},
			{"times/future", "mtime", func(p string) error { return os.Chtimes(p, time.Now(), time.Now()) }},
			{"xattrs/file", "xattrs", func(p string) error { return unix.Lremovexattr(p, "user.text") }},
			{fixture.KitchenSinkOpaqueDir, "xattrs", func(p string) error { return unix.Lremovexattr(p, "trusted.overlay.opaque") }},
			{"links/relative", "link target", func(p string) error {
				if err := os.Remove(p); err != nil {
					return err
				}
				return os.Symlink("../empty", p)
			}},
			{"hard/same-dir", "hard links", func(p string) error {
				b, err := os.ReadFile(p)
				if err != nil {
					return err
				}
				if err := os.Remove(p); err != nil {
					return err
				}
				return os.WriteFile(p, b, 0o640)
			}},
			{"dev/null", "device", func(p string) error {
				if err := os.Remove(p); err != nil {
					return err
				}
				return unix.Mknod(p, unix.S_IFCHR|0o666, int(unix.Mkdev(1, 5)))
			}},
			{fixture.KitchenSinkWhiteout, "missing", os.Remove},
			{"extra", "unexpected", func(p string) error { return os.WriteFile(p, nil, 0o644) }},
		}
		for _, sp := range spoils {
			if err := sp.spoil(filepath.Join(view, sp.path)); err != nil {
				t.Fatalf("spoiling %s: %v", sp.path, err)
			}
		}
		want, err := fstest.TarView(src)
		if err != nil {
			t.Fatal(err)
		}
		got, err := fstest.DirView(view, true)
		if err != nil {
			t.Fatal(err)
		}
		diffs := fstest.Diff(want, got)
		for _, sp := range spoils {
			found := false
			for _, d := range diffs {
				found = found || (strings.HasPrefix(d, sp.path+": ") && strings.Contains(d, sp.field))
			}
			if !found {
				t.Errorf("%s: no %q difference reported; the diff:\n%s", sp.path, sp.field, strings.Join(diffs, "\n"))
			}
		}
	})
}

func entryTime(e fixture.TarEntry) time.Time {
	if e.ModTime.IsZero() {
		return fixture.DefaultModTime
	}
	return e.ModTime
}

// setMtime sets p's mtime (and atime) without following a symlink.
func setMtime(t *testing.T, p string, mt time.Time) {
	t.Helper()
	ts := unix.NsecToTimespec(mt.UnixNano())
	if err := unix.UtimesNanoAt(unix.AT_FDCWD, p, []unix.Timespec{ts, ts}, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		t.Fatalf("setting the mtime of %s: %v", p, err)
	}
}
