package integration

import (
	"archive/tar"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	logtest "github.com/sirupsen/logrus/hooks/test"
	"golang.org/x/sys/unix"

	"github.com/poolfs/poolfs/alsfs"
	"github.com/poolfs/poolfs/test/fixture"
)

// traversableDir is a temp dir every user may pass through, removed at
// cleanup (after the mounts in it, which are registered later).
func traversableDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "poolfs-access-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

func statMode(t *testing.T, path string) (uint32, uint32) {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Mode & 0o7777, st.Gid
}

// TestAccess checks who can reach the store: by default only root (ROOT
// 0700, the mounts' own directories 0500, info and blob 0400), and with the
// group opt-in also the group's members (ROOT 0750, directories 0550, info
// 0440, blob 0440 only for a layer whose files everyone may read). Another
// user is refused by the kernel, or, past the modes on capabilities alone,
// by the daemon, and in no case makes the daemon ask the registry anything.
func TestAccess(t *testing.T) {
	requireFUSE(t)
	fixture.RequireUserTools(t)
	reg := fixture.StartRegistry(t)
	private := fixture.BuildTar([]fixture.TarEntry{
		{Name: "hello.txt", Mode: 0o644, Content: []byte("hello\n")},
		{Name: "secret", Mode: 0o600, Content: []byte("root's only\n")},
	})
	public := fixture.BuildTar([]fixture.TarEntry{
		{Name: "pub", Type: tar.TypeDir, Mode: 0o755},
		{Name: "pub/readme", Mode: 0o644, Content: []byte("for all\n")},
	})
	ref, layers := pushImage(t, reg, "test/access", [][]byte{private, public}, fixture.ImageOptions{})
	tag := fmt.Sprintf("pfs%d", os.Getpid()%100000)
	gid := fixture.NewGroup(t, tag+"g")
	member := fixture.NewUser(t, tag+"m", tag+"g")
	other := fixture.NewUser(t, tag+"o")
	if len(member.Groups) != 1 || member.Groups[0] != gid {
		t.Fatalf("member's supplementary groups are %v, want [%d]", member.Groups, gid)
	}

	for _, tc := range []struct {
		name   string
		access alsfs.Access
	}{
		{"root only", alsfs.Access{}},
		{"group", alsfs.Access{Group: true, GID: gid}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			hook := new(logtest.Hook)
			root := filepath.Join(traversableDir(t), "als")
			m := mountPoolOpts(t, reg, mountOpts{Root: root, Quiet: true, LogHook: hook, Access: tc.access})
			group := tc.access.Group
			want := func(rootOnly, withGroup uint32) uint32 {
				if group {
					return withGroup
				}
				return rootOnly
			}

			// Root opens the private layer; the public one stays unopened.
			priv := m.grammar2(ref, layers[0].Digest.String())
			if b, err := os.ReadFile(filepath.Join(priv, "diff", "secret")); err != nil || string(b) != "root's only\n" {
				t.Fatalf("root reads the layer: %q, %v", b, err)
			}
			if _, err := os.ReadFile(filepath.Join(priv, "blob")); err != nil {
				t.Fatalf("root reads blob (podman push): %v", err)
			}
			for _, c := range []struct {
				path      string
				mode, gid uint32
			}{
				{root, want(0o700, 0o750), want(0, gid)},
				{m.Dir, want(0o500, 0o550), want(0, gid)},
				{m.TreesDir, want(0o500, 0o550), want(0, gid)},
				{priv, want(0o500, 0o550), want(0, gid)},
				{filepath.Join(priv, "info"), want(0o400, 0o440), want(0, gid)},
				{filepath.Join(priv, "blob"), 0o400, want(0, gid)}, // holds root's secret
			} {
				if mode, g := statMode(t, c.path); mode != c.mode || g != c.gid {
					t.Errorf("%s: mode %#o gid %d, want %#o gid %d", c.path, mode, g, c.mode, c.gid)
				}
			}

			pub := m.grammar2(ref, layers[1].Digest.String())
			trees := filepath.Join(m.TreesDir, layers[0].Digest.String())
			outsider := func(t *testing.T, u fixture.LocalUser, rootOpen bool) {
				t.Helper()
				reg.ResetStats()
				if e := u.Errno(t, "ls", root); (e == 0) != rootOpen {
					t.Errorf("ls %s as %s: %v", root, u.Name, e)
				}
				for _, args := range [][]string{
					{"ls", m.Dir},
					{"ls", m.TreesDir},
					{"cat", filepath.Join(priv, "blob")},
					{"cat", filepath.Join(priv, "diff", "hello.txt")},
					{"cat", filepath.Join(trees, "hello.txt")},
					{"stat", pub}, // would open a layer
				} {
					if e := u.Errno(t, args...); e != syscall.EACCES {
						t.Errorf("%s as %s: %v, want EACCES", strings.Join(args, " "), u.Name, e)
					}
				}
				if st := reg.Stats(); st.Requests != 0 {
					t.Errorf("%s made the daemon send %d requests:\n%s", u.Name, st.Requests, reg.RequestLog())
				}
			}
			t.Run("outsider", func(t *testing.T) { outsider(t, other, false) })
			if !group {
				t.Run("member of the group not let in", func(t *testing.T) { outsider(t, member, false) })
			}

			// An administrator opened ROOT to everyone (the daemon warned at
			// startup): the mounts' own modes still keep others out.
			t.Run("ROOT opened by hand", func(t *testing.T) {
				if err := os.Chmod(root, 0o755); err != nil {
					t.Fatal(err)
				}
				defer os.Chmod(root, os.FileMode(want(0o700, 0o750)))
				outsider(t, other, true)
			})

			// A user the modes let through on a capability alone
			// (CAP_DAC_READ_SEARCH) still cannot make the daemon fetch.
			t.Run("capable outsider", func(t *testing.T) {
				capable := other
				capable.Caps = []uintptr{unix.CAP_DAC_READ_SEARCH}
				hook.Reset()
				reg.ResetStats()
				if e := capable.Errno(t, "stat", pub); e != syscall.EACCES {
					t.Errorf("stat of an unopened layer: %v, want EACCES", e)
				}
				if st := reg.Stats(); st.Requests != 0 {
					t.Errorf("the daemon sent %d requests:\n%s", st.Requests, reg.RequestLog())
				}
				logged := false
				for _, e := range hook.AllEntries() {
					if err, ok := e.Data["error"].(error); ok && errors.Is(err, alsfs.ErrAccess) {
						logged = true
					}
				}
				if !logged {
					t.Error("no log line says the lookup was refused to the caller")
				}
			})

			if !group {
				return
			}
			t.Run("member", func(t *testing.T) {
				for _, c := range []struct {
					args []string
					want syscall.Errno
				}{
					{[]string{"ls", root}, 0},
					{[]string{"cat", filepath.Join(priv, "info")}, 0},
					{[]string{"cat", filepath.Join(priv, "diff", "hello.txt")}, 0},
					{[]string{"cat", filepath.Join(trees, "hello.txt")}, 0},
					// Mode permitting: the layer's 0600 file is root's,
					// and so is the blob that holds it.
					{[]string{"cat", filepath.Join(priv, "diff", "secret")}, syscall.EACCES},
					{[]string{"cat", filepath.Join(priv, "blob")}, syscall.EACCES},
					// Through a supplementary group (the daemon reads it
					// from /proc), the member makes the daemon open a layer;
					// its blob holds nothing the member may not read.
					{[]string{"stat", pub}, 0},
					{[]string{"cat", filepath.Join(pub, "blob")}, 0},
					{[]string{"cat", filepath.Join(pub, "diff", "pub", "readme")}, 0},
				} {
					if e := member.Errno(t, c.args...); e != c.want {
						t.Errorf("%s as the member: %v, want %v", strings.Join(c.args, " "), e, c.want)
					}
				}
				if mode, _ := statMode(t, filepath.Join(pub, "blob")); mode != 0o440 {
					t.Errorf("blob of a layer everyone may read: mode %#o, want 0440", mode)
				}
			})
		})
	}
}
