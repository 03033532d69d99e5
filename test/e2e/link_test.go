package e2e

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/poolfs/poolfs/fs/fstest"
	"github.com/poolfs/poolfs/test/fixture"
)

// poolfsLink runs `poolfs link --ref REF --digest DIGEST ALS` (the client
// side of grammar 1) and returns the symlink it reports having created
// (the last line of its output, ALS/<ID>).
func poolfsLink(t *testing.T, ctx context.Context, als, ref, dgst string) string {
	t.Helper()
	cmd := exec.CommandContext(ctx, poolfsBinary(t), "link", "--ref", ref, "--digest", dgst, als)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s: %v\nstdout:\n%s\nstderr:\n%s", strings.Join(cmd.Args, " "), err, stdout.String(), stderr.String())
	}
	lines := strings.Split(strings.TrimSpace(stdout.String()), "\n")
	link := strings.TrimSpace(lines[len(lines)-1])
	if link == "" {
		t.Fatalf("%s printed no path (stderr: %s)", strings.Join(cmd.Args, " "), stderr.String())
	}
	return link
}

// mountOverlay mounts overlayfs at DIR/merged with lower as its only lower
// dir, and unmounts it at cleanup (before the daemon stops).
func mountOverlay(t *testing.T, lower string) string {
	t.Helper()
	dir := tempDir(t)
	upper, work, merged := filepath.Join(dir, "upper"), filepath.Join(dir, "work"), filepath.Join(dir, "merged")
	for _, d := range []string{upper, work, merged} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	opts := fmt.Sprintf("lowerdir=%s,upperdir=%s,workdir=%s", lower, upper, work)
	if err := syscall.Mount("overlay", merged, "overlay", 0, opts); err != nil {
		t.Fatalf("mount -t overlay overlay -o %s %s: %v", opts, merged, err)
	}
	t.Cleanup(func() {
		if err := syscall.Unmount(merged, 0); err != nil {
			t.Logf("umount %s: %v; detaching", merged, err)
			_ = syscall.Unmount(merged, syscall.MNT_DETACH)
		}
	})
	return merged
}

// TestLinkAsOverlayLower resolves a layer through grammar 1 with `poolfs
// link`, mounts overlayfs with the linked layer as lower dir, and compares
// the view, raw and merged, with the layer's tar.
func TestLinkAsOverlayLower(t *testing.T) {
	requireRoot(t)
	if _, err := os.Stat("/proc/filesystems"); err == nil {
		if b, _ := os.ReadFile("/proc/filesystems"); !bytes.Contains(b, []byte("overlay")) {
			t.Skip("skipping: the kernel has no overlayfs")
		}
	}
	ctx := testContext(t, 3*time.Minute)
	reg := fixture.StartRegistry(t)
	ref := fixture.ImageRef(reg.Host, "test/sink", "v1")
	src := fixture.KitchenSinkTar()
	_, layers, err := fixture.PushImage(ctx, ref, [][]byte{src}, fixture.ImageOptions{ChunkSize: 256 << 10})
	if err != nil {
		t.Fatal(err)
	}
	_, als := startDaemon(t, reg)

	link := poolfsLink(t, ctx, als, ref, layers[0].Digest.String())
	if filepath.Dir(link) != als {
		t.Errorf("link %s is not directly in %s", link, als)
	}
	target, err := os.Readlink(link)
	if err != nil {
		t.Fatalf("%s is not a symlink: %v", link, err)
	}
	if !filepath.IsAbs(target) {
		target = filepath.Join(filepath.Dir(link), target)
	}
	pool := filepath.Join(als, ".pool") + "/"
	if !strings.HasPrefix(target, pool) || !strings.HasPrefix(filepath.Base(target), "rootfs.") {
		t.Errorf("link target %s is not %s.../rootfs.<ID>", target, pool)
	}
	if id := strings.TrimPrefix(filepath.Base(target), "rootfs."); id != filepath.Base(link) {
		t.Errorf("link %s points to rootfs.%s: the IDs differ", link, id)
	}
	if fi, err := os.Stat(target); err != nil || !fi.IsDir() {
		t.Fatalf("link target %s: %v (want a directory)", target, err)
	}

	t.Run("pool view", func(t *testing.T) {
		// Whiteouts as 0/0 character devices and the opaque markers
		// are part of the comparison.
		fstest.CompareTree(t, target, src)
		// Read-only: writes must fail with EROFS.
		if err := os.WriteFile(filepath.Join(target, "new-file"), []byte("x"), 0o644); !isErrno(err, syscall.EROFS) {
			t.Errorf("creating a file in the pool view: %v, want EROFS", err)
		}
	})

	merged := mountOverlay(t, target)
	t.Run("overlay", func(t *testing.T) {
		fstest.CompareMergedTree(t, merged, src)
		if _, err := os.Lstat(filepath.Join(merged, fixture.KitchenSinkWhiteout)); !os.IsNotExist(err) {
			t.Errorf("whiteout %s is visible through overlayfs: %v", fixture.KitchenSinkWhiteout, err)
		}
		// A write goes to the upper dir and leaves the layer alone.
		p := filepath.Join(merged, "small.txt")
		if err := os.WriteFile(p, []byte("changed\n"), 0o644); err != nil {
			t.Errorf("copy-up write: %v", err)
		}
		if b, err := os.ReadFile(filepath.Join(target, "small.txt")); err != nil || string(b) != "small file\n" {
			t.Errorf("layer's small.txt after a write through overlayfs: %q, %v", b, err)
		}
	})
}

func isErrno(err error, errno syscall.Errno) bool {
	for err != nil {
		if e, ok := err.(syscall.Errno); ok {
			return e == errno
		}
		u, ok := err.(interface{ Unwrap() error })
		if !ok {
			return false
		}
		err = u.Unwrap()
	}
	return false
}
