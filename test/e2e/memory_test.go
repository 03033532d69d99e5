package e2e

import (
	"bufio"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"

	"github.com/poolfs/poolfs/control"
	"github.com/poolfs/poolfs/fs/fstest"
	"github.com/poolfs/poolfs/test/fixture"
)

// procStatus reads a "kB" field of /proc/<pid>/status (VmRSS, VmHWM), in bytes.
func procStatus(t *testing.T, pid int, field string) int64 {
	t.Helper()
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), field+":"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return kb << 10
		}
	}
	t.Fatalf("no %s in /proc/%d/status", field, pid)
	return 0
}

// pushRaw pushes an image of one prebuilt layer blob and returns the
// grammar-2 diff path of that layer under als.
func pushRaw(ctx context.Context, t *testing.T, reg *fixture.Registry, als, repo string, blob []byte, toc digest.Digest) string {
	t.Helper()
	l, err := fixture.RawLayer(blob, toc)
	if err != nil {
		t.Fatal(err)
	}
	img, err := fixture.ImageOf([]*fixture.Layer{l}, fixture.ImageOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ref := fixture.ImageRef(reg.Host, repo, "v1")
	if err := img.Push(ctx, ref); err != nil {
		t.Fatal(err)
	}
	return filepath.Join(als, ".pool", base64.StdEncoding.EncodeToString([]byte(ref)), l.Info.Digest.String(), "diff")
}

func status(ctx context.Context, t *testing.T, als string) control.Status {
	t.Helper()
	st, err := control.NewClient(fixture.ControlSocketFor(als)).Status(ctx)
	if err != nil {
		t.Fatalf("daemon status: %v", err)
	}
	return st
}

const mib = 1 << 20

// TestMemoryBombs: layers whose TOCs hold millions of tiny entries in a
// few MiB of blob (one over the entries limit, one of long names under it
// but over the tree memory limit) are refused with ENOENT, so podman would pull them,
// with a log line naming the limit; a normal layer is served all along,
// and the daemon's peak RSS stays far below what the bombs took before
// (1.7-1.9 GiB for the first alone).
func TestMemoryBombs(t *testing.T) {
	requireRoot(t)
	ctx := testContext(t, 3*time.Minute)
	reg := fixture.StartRegistry(t)
	d, als := startDaemonWith(t, reg, "--tree-max-entries", "200000", "--tree-memory-mb", "96", "--memory-cache-mb", "32")

	okTar := fixture.BuildTar([]fixture.TarEntry{{Name: "hello.txt", Mode: 0o644, Content: []byte("hello\n")}})
	okRef := fixture.ImageRef(reg.Host, "test/ok", "v1")
	_, okLayers, err := fixture.PushImage(ctx, okRef, [][]byte{okTar}, fixture.ImageOptions{})
	if err != nil {
		t.Fatal(err)
	}
	okDiff := filepath.Join(als, ".pool", base64.StdEncoding.EncodeToString([]byte(okRef)), okLayers[0].Digest.String(), "diff")
	fstest.CompareTree(t, okDiff, okTar)

	bombs := []struct {
		name  string
		m     fstest.ManyEntries
		limit string // what the log line names
	}{
		// 2 million tiny entries: over the entries limit (200k here, 1M by
		// default; the tree memory limit would refuse it too).
		{"entries", fstest.ManyEntries{Entries: 2_000_000, Dirs: 1000, Seed: "a"}, "the entries limit"},
		// 500k entries of 400-byte names (a 200 MiB TOC in a few MiB):
		// under the entries limit, over the 96 MiB for trees.
		{"memory", fstest.ManyEntries{Entries: 500_000, Dirs: 100, Pad: 400, Seed: "b"}, "the tree memory limit"},
	}
	baseline := procStatus(t, d.Pid(), "VmRSS")
	for _, b := range bombs {
		blob, toc, err := b.m.Build()
		if err != nil {
			t.Fatal(err)
		}
		diff := pushRaw(ctx, t, reg, als, "test/bomb-"+b.name, blob, toc)
		start := time.Now()
		_, err = os.Stat(diff)
		t.Logf("%s bomb (%d entries, %.1f MiB blob): stat %v after %s", b.name, b.m.Entries, float64(len(blob))/mib, err, time.Since(start).Round(time.Millisecond))
		if !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("%s bomb: stat %v, want ENOENT", b.name, err)
		}
		if !strings.Contains(d.Log(), b.limit) {
			t.Errorf("%s bomb: no log line naming %q", b.name, b.limit)
		}
		// The normal layer is still served.
		if got, err := os.ReadFile(filepath.Join(okDiff, "hello.txt")); err != nil || string(got) != "hello\n" {
			t.Errorf("after the %s bomb: hello.txt %q, %v", b.name, got, err)
		}
	}
	hwm := procStatus(t, d.Pid(), "VmHWM")
	t.Logf("daemon RSS %d MiB before the bombs, peak %d MiB", baseline/mib, hwm/mib)
	if hwm > baseline+400*mib {
		t.Errorf("daemon peak RSS %d MiB, %d MiB over its %d MiB before the bombs", hwm/mib, (hwm-baseline)/mib, baseline/mib)
	}
	if st := status(ctx, t, als); st.Trees.MaxBytes != 96*mib || st.Trees.Bytes > 96*mib {
		t.Errorf("trees status %+v", st.Trees)
	}
}

// TestIdleTreesLeaveMemory: 50 layers of 20k entries each, looked up and
// left alone, leave memory once the kernel forgets their entries, the
// daemon's RSS comes back near where it started, and each is served again
// from meta.db without a registry request.
func TestIdleTreesLeaveMemory(t *testing.T) {
	requireRoot(t)
	ctx := testContext(t, 3*time.Minute)
	reg := fixture.StartRegistry(t)
	d, als := startDaemonWith(t, reg, "--tree-idle", "1s", "--memory-cache-mb", "32")

	const layers, entries = 50, 20_000
	diffs := make([]string, layers)
	for i := range diffs {
		blob, toc, err := fstest.ManyEntries{Entries: entries, Dirs: 50, Seed: fmt.Sprint(i)}.Build()
		if err != nil {
			t.Fatal(err)
		}
		diffs[i] = pushRaw(ctx, t, reg, als, fmt.Sprintf("test/idle%d", i), blob, toc)
	}
	baseline := procStatus(t, d.Pid(), "VmRSS")
	// Each tree is held by an open directory until all are counted: on a
	// loaded machine, reading 50 trees takes longer than the idle time.
	var held []*os.File
	for i, diff := range diffs {
		dir, err := os.Open(diff)
		if err != nil {
			t.Fatalf("layer %d: %v", i, err)
		}
		held = append(held, dir)
		names, err := dir.ReadDir(-1)
		if err != nil || len(names) != 50 {
			t.Fatalf("layer %d: %d names, %v", i, len(names), err)
		}
	}
	loaded := procStatus(t, d.Pid(), "VmRSS")
	st := status(ctx, t, als)
	t.Logf("RSS %d MiB before, %d MiB with %d trees (%d MiB of trees)", baseline/mib, loaded/mib, st.Trees.Loaded, st.Trees.Bytes/mib)
	if st.Trees.Loaded != layers {
		t.Fatalf("%d trees in memory, want %d", st.Trees.Loaded, layers)
	}
	for _, dir := range held {
		dir.Close()
	}

	// The kernel keeps what was looked up until told otherwise; a tree it
	// still references (here, a file of layer 0 kept open) must stay.
	// ManyEntries names: d<seed><dir>/f<n>.
	open0, err := os.Open(filepath.Join(diffs[0], "d00", "f0"))
	if err != nil {
		t.Fatal(err)
	}
	waitLoaded := func(want int) {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for st = status(ctx, t, als); st.Trees.Loaded > want; st = status(ctx, t, als) {
			if time.Now().After(deadline) {
				t.Fatalf("%d trees still in memory 30 s later (%d bytes), want %d", st.Trees.Loaded, st.Trees.Bytes, want)
			}
			time.Sleep(200 * time.Millisecond)
			dropKernelCaches(t)
		}
	}
	dropKernelCaches(t)
	waitLoaded(1)
	time.Sleep(2 * time.Second) // two idle times more: the open file keeps its tree
	for _, l := range status(ctx, t, als).Layers {
		if held := strings.Contains(diffs[0], l.Digest); l.TreeLoaded != held {
			t.Errorf("layer %s: tree in memory %v, want %v", l.Digest, l.TreeLoaded, held)
		}
	}
	if b, err := io.ReadAll(open0); err != nil || len(b) != 0 {
		t.Errorf("reading the file kept open: %q, %v", b, err)
	}
	open0.Close()
	waitLoaded(0)
	idle := procStatus(t, d.Pid(), "VmRSS")
	t.Logf("RSS %d MiB once the trees left, trees take %d bytes", idle/mib, st.Trees.Bytes)
	if idle > baseline+(loaded-baseline)/4 {
		t.Errorf("RSS %d MiB once idle: not back near the %d MiB before (%d MiB with the trees)", idle/mib, baseline/mib, loaded/mib)
	}

	reg.ResetStats()
	for i, diff := range diffs {
		names, err := os.ReadDir(diff)
		if err != nil || len(names) != 50 {
			t.Fatalf("layer %d again: %d names, %v", i, len(names), err)
		}
	}
	if n := reg.Stats().Requests; n != 0 {
		t.Errorf("%d registry requests to serve the layers again:\n%s", n, reg.RequestLog())
	}
	// Each came back from meta.db at least once; on a loaded machine the
	// first ones may have left again (1 s idle) before the status is read.
	st = status(ctx, t, als)
	for _, l := range st.Layers {
		if l.TreeLoads < 1 || (l.TreeLoaded && l.TreeEntries != entries+1) {
			t.Errorf("layer %s: loaded %v, loads %d, entries %d", l.Digest, l.TreeLoaded, l.TreeLoads, l.TreeEntries)
		}
	}
}

// dropKernelCaches makes the kernel forget the dentries and inodes it does
// not use (FUSE FORGETs), as memory pressure would.
func dropKernelCaches(t *testing.T) {
	t.Helper()
	if err := os.WriteFile("/proc/sys/vm/drop_caches", []byte("2"), 0o200); err != nil {
		t.Fatalf("dropping the kernel's caches: %v", err)
	}
}
