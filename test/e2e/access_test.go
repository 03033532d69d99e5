package e2e

import (
	"encoding/base64"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/poolfs/poolfs/test/fixture"
)

// TestServeGroup runs `poolfs serve --group NAME`: ROOT is created 0750 and
// given to the group, a member (through a supplementary group) reaches the
// store and makes the daemon open a layer, and a non-member is refused on
// ROOT with no request reaching the registry. The in-process
// TestAccess (test/integration) covers the modes and the refusals in detail.
func TestServeGroup(t *testing.T) {
	requireRoot(t)
	fixture.RequireUserTools(t)
	ctx := testContext(t, 2*time.Minute)
	reg := fixture.StartRegistry(t)
	ref := fixture.ImageRef(reg.Host, "test/group", "v1")
	_, layers, err := fixture.PushImage(ctx, ref, [][]byte{fixture.BuildTar([]fixture.TarEntry{
		{Name: "hello.txt", Mode: 0o644, Content: []byte(helloText)},
	})}, fixture.ImageOptions{})
	if err != nil {
		t.Fatal(err)
	}
	tag := fmt.Sprintf("pfe%d", os.Getpid()%100000)
	group := tag + "g"
	gid := fixture.NewGroup(t, group)
	member := fixture.NewUser(t, tag+"m", group)
	other := fixture.NewUser(t, tag+"o")

	_, als := startGroupDaemon(t, reg, group)

	var st syscall.Stat_t
	if err := syscall.Stat(als, &st); err != nil || st.Mode&0o777 != 0o750 || st.Gid != gid {
		t.Errorf("ROOT: mode %#o gid %d (%v), want 0750 gid %d", st.Mode&0o777, st.Gid, err, gid)
	}
	hello := filepath.Join(als, ".pool", base64.StdEncoding.EncodeToString([]byte(ref)), layers[0].Digest.String(), "diff", "hello.txt")
	reg.ResetStats()
	if e := other.Errno(t, "cat", hello); e != syscall.EACCES {
		t.Errorf("a non-member reads %s: %v, want EACCES", hello, e)
	}
	if n := reg.Stats().Requests; n != 0 {
		t.Errorf("a non-member's lookup sent %d requests to the registry", n)
	}
	if e := member.Errno(t, "cat", hello); e != 0 {
		t.Errorf("a member reads %s: %v", hello, e)
	}
	if n := reg.Stats().Requests; n == 0 {
		t.Error("the member's lookup did not open the layer")
	}
}

// startGroupDaemon runs `poolfs serve --group group` on ROOT dir/als, in a
// temp dir that other users may reach, and returns dir and ROOT.
func startGroupDaemon(t *testing.T, reg *fixture.Registry, group string) (dir, als string) {
	t.Helper()
	dir = tempDir(t)
	for _, d := range []string{filepath.Dir(dir), dir} { // so that users reach ROOT
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	als = filepath.Join(dir, "als")
	d, err := fixture.StartDaemon(fixture.DaemonOptions{
		Binary: poolfsBinary(t), Root: als, CacheDir: filepath.Join(dir, "cache"),
		InsecureRegistries: []string{reg.Host}, LogFile: filepath.Join(dir, "poolfs.log"),
		ExtraArgs: []string{"--group", group},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := d.Stop(); err != nil {
			t.Errorf("stopping poolfs: %v", err)
		}
		if t.Failed() {
			t.Logf("poolfs log:\n%s", d.LogTail(32<<10))
		}
	})
	return dir, als
}
