package fs

import (
	"archive/tar"
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/poolfs/poolfs/fs/fstest"
	"github.com/poolfs/poolfs/layer"
)

// regularFiles lists the view's regular files (one name per inode).
func regularFiles(root *layer.Entry) []*layer.Entry {
	var files []*layer.Entry
	eachEntry(root, func(e *layer.Entry) {
		if e.Type == layer.TypeReg {
			files = append(files, e)
		}
	})
	return files
}

// Opening files whose pages the kernel holds costs the daemon nothing on
// a FreeOpens mount, and exactly an OPEN and a RELEASE (no FLUSH, no READ,
// no GETATTR) on one that sees opens. A change that brings back a round
// trip per open of a cached file fails here.
func TestCachedOpensRequests(t *testing.T) {
	for _, tt := range []struct {
		name      string
		freeOpens bool
		perOpen   map[string]int
	}{
		{"free opens", true, map[string]int{}},
		{"opens", false, map[string]int{"open": 1, "release": 1}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			s := openSample(t)
			c := &opCounts{n: map[string]int{}}
			opts := Options()
			dir := mountRaw(t, NewNodeFSWith(NewLayerRoot(s.l, nil), opts, ServeOptions{Observer: c.observe, FreeOpens: tt.freeOpens}), opts)
			fstest.CompareTree(t, dir, s.tar) // reads everything once
			files := regularFiles(s.l.Root())
			readAll := func() {
				for _, e := range files {
					got, err := os.ReadFile(filepath.Join(dir, e.Path()))
					if want := fstest.TarFile(t, s.tar, e.Path()); err != nil || !bytes.Equal(got, want) {
						t.Fatalf("%s: %v, right bytes %v", e.Path(), err, bytes.Equal(got, want))
					}
				}
			}
			// The first round may still carry requests the kernel learns
			// from (the first FLUSH's ENOSYS) and releases of the tree
			// compare.
			readAll()
			waitOps(c, "release", tt.perOpen["release"]*len(files))
			readAll()
			want := map[string]int{}
			for op, n := range tt.perOpen {
				want[op] = n * len(files)
			}
			got := waitOps(c, "release", want["release"])
			if len(got) != len(want) {
				t.Errorf("reading %d cached files again: requests %v, want %v", len(files), got, want)
			}
			for op, n := range want {
				if got[op] != n {
					t.Errorf("reading %d cached files again: requests %v, want %v", len(files), got, want)
				}
			}
		})
	}
}

// waitOps waits for op's count to reach n (the kernel sends RELEASE after
// close(2) returns) and for the counts to stay still a moment, then takes
// them.
func waitOps(c *opCounts, op string, n int) map[string]int {
	deadline := time.Now().Add(5 * time.Second)
	last := -1
	for {
		c.mu.Lock()
		got, total := c.n[op], 0
		for _, k := range c.n {
			total += k
		}
		c.mu.Unlock()
		if (got >= n && total == last) || time.Now().After(deadline) {
			return c.take()
		}
		last = total
		time.Sleep(50 * time.Millisecond)
	}
}

func TestPrefersOpens(t *testing.T) {
	// With 1 KiB as the whole-file size, files of a few MiB are "large"
	// and cheap to build.
	const minWhole, mib = 1 << 10, 1 << 20
	reg := func(name string, size int64) *tar.Header {
		return &tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: 0o644, Size: size}
	}
	smalls := func(n int) []*tar.Header {
		hs := []*tar.Header{{Name: "s/", Typeflag: tar.TypeDir, Mode: 0o755}}
		for i := range n {
			hs = append(hs, reg(fmt.Sprintf("s/f%d", i), 10))
		}
		return hs
	}
	// 100 small files cost 4 ms of opens; a MiB of large files saves 1 ms.
	for _, tt := range []struct {
		name string
		hdrs []*tar.Header
		want bool
	}{
		{"one large file", []*tar.Header{reg("big", 2*mib)}, true},
		{"large file in a subdirectory", []*tar.Header{{Name: "d/", Typeflag: tar.TypeDir, Mode: 0o755}, reg("d/big", 2*mib)}, true},
		{"two large files against 100 small ones", append(smalls(100), reg("a", 3*mib), reg("b", 3*mib)), true},
		{"a hard-linked large file counts once", append(smalls(100), reg("a", 3*mib),
			&tar.Header{Name: "b", Typeflag: tar.TypeLink, Linkname: "a"}), false},
		{"many small files", append(smalls(100), reg("a", 1*mib)), false},
		{"small files only", smalls(10), false},
		{"empty", nil, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if got := PrefersOpens(viewOf(t, tt.hdrs...), minWhole); got != tt.want {
				t.Errorf("PrefersOpens = %v, want %v", got, tt.want)
			}
		})
	}
	if PrefersOpens(viewOf(t, reg("big", 2*mib)), 0) {
		t.Error("PrefersOpens with no whole-file copies (size 0) = true, want false")
	}
}
