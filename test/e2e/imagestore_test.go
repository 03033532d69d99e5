package e2e

import (
	"bytes"
	"context"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/poolfs/poolfs/test/fixture"
)

// poolfsCLI runs `poolfs args... --socket <the daemon's socket for als>`.
func poolfsCLI(ctx context.Context, t *testing.T, als string, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	cmd := exec.CommandContext(ctx, poolfsBinary(t), append(args, "--socket", fixture.ControlSocketFor(als))...)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err = cmd.Run()
	return o.String(), e.String(), err
}

// checkNoPull fails the test if, among the registry requests after the
// first n, podman made any (its User-Agent starts "containers/"), or
// anyone asked for a manifest or a whole blob: the daemon, serving from
// what it resolved at `image add`, only reads chunks by range.
func checkNoPull(t *testing.T, reg *fixture.Registry, n int, what string) {
	t.Helper()
	reqs := reg.Requests()
	for _, r := range reqs[n:] {
		switch {
		case strings.HasPrefix(r.UserAgent, "containers/"):
			t.Errorf("%s: podman asked the registry: %s", what, r)
		case strings.Contains(r.Path, "/manifests/"):
			t.Errorf("%s: a manifest was fetched: %s", what, r)
		case strings.Contains(r.Path, "/blobs/") && r.Method == "GET" && r.Range == "":
			t.Errorf("%s: a whole blob was fetched: %s", what, r)
		}
	}
	t.Logf("%s: %d registry requests, all chunk reads by the daemon", what, len(reqs)-n)
}

// podmanImages returns `podman images`' repository:tag list.
func podmanImages(ctx context.Context, t *testing.T, pm *fixture.Podman) string {
	t.Helper()
	out, _, err := pm.Run(ctx, "images", "--format", "{{.Repository}}:{{.Tag}} {{.ID}}")
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestImageStore: an image put in the image store by `poolfs image add`
// is listed and run by podman without any pull (no request from podman
// at all), cannot be removed by podman, survives a daemon killed with
// SIGKILL, follows its tag on `image sync`, and is gone from podman after
// `image rm`. An image podman pulls goes to its own store. A daemon
// started with a pinned image adds it. A gzip image is refused, naming
// its layer; an `image add` while podman starts a container from the
// store disturbs neither.
func TestImageStore(t *testing.T) {
	requireRoot(t)
	requirePodman(t)
	ctx := testContext(t, 5*time.Minute)
	reg := fixture.StartRegistry(t)
	ref := fixture.ImageRef(reg.Host, "test/store", "v1")
	if _, _, err := fixture.PushImage(ctx, ref, helloImageTars(t), fixture.ImageOptions{Cmd: []string{"/bin/sh"}}); err != nil {
		t.Fatal(err)
	}
	gzRef := fixture.ImageRef(reg.Host, "test/gzip", "v1")
	_, gzLayers, err := fixture.PushImage(ctx, gzRef, helloImageTars(t), fixture.ImageOptions{Gzip: true})
	if err != nil {
		t.Fatal(err)
	}

	dir := tempDir(t)
	als := filepath.Join(dir, "als")
	d1 := startDaemonIn(t, reg, dir, "poolfs.1.log", false)
	t.Cleanup(func() { // only if the test failed before the kill
		if !d1.Exited() {
			_ = syscall.Kill(d1.Pid(), syscall.SIGKILL)
		}
	})
	pm, err := fixture.NewPodman(tempDir(t), fixture.PodmanOptions{ALS: als, ImageStore: filepath.Join(als, "images"), InsecureRegistries: []string{reg.Host}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = pm.Cleanup() })

	out, stderr, err := poolfsCLI(ctx, t, als, "image", "add", ref)
	if err != nil {
		t.Fatalf("image add: %v\n%s", err, stderr)
	}
	t.Logf("image add: %s", strings.TrimSpace(out))

	run := func(what, want string) {
		t.Helper()
		n := len(reg.Requests())
		got, stderr, err := pm.Run(ctx, "run", "--rm", "--network=none", "--pull=never", ref, "cat", "/hello.txt")
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		if got != want {
			t.Errorf("%s: output %q, want %q\nstderr:\n%s", what, got, want, stderr)
		}
		checkNoPull(t, reg, n, what)
	}
	if list := podmanImages(ctx, t, pm); !strings.Contains(list, ref+" ") {
		t.Fatalf("podman images does not list %s:\n%s", ref, list)
	}
	run("run from the image store", helloText)

	// podman's own store got the container layer only.
	if ls, err := pm.StoreLayers(); err != nil || len(ls) != 0 {
		t.Errorf("podman's store has %d layers after run --rm (%v), want none", len(ls), err)
	}

	_, rmiErr, err := pm.Run(ctx, "rmi", ref)
	if err == nil {
		t.Errorf("podman rmi of an image in the read-only store succeeded")
	} else if !strings.Contains(err.Error(), "read-only") {
		t.Errorf("podman rmi failed, but not for the read-only store: %v", err)
	}
	t.Logf("podman rmi: %s", strings.TrimSpace(rmiErr))
	if list := podmanImages(ctx, t, pm); !strings.Contains(list, ref+" ") {
		t.Fatalf("podman rmi changed the store: %s is gone:\n%s", ref, list)
	}

	_, stderr, err = poolfsCLI(ctx, t, als, "image", "add", gzRef)
	if err == nil {
		t.Errorf("image add of a gzip image succeeded")
	} else if !strings.Contains(stderr, "not eStargz") || !strings.Contains(stderr, gzLayers[0].Digest.String()) {
		t.Errorf("image add of a gzip image: the error does not say which layer is not eStargz:\n%s", stderr)
	}

	// An image podman pulls itself goes to its own store.
	if _, _, err := pm.Run(ctx, "pull", gzRef); err != nil {
		t.Fatal(err)
	}
	if ls, err := pm.StoreLayers(); err != nil || len(ls) != len(gzLayers) {
		t.Errorf("podman's own store has %d layers after pulling %s (%v), want %d", len(ls), gzRef, err, len(gzLayers))
	}
	if ls, _, err := poolfsCLI(ctx, t, als, "image", "ls"); err != nil || strings.Contains(ls, "test/gzip") {
		t.Errorf("image ls after podman's own pull (%v):\n%s", err, ls)
	}

	// A daemon killed with SIGKILL: the next one on the same ROOT serves
	// the store from its metadata store, without the registry's manifests.
	killDaemon(t, d1)
	// The new daemon is given a pinned catalogue of one image, which it
	// adds at startup.
	pinned := fixture.ImageRef(reg.Host, "test/pinned", "v1")
	if _, _, err := fixture.PushImage(ctx, pinned, helloImageTars(t)[:1], fixture.ImageOptions{Cmd: []string{"/bin/true"}}); err != nil {
		t.Fatal(err)
	}
	restart := time.Now()
	startDaemonIn(t, reg, dir, "poolfs.2.log", true, "--pin-image", pinned)
	waitLive(t, filepath.Join(als, ".pool"), restart)
	for start := time.Now(); !strings.Contains(podmanImages(ctx, t, pm), pinned+" "); {
		if time.Since(start) > 20*time.Second {
			t.Fatalf("the pinned image %s is not in the store 20s after the restart", pinned)
		}
		time.Sleep(100 * time.Millisecond)
	}
	run("run after a restart", helloText)

	// An image added while podman starts a container from the store.
	other := fixture.ImageRef(reg.Host, "test/other", "v1")
	if _, _, err := fixture.PushImage(ctx, other, helloImageTars(t)[:1], fixture.ImageOptions{}); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		if _, stderr, err := poolfsCLI(ctx, t, als, "image", "add", other); err != nil {
			t.Errorf("image add during a podman run: %v\n%s", err, stderr)
		}
	}()
	got, _, err := pm.Run(ctx, "run", "--rm", "--network=none", "--pull=never", ref, "cat", "/hello.txt")
	wg.Wait()
	if err != nil || got != helloText {
		t.Errorf("run during an image add: %q, %v", got, err)
	}
	if list := podmanImages(ctx, t, pm); !strings.Contains(list, other+" ") || !strings.Contains(list, ref+" ") {
		t.Errorf("podman images after the concurrent add:\n%s", list)
	}

	// The tag moves: sync puts it on the new image; the old one stays.
	moved := "the tag moved\n"
	tars := helloImageTars(t)
	tars[1] = fixture.BuildTar([]fixture.TarEntry{{Name: "hello.txt", Mode: 0o644, Content: []byte(moved)}})
	if _, _, err := fixture.PushImage(ctx, ref, tars, fixture.ImageOptions{Cmd: []string{"/bin/sh"}}); err != nil {
		t.Fatal(err)
	}
	out, stderr, err = poolfsCLI(ctx, t, als, "image", "sync")
	if err != nil {
		t.Fatalf("image sync: %v\n%s", err, stderr)
	}
	if !strings.Contains(out, ref+": sha256:") {
		t.Errorf("image sync did not report %s moving:\n%s", ref, out)
	}
	run("run after sync", moved)
	ls, _, err := poolfsCLI(ctx, t, als, "image", "ls")
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(ls, "\n"); n != 5 { // header, new, old, other, pinned
		t.Errorf("image ls after sync has %d lines, want the header and 4 images:\n%s", n, ls)
	}

	if _, stderr, err := poolfsCLI(ctx, t, als, "image", "rm", ref); err != nil {
		t.Fatalf("image rm: %v\n%s", err, stderr)
	}
	if list := podmanImages(ctx, t, pm); strings.Contains(list, ref+" ") {
		t.Errorf("podman images still lists %s after image rm:\n%s", ref, list)
	}
	if _, _, err := pm.Run(ctx, "run", "--rm", "--network=none", "--pull=never", ref, "true"); err == nil {
		t.Errorf("podman ran %s after image rm", ref)
	}
}
