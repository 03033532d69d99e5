package fs

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/poolfs/poolfs/fs/fstest"
	"github.com/poolfs/poolfs/layer"
)

// opCounts counts the FUSE operations the daemon answers, by name.
type opCounts struct {
	mu sync.Mutex
	n  map[string]int
}

func (c *opCounts) observe(op string, _ time.Duration, _ fuse.Status) {
	c.mu.Lock()
	c.n[op]++
	c.mu.Unlock()
}

func (c *opCounts) take() map[string]int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := c.n
	c.n = map[string]int{}
	return n
}

// walkAll lists every directory, lstats every entry and reads every
// symlink, as find(1) -ls does. It returns the number of entries and of
// directories and symlinks.
func walkAll(t *testing.T, root string) (entries, dirsAndLinks int) {
	t.Helper()
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		entries++
		if d.IsDir() || d.Type()&fs.ModeSymlink != 0 {
			dirsAndLinks++
		}
		if _, err := os.Lstat(p); err != nil {
			return err
		}
		if d.Type()&fs.ModeSymlink != 0 {
			_, err = os.Readlink(p)
		}
		return err
	})
	if err != nil {
		t.Fatalf("walking %s: %v", root, err)
	}
	return entries, dirsAndLinks
}

// Walks of a view the kernel has seen are answered by the kernel: no
// opendir/releasedir, no lookup, no readlink, listings from its cache. The
// one thing left is the kernel's own: reading a listing from the daemon
// marks the directory's atime stale (fuse_invalidate_atime; only a
// read-only superblock is spared, and the pool cannot be one), and so does
// reading a link, so the next stat of each directory and link asks for its
// attributes once. A listing whose reading was interrupted (a signal
// during getdents) is not kept and is read again on the next walk, which
// happens under load (-race), so a few of those are tolerated; a walk
// later on asks nothing at all.
func TestLaterWalksAskNothing(t *testing.T) {
	s := openSample(t)
	c := &opCounts{n: map[string]int{}}
	opts := Options()
	dir := mountRaw(t, observed{NewNodeFS(NewLayerRoot(s.l, nil), opts), c.observe}, opts)

	entries, dirsAndLinks := walkAll(t, dir)
	ops := c.take()
	if ops["readdirplus"]+ops["readdir"] == 0 || ops["readlink"] == 0 {
		t.Fatalf("first walk: %v; the daemon should have listed directories and read links", ops)
	}
	for walk := 2; ; walk++ {
		if n, _ := walkAll(t, dir); n != entries {
			t.Fatalf("walk %d saw %d entries, the first %d", walk, n, entries)
		}
		ops := c.take()
		if len(ops) == 0 {
			break
		}
		listings := ops["readdirplus"] + ops["readdir"]
		getattrs := ops["getattr"]
		delete(ops, "readdirplus")
		delete(ops, "readdir")
		delete(ops, "getattr")
		if len(ops) != 0 || getattrs > dirsAndLinks || listings > dirsAndLinks/20 {
			t.Fatalf("walk %d of %d entries (%d directories and links) asked the daemon for %d listings, %d getattrs and %v",
				walk, entries, dirsAndLinks, listings, getattrs, ops)
		}
		if walk == 5 {
			t.Fatalf("walk %d still asked the daemon for %d listings and %d getattrs", walk, listings, getattrs)
		}
	}
	fstest.CompareTree(t, dir, s.tar)
}

// A directory too large for one READDIR reply is listed completely and in
// order: the kernel continues at an offset, which poolfs serves from a
// fresh directory stream per request.
func TestLargeDirectoryListing(t *testing.T) {
	const files = 3000
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	hdr := func(h *tar.Header) {
		h.ModTime = time.Unix(1700000000, 0)
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
	}
	hdr(&tar.Header{Name: "big/", Typeflag: tar.TypeDir, Mode: 0o755})
	var want []string
	for i := 0; i < files; i++ {
		name := fmt.Sprintf("a-rather-long-file-name-to-fill-the-reply-%05d", i)
		want = append(want, name)
		hdr(&tar.Header{Name: "big/" + name, Typeflag: tar.TypeReg, Mode: 0o644})
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	data, toc := fstest.EStargz(t, buf.Bytes())
	l, err := layer.Open(context.Background(), fstest.NewMemBlob(data), toc, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	dir := mount(t, NewLayerRoot(l, nil), nil)
	for round := 0; round < 2; round++ { // from the daemon, then from the kernel's cache
		ents, err := os.ReadDir(filepath.Join(dir, "big"))
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, e := range ents {
			got = append(got, e.Name())
		}
		if !sort.StringsAreSorted(got) || len(got) != files || got[0] != want[0] || got[files-1] != want[files-1] {
			t.Fatalf("round %d: %d names, sorted %v, want %d", round, len(got), sort.StringsAreSorted(got), files)
		}
	}
	fstest.CompareTree(t, dir, buf.Bytes())
}
