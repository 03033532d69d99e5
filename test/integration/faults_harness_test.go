package integration

import (
	"archive/tar"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/hanwen/go-fuse/v2/fuse"
	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"

	"github.com/poolfs/poolfs/alsfs"
	"github.com/poolfs/poolfs/cache"
	"github.com/poolfs/poolfs/fs/fstest"
	"github.com/poolfs/poolfs/layer"
	"github.com/poolfs/poolfs/meta"
	"github.com/poolfs/poolfs/pool"
	"github.com/poolfs/poolfs/profile"
	"github.com/poolfs/poolfs/profilestore"
	"github.com/poolfs/poolfs/remote"
	"github.com/poolfs/poolfs/test/fixture"
)

// mountOpts tunes mountPoolOpts beyond what mountPool fixes.
type mountOpts struct {
	Remote   remote.Options // Insecure and Log are filled in
	CacheDir string         // "": a fresh one
	MemoryMB int64          // 0: 256
	Quiet    bool           // log at info level only (fault tests log a lot)
	Meta     *meta.Store    // nil: no metadata store
	// Passthrough turns on whole-file copies (the daemon's default
	// --passthrough), with layer.DefaultWholeMinSize unless WholeMinSize
	// is set.
	Passthrough  bool
	WholeMinSize int64
	// InPlaceTrees serves the trees inside the pool's mount (the daemon's
	// --in-place-trees) instead of on the read-only <ALS root>/.trees.
	InPlaceTrees bool
	// Prefetch is what the pool fetches on its own (the zero value: the
	// prioritized files once the TOC is in, nothing else).
	Prefetch pool.PrefetchOptions
	// ProfileSource is asked for published startup profiles (nil: none,
	// unless ProfileLookup).
	ProfileSource profile.Source
	// ProfileLookup makes the pool look for published profiles in the
	// registry (the daemon's --profile-lookup); mounted.Published is that
	// store either way.
	ProfileLookup bool
	// Root is the ALS root ("": <a fresh temp dir>/als).
	Root string
	// Pool is passed to pool.New (tag recheck, tree limits).
	Pool []pool.Option
	// Access says who besides root may reach the store (the daemon's
	// --group).
	Access alsfs.Access
	// LogHook also gets the daemon's log entries.
	LogHook logrus.Hook
}

// mountPoolOpts is mountPool with a tunable resolver and cache location.
func mountPoolOpts(t *testing.T, reg *fixture.Registry, o mountOpts) *mounted {
	t.Helper()
	requireFUSE(t)
	log := logrus.New()
	log.SetLevel(logrus.DebugLevel)
	if o.Quiet {
		log.SetLevel(logrus.InfoLevel)
	}
	log.SetOutput(newTestWriter(t))
	if o.LogHook != nil {
		log.AddHook(o.LogHook)
	}
	entry := logrus.NewEntry(log)

	root := o.Root
	if root == "" {
		root = filepath.Join(t.TempDir(), "als")
	}
	if o.CacheDir == "" {
		o.CacheDir = filepath.Join(t.TempDir(), "cache")
	}
	if o.MemoryMB == 0 {
		o.MemoryMB = 256
	}
	disk, err := cache.NewDisk(o.CacheDir, entry)
	if err != nil {
		t.Fatal(err)
	}
	c := cache.NewTiered(cache.NewMemory(o.MemoryMB<<20), disk)
	ro := o.Remote
	ro.Insecure = append(ro.Insecure, reg.Host)
	ro.Log = entry
	resolver := remote.New(ro)
	published := profilestore.New(resolver, profilestore.Options{Log: entry})
	src := o.ProfileSource
	if src == nil && o.ProfileLookup {
		src = published
	}
	popts := []pool.Option{pool.WithProfileSource(src), pool.WithPrefetch(o.Prefetch), pool.WithMeta(o.Meta)}
	if o.Passthrough {
		w := layer.NewWholeFiles(context.Background(), disk, layer.WholeOptions{MinSize: o.WholeMinSize, Log: entry})
		t.Cleanup(w.Close) // after the unmount below, as in the daemon
		popts = append(popts, pool.WithWholeFiles(w))
	}
	p := pool.New(resolver, c, entry, append(popts, o.Pool...)...)
	m := &mounted{Pool: p, Disk: disk, Published: published}
	mounts, err := alsfs.Mount(root, p, alsfs.Options{Access: o.Access, InPlaceTrees: o.InPlaceTrees, Log: entry, Observer: func(op string, _ time.Duration, _ fuse.Status) {
		switch op {
		case "read":
			m.Reads.Add(1)
		case "getattr":
			m.GetAttrs.Add(1)
		case "open":
			m.Opens.Add(1)
		}
	}})
	if err != nil {
		t.Fatalf("mounting pool: %v", err)
	}
	m.Dir, m.TreesDir = mounts.PoolDir, mounts.TreesDir
	t.Cleanup(func() {
		if err := mounts.Unmount(); err != nil {
			t.Errorf("unmounting: %v", err)
		}
		p.Flush() // before the test closes the metadata store
		p.Close() // no idle sweep may log once the test has ended
	})
	return m
}

// layerTar is a layer of many small and a few multi-chunk files with
// incompressible content, so that reading it takes many range requests.
func layerTar(seed uint64, files int) []byte {
	entries := []fixture.TarEntry{{Name: "d", Type: tar.TypeDir, Mode: 0o755}}
	for i := range files {
		size := 1000 + int(seed%7)*300 + i*997
		if i%5 == 0 {
			size = 200<<10 + i*1013 // several 64 KiB chunks
		}
		entries = append(entries, fixture.TarEntry{
			Name:    fmt.Sprintf("d/f%03d", i),
			Mode:    0o644,
			Content: fixture.RandomBytes(seed*1000+uint64(i), size),
		})
	}
	return fixture.BuildTar(entries)
}

// treeDiffs reads every file of the view at dir and returns its
// differences from tarBytes (nil: identical) and the number of regular
// files read.
func treeDiffs(t *testing.T, dir string, tarBytes []byte) (diffs []string, files int) {
	t.Helper()
	want, err := fstest.TarView(tarBytes)
	if err != nil {
		t.Fatalf("expected view of tar: %v", err)
	}
	got, err := fstest.DirView(dir, true)
	if err != nil {
		return []string{fmt.Sprintf("walking %s: %v", dir, err)}, 0
	}
	for _, e := range got {
		if e.Type == "reg" {
			files++
		}
	}
	return fstest.Diff(want, got), files
}

// tree is where the tree a layer's diff (or rootfs.<ID>) names is: diff
// links to it on the trees mount (see alsfs.Options.InPlaceTrees), or is it.
func tree(t *testing.T, diff string) string {
	t.Helper()
	dir, err := filepath.EvalSymlinks(diff)
	if err != nil {
		t.Fatalf("resolving %s: %v", diff, err)
	}
	return dir
}

// dropPageCache makes the kernel forget the cached pages of every regular
// file under dir, so the next read goes to the daemon again.
func dropPageCache(t *testing.T, dir string) {
	t.Helper()
	err := filepath.WalkDir(tree(t, dir), func(p string, d os.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		defer f.Close()
		return unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED)
	})
	if err != nil {
		t.Fatalf("dropping page cache under %s: %v", dir, err)
	}
}
