package e2e

import (
	"archive/tar"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/poolfs/poolfs/control"
	"github.com/poolfs/poolfs/test/fixture"
)

// fuseSuperMagic is statfs(2)'s f_type of a FUSE file system.
const fuseSuperMagic = 0x65735546

// startDaemonIn is startDaemon on a given directory (ALS root DIR/als, cache
// DIR/cache), so that a second daemon can take over the first one's state.
// With stop set, the daemon is stopped at cleanup like startDaemon's.
func startDaemonIn(t *testing.T, reg *fixture.Registry, dir, logName string, stop bool, extraArgs ...string) *fixture.Daemon {
	t.Helper()
	d, err := fixture.StartDaemon(fixture.DaemonOptions{
		Binary:             poolfsBinary(t),
		Root:               filepath.Join(dir, "als"),
		CacheDir:           filepath.Join(dir, "cache"),
		InsecureRegistries: []string{reg.Host},
		LogLevel:           "debug",
		LogFile:            filepath.Join(dir, logName),
		ReadyTimeout:       20 * time.Second,
		ExtraArgs:          extraArgs,
	})
	if err != nil {
		t.Fatalf("starting poolfs: %v", err)
	}
	t.Logf("started %s (pid %d)", strings.Join(d.Args, " "), d.Pid())
	t.Cleanup(func() {
		if stop {
			if err := d.Stop(); err != nil {
				t.Errorf("stopping poolfs: %v", err)
			}
		}
		if t.Failed() {
			t.Logf("poolfs log (%s):\n%s", d.LogPath, d.LogTail(64<<10))
		}
	})
	return d
}

// waitNoPendingWrites waits until the daemon serving ROOT als has written
// every fetched chunk to its disk cache.
func waitNoPendingWrites(ctx context.Context, t *testing.T, als string) {
	t.Helper()
	c := control.NewClient(fixture.ControlSocketFor(als))
	start := time.Now()
	for {
		st, err := c.Status(ctx)
		if err != nil {
			t.Fatalf("daemon status: %v", err)
		}
		if st.Cache.PendingBytes == 0 {
			t.Logf("no chunk waiting for the disk after %s", time.Since(start).Round(time.Millisecond))
			return
		}
		if time.Since(start) > 20*time.Second {
			t.Fatalf("%d bytes still waiting for the disk after %s", st.Cache.PendingBytes, time.Since(start))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// killDaemon kills d with SIGKILL and waits until it has exited.
func killDaemon(t *testing.T, d *fixture.Daemon) {
	t.Helper()
	if err := syscall.Kill(d.Pid(), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(10 * time.Second); !d.Exited(); {
		if time.Now().After(deadline) {
			t.Fatal("daemon still running 10s after SIGKILL")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// waitLive waits until a live daemon answers in the pool mount pool after
// a restart begun at start. StartDaemon returns once .pool is a FUSE
// mount, which the dead one also is, and for a moment .pool is the plain
// directory under it: wait until a live FUSE file system answers there.
func waitLive(t *testing.T, pool string, start time.Time) {
	t.Helper()
	probe := filepath.Join(pool, "probe")
	for {
		var sfs syscall.Statfs_t
		serr := syscall.Statfs(pool, &sfs)
		_, err := os.Stat(probe)
		if serr == nil && sfs.Type == fuseSuperMagic && errors.Is(err, syscall.ENOENT) {
			return // a live daemon answering
		}
		if time.Since(start) > 20*time.Second {
			t.Fatalf("the restarted daemon does not answer in %s: %v", pool, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestRestartAfterKill: a daemon killed with SIGKILL leaves a dead mount;
// a new daemon on the same ROOT and cache clears it, serves the same paths
// from its metadata store and disk cache (no manifest request, no blob
// byte), and a container podman created before the kill starts.
func TestRestartAfterKill(t *testing.T) {
	testRestartAfterKill(t, fixture.ImageOptions{Cmd: []string{"/bin/sh"}, ChunkSize: 256 << 10})
}

// TestRestartZstd is TestRestartAfterKill with zstd:chunked layers. (Its
// name is short because podman refuses a runroot path over 50 bytes, and
// the test's temporary directories carry its name.)
func TestRestartZstd(t *testing.T) {
	testRestartAfterKill(t, fixture.ImageOptions{Cmd: []string{"/bin/sh"}, ChunkSize: 256 << 10, ZstdChunked: true})
}

func testRestartAfterKill(t *testing.T, opts fixture.ImageOptions) {
	requireRoot(t)
	requirePodman(t)
	ctx := testContext(t, 5*time.Minute)
	reg := fixture.StartRegistry(t)
	ref := fixture.ImageRef(reg.Host, "test/restart", "v1")
	tars := helloImageTars(t)
	tars = append(tars, fixture.BuildTar([]fixture.TarEntry{
		{Name: "data", Type: tar.TypeDir, Mode: 0o755},
		{Name: "data/a.bin", Mode: 0o644, Content: fixture.RandomBytes(7, 3<<20)},
		{Name: "data/b.txt", Mode: 0o644, Content: []byte(strings.Repeat("poolfs ", 10000))},
	}))
	_, layers, err := fixture.PushImage(ctx, ref, tars, opts)
	if err != nil {
		t.Fatal(err)
	}

	dir := tempDir(t)
	als := filepath.Join(dir, "als")
	pool := filepath.Join(als, ".pool")
	d1 := startDaemonIn(t, reg, dir, "poolfs.1.log", false)
	t.Cleanup(func() { // only if the test failed before the kill
		if !d1.Exited() {
			_ = syscall.Kill(d1.Pid(), syscall.SIGKILL)
		}
	})

	// Read files of the data layer through grammar 2.
	dataDir := filepath.Join(pool, base64.StdEncoding.EncodeToString([]byte(ref)), layers[2].Digest.String(), "diff")
	files := []string{"data/a.bin", "data/b.txt"}
	sums := map[string][32]byte{}
	for _, f := range files {
		b, err := os.ReadFile(filepath.Join(dataDir, f))
		if err != nil {
			t.Fatalf("reading %s before the kill: %v", f, err)
		}
		sums[f] = sha256.Sum256(b)
	}

	pm := newPodman(t, als, reg)
	// Run once so that what the container reads (busybox, hello.txt) is in
	// the cache, then create the container to start after the restart.
	if out, stderr, err := pm.Run(ctx, "run", "--rm", "--network=none", "--tls-verify=false", ref, "cat", "/hello.txt"); err != nil || out != helloText {
		t.Fatalf("podman run before the kill: %q, %v\n%s", out, err, stderr)
	}
	out, stderr, err := pm.Run(ctx, "create", "--network=none", "--tls-verify=false", ref, "cat", "/hello.txt")
	if err != nil {
		t.Fatalf("podman create: %v\n%s", err, stderr)
	}
	id := strings.TrimSpace(out)

	// Chunks reach the disk once fetching pauses (--disk-write-behind); a
	// kill before that loses them by design, so wait until the daemon says
	// none are pending: what the test checks is that what the disk cache
	// holds survives the kill.
	waitNoPendingWrites(ctx, t, als)
	killDaemon(t, d1)
	// A name never looked up must reach the daemon (cached entries of
	// the old mount would not).
	probe := filepath.Join(pool, "probe")
	if _, err := os.Stat(probe); !errors.Is(err, syscall.ENOTCONN) {
		t.Fatalf("after kill -9, a lookup in the mount: %v, want ENOTCONN (a dead mount)", err)
	}

	reg.ResetStats()
	start := time.Now()
	// The kill lost what the first daemon recorded, so the reopened layers
	// have no profile and would look for a published one: a manifest and a
	// referrers request in the background (integration
	// TestPublishedProfileAfterRestart). Off here: this test counts what
	// serving the layers costs.
	startDaemonIn(t, reg, dir, "poolfs.2.log", true, "--profile-lookup=false")
	waitLive(t, pool, start)
	for _, f := range files {
		b, err := os.ReadFile(filepath.Join(dataDir, f))
		if err != nil {
			t.Fatalf("reading %s after the restart: %v", f, err)
		}
		if sha256.Sum256(b) != sums[f] {
			t.Errorf("%s: different content after the restart", f)
		}
	}
	afterReads := reg.Stats()

	out, stderr, err = pm.Run(ctx, "start", "-a", id)
	if err != nil {
		t.Fatalf("podman start -a of the container created before the kill: %v\n%s", err, stderr)
	}
	if out != helloText {
		t.Errorf("podman start -a: output %q, want %q\nstderr:\n%s", out, helloText, stderr)
	}
	if _, _, err := pm.Run(ctx, "rm", id); err != nil {
		t.Logf("podman rm: %v", err)
	}

	st := reg.Stats()
	t.Logf("figures: after restart, reading %d files fetched %d blob bytes in %d range GETs and made %d manifest requests; with podman start: %d blob bytes, %d manifest requests, %d requests in all",
		len(files), afterReads.BlobBytes, afterReads.RangeGets, afterReads.ManifestRequests, st.BlobBytes, st.ManifestRequests, st.Requests)
	if st.BlobBytes != 0 {
		t.Errorf("after the restart the registry served %d blob bytes; everything was in the disk cache", st.BlobBytes)
	}
	if st.ManifestRequests != 0 {
		t.Errorf("after the restart the daemon made %d manifest requests; the layers were in its metadata store", st.ManifestRequests)
	}
	if t.Failed() {
		t.Logf("registry requests after the restart:\n%s", reg.RequestLog())
	}
}
