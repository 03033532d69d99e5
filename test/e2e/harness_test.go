package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/poolfs/poolfs/test/fixture"
)

var (
	buildDir  string // where TestMain lets poolfsBinary build
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "poolfs-e2e-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	buildDir = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// requireRoot skips unless the test can mount FUSE and overlayfs.
func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("skipping: e2e tests need root (FUSE and overlay mounts, podman with its own --root); run `make test` as root")
	}
	if _, err := os.Stat("/dev/fuse"); err != nil {
		t.Skipf("skipping: e2e tests need /dev/fuse: %v", err)
	}
}

// requirePodman skips unless podman and runc are installed.
func requirePodman(t *testing.T) {
	t.Helper()
	if _, err := fixture.LookPodman(); err != nil {
		t.Skip("skipping: podman is not installed (scripts/install-deps.sh installs it)")
	}
	if _, err := os.Stat("/usr/sbin/runc"); err != nil {
		t.Skip("skipping: runc is not installed (scripts/install-deps.sh installs it)")
	}
}

func testContext(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// tempDir is t.TempDir with every mount below it lazily unmounted before it
// is removed, so a failing test cannot leave RemoveAll walking into a mount.
func tempDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	t.Cleanup(func() {
		if err := fixture.UnmountAll(dir); err != nil {
			t.Logf("unmounting leftovers under %s: %v", dir, err)
		}
	})
	return dir
}

// poolfsBinary builds ./cmd/poolfs once per test binary, or returns
// $POOLFS_E2E_BINARY if that is set (a binary built elsewhere).
func poolfsBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		if bin := os.Getenv("POOLFS_E2E_BINARY"); bin != "" {
			binPath, buildErr = filepath.Abs(bin)
			return
		}
		repo, err := fixture.RepoRoot()
		if err != nil {
			buildErr = err
			return
		}
		binPath = filepath.Join(buildDir, "poolfs")
		buildErr = fixture.BuildPoolfs(repo, binPath)
	})
	if buildErr != nil {
		t.Fatalf("building poolfs: %v", buildErr)
	}
	return binPath
}

var unsafeName = regexp.MustCompile(`[^A-Za-z0-9_.-]+`)

// startDaemon runs `poolfs serve --log-level debug --cache-dir DIR/cache
// --insecure-registry HOST DIR/als` and waits until DIR/als/.pool is a FUSE
// mount point. Its output goes to a log file; the end of it is printed if the
// test fails. At cleanup the daemon gets SIGTERM (then SIGKILL after 15 s, and
// a lazy unmount if the mount is left behind); an unclean stop fails the
// test. It returns the daemon and the ALS root DIR/als.
func startDaemon(t *testing.T, reg *fixture.Registry) (*fixture.Daemon, string) {
	t.Helper()
	return startDaemonWith(t, reg)
}

// startDaemonWith is startDaemon with more serve flags.
func startDaemonWith(t *testing.T, reg *fixture.Registry, flags ...string) (*fixture.Daemon, string) {
	t.Helper()
	bin := poolfsBinary(t)
	dir := tempDir(t)
	als := filepath.Join(dir, "als")
	d, err := fixture.StartDaemon(fixture.DaemonOptions{
		Binary:             bin,
		Root:               als,
		CacheDir:           filepath.Join(dir, "cache"),
		InsecureRegistries: []string{reg.Host},
		LogLevel:           "debug",
		LogFile:            filepath.Join(dir, "poolfs.log"),
		ReadyTimeout:       20 * time.Second,
		ExtraArgs:          flags,
	})
	if err != nil {
		t.Fatalf("starting poolfs: %v", err)
	}
	t.Logf("started %s (pid %d)", strings.Join(d.Args, " "), d.Pid())
	t.Cleanup(func() {
		if err := d.Stop(); err != nil {
			t.Errorf("stopping poolfs: %v", err)
		}
		if keep := os.Getenv("POOLFS_E2E_LOGDIR"); keep != "" {
			name := filepath.Join(keep, unsafeName.ReplaceAllString(t.Name(), "_")+".poolfs.log")
			if err := os.MkdirAll(keep, 0o755); err == nil {
				if err := os.WriteFile(name, []byte(d.Log()), 0o644); err != nil {
					t.Logf("saving the daemon log: %v", err)
				}
			}
		}
		if t.Failed() {
			t.Logf("poolfs log (%s):\n%s", d.LogPath, d.LogTail(128<<10))
			t.Logf("registry requests:\n%s", tail(reg.RequestLog(), 200))
		}
	})
	return d, als
}

// newPodman prepares a throwaway podman store under a temp dir, using als as
// the additional layer store ("" for none) and regs as insecure registries.
// Its mounts are removed at cleanup, before the daemon stops.
func newPodman(t *testing.T, als string, regs ...*fixture.Registry) *fixture.Podman {
	t.Helper()
	var hosts []string
	for _, r := range regs {
		hosts = append(hosts, r.Host)
	}
	pm, err := fixture.NewPodman(tempDir(t), fixture.PodmanOptions{ALS: als, InsecureRegistries: hosts})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := pm.Cleanup(); err != nil {
			t.Logf("podman store cleanup: %v", err)
		}
	})
	return pm
}

// tail returns the last n lines of s.
func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) <= n {
		return s
	}
	return fmt.Sprintf("(... %d earlier lines)\n%s\n", len(lines)-n, strings.Join(lines[len(lines)-n:], "\n"))
}
