package e2e

import (
	"archive/tar"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/poolfs/poolfs/test/fixture"
)

// TestRootlessMember: a member of the group let in (--group) runs rootless
// podman on root's store: the pull takes the layers from the store (no
// layer downloaded) and the container reads its files, mode permitting.
// The layers' files belong to the real root, which the member's user
// namespace does not map: the image must already hold what the runtime
// writes into its directories (etc/mtab, etc/hosts, ...), as the container
// cannot create files there (see docs/security.md).
func TestRootlessMember(t *testing.T) {
	requireRoot(t)
	requirePodman(t)
	fixture.RequireUserTools(t)
	ctx := testContext(t, 3*time.Minute)
	reg := fixture.StartRegistry(t)
	ref := fixture.ImageRef(reg.Host, "test/rootless", "v1")
	// What the runtime writes or mounts over exists already: a rootless
	// container cannot create files in directories of the real root.
	etc := fixture.BuildTar([]fixture.TarEntry{
		{Name: "etc/mtab", Type: tar.TypeSymlink, Linkname: "/proc/mounts"},
		{Name: "etc/hosts", Mode: 0o644},
		{Name: "etc/hostname", Mode: 0o644},
		{Name: "etc/resolv.conf", Mode: 0o644},
		{Name: "run/.containerenv", Mode: 0o644},
	})
	_, layers, err := fixture.PushImage(ctx, ref, append(helloImageTars(t), etc), fixture.ImageOptions{Cmd: []string{"/bin/sh"}})
	if err != nil {
		t.Fatal(err)
	}
	tag := fmt.Sprintf("pfr%d", os.Getpid()%100000)
	group := tag + "g"
	fixture.NewGroup(t, group)
	member := fixture.NewUser(t, tag+"m", group)

	dir, als := startGroupDaemon(t, reg, group)
	pdir := filepath.Join(dir, "podman")
	pm, err := fixture.NewPodman(pdir, fixture.PodmanOptions{ALS: als, InsecureRegistries: []string{reg.Host}})
	if err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("chown", "-R", fmt.Sprintf("%d:%d", member.UID, member.GID), pdir).CombinedOutput(); err != nil {
		t.Fatalf("chown: %v %s", err, out)
	}
	t.Cleanup(func() {
		// The rootless pause process keeps the container's mount
		// namespace, and with it the pool's mounts, busy.
		if b, err := os.ReadFile(filepath.Join(pdir, "xdg", "libpod", "tmp", "pause.pid")); err == nil {
			if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	})
	run := func(args ...string) (string, error) {
		cmd := pm.Command(ctx, append([]string{"run", "--rm", "--network=none", "--tls-verify=false", ref}, args...)...)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: member.UID, Gid: member.GID, Groups: member.Groups}}
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	if out, err := run("cat", "/hello.txt"); err != nil || !strings.Contains(out, helloText) {
		t.Errorf("rootless run: %v\n%s", err, out)
	}
	// The container's root is the member: root's 0600 file stays closed.
	if out, err := run("cat", "/secret.txt"); err == nil || !strings.Contains(out, "Permission denied") {
		t.Errorf("rootless run read root's 0600 file: %v\n%s", err, out)
	}
	st := reg.Stats()
	for i, l := range layers {
		if n := st.PerBlob[l.Digest].FullBlobGets; n != 0 {
			t.Errorf("layer %d: %d whole-blob GETs: the member's podman downloaded it", i, n)
		}
	}
}
