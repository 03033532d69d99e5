package fs

import (
	"bytes"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/poolfs/poolfs/fs/fstest"
	"github.com/poolfs/poolfs/layer"
)

// opCounter counts the requests a mount's daemon answers, by operation.
type opCounter struct {
	mu  sync.Mutex
	ops map[string]int
}

func (c *opCounter) observe(op string, _ time.Duration, _ fuse.Status) {
	c.mu.Lock()
	c.ops[op]++
	c.mu.Unlock()
}

// take returns the counts since the last take.
func (c *opCounter) take() map[string]int {
	c.mu.Lock()
	defer c.mu.Unlock()
	ops := c.ops
	c.ops = map[string]int{}
	return ops
}

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
			c := &opCounter{ops: map[string]int{}}
			opts := Options()
			dir := mountRaw(t, NewNodeFSWith(NewLayerRoot(s.l, nil), opts, ServeOptions{Observer: c.observe, FreeOpens: tt.freeOpens}), opts)
			fstest.CompareTree(t, dir, s.tar) // reads everything once
			files := regularFiles(s.l.Root())
			readAll := func() {
				for _, e := range files {
					got, err := os.ReadFile(filepath.Join(dir, e.Path))
					if want := fstest.TarFile(t, s.tar, e.Path); err != nil || !bytes.Equal(got, want) {
						t.Fatalf("%s: %v, right bytes %v", e.Path, err, bytes.Equal(got, want))
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
func waitOps(c *opCounter, op string, n int) map[string]int {
	deadline := time.Now().Add(5 * time.Second)
	last := -1
	for {
		c.mu.Lock()
		got, total := c.ops[op], 0
		for _, k := range c.ops {
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
	const mib = 1 << 20
	dir := func(files ...*layer.Entry) *layer.Entry {
		d := &layer.Entry{Type: layer.TypeDir, Children: map[string]*layer.Entry{}}
		for i, f := range files {
			name := string(rune('a'+i%26)) + string(rune('a'+i/26%26)) + string(rune('a'+i/676))
			d.Children[name] = f
			d.Names = append(d.Names, name)
		}
		return d
	}
	reg := func(size int64) *layer.Entry { return &layer.Entry{Type: layer.TypeReg, Size: size} }
	smalls := func(n int) []*layer.Entry {
		var fs []*layer.Entry
		for range n {
			fs = append(fs, reg(3000))
		}
		return fs
	}
	big, linked := reg(512*mib), reg(30*mib)
	for _, tt := range []struct {
		name     string
		root     *layer.Entry
		minWhole int64
		want     bool
	}{
		{"one big file", dir(big), mib, true},
		{"big file in a subdirectory", dir(dir(big)), mib, true},
		{"two big files against 1000 small ones", dir(reg(30*mib), reg(30*mib), dir(smalls(1000)...)), mib, true},
		{"a hard-linked big file counts once", dir(linked, linked, dir(smalls(1000)...)), mib, false},
		{"many small files", dir(append(smalls(6600), reg(35*mib))...), mib, false},
		{"small files only", dir(smalls(10)...), mib, false},
		{"empty", dir(), mib, false},
		{"no whole files", dir(big), 0, false},
		{"nil root", nil, mib, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if got := PrefersOpens(tt.root, tt.minWhole); got != tt.want {
				t.Errorf("PrefersOpens = %v, want %v", got, tt.want)
			}
		})
	}
}
