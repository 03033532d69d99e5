package fs

import (
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/poolfs/poolfs/cache"
	"github.com/poolfs/poolfs/fs/fstest"
	"github.com/poolfs/poolfs/layer"
)

// ptMount is the sample layer on a real mount with real caches, whole-file
// copies on or off, and a count of the FUSE READ requests the daemon got.
type ptMount struct {
	dir   string
	tar   []byte
	l     *layer.Layer
	disk  *cache.Disk
	root  gofs.InodeEmbedder
	reads atomic.Int64
}

// mountPassthrough mounts the sample with whole-file copies for files of
// any size if on; wrap, if not nil, stands between the nodes and the layer.
func mountPassthrough(t *testing.T, on bool, wrap func(*layer.Layer) Reader) *ptMount {
	t.Helper()
	tarBytes := fstest.SampleTar(t)
	data, toc := fstest.EStargz(t, tarBytes)
	disk, err := cache.NewDisk(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	var lopts []layer.Option
	if on {
		w := layer.NewWholeFiles(context.Background(), disk, layer.WholeOptions{MinSize: 1, Quiet: -1})
		t.Cleanup(w.Close) // after the unmount, registered below
		lopts = append(lopts, layer.WithWholeFiles(w))
	}
	l, err := layer.Open(context.Background(), fstest.NewMemBlob(data), toc, cache.NewTiered(cache.NewMemory(1<<20), disk), nil, lopts...)
	if err != nil {
		t.Fatal(err)
	}
	m := &ptMount{tar: tarBytes, l: l, disk: disk}
	var r Reader = l
	if wrap != nil {
		r = wrap(l)
	}
	m.root = NewLayerRoot(r, nil)
	opts := Options()
	m.dir = mountRaw(t, observed{NewNodeFS(m.root, opts), func(op string, _ time.Duration, _ fuse.Status) {
		if op == "read" {
			m.reads.Add(1)
		}
	}}, opts)
	return m
}

func (m *ptMount) path(name string) string { return filepath.Join(m.dir, name) }

// readDropping reads the file at name through one open and drops its pages
// from the kernel's page cache before closing, so that the next open
// cannot be served from the page cache: it must ask the daemon, or read a
// passthrough backing file. It returns the bytes and the READ requests the
// daemon got meanwhile.
func (m *ptMount) readDropping(t *testing.T, name string) ([]byte, int64) {
	t.Helper()
	before := m.reads.Load()
	f, err := os.Open(m.path(name))
	if err != nil {
		t.Fatalf("open %s: %v", name, err)
	}
	defer f.Close()
	b, err := io.ReadAll(f)
	if err != nil {
		t.Fatalf("read %s: %v", name, err)
	}
	if err := unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED); err != nil {
		t.Fatalf("fadvise %s: %v", name, err)
	}
	return b, m.reads.Load() - before
}

// waitWhole waits until the store holds the whole-file copy of name.
func (m *ptMount) waitWhole(t *testing.T, name string) {
	t.Helper()
	e := entryAt(t, m.l, name)
	deadline := time.Now().Add(10 * time.Second)
	for !m.disk.HasWhole(string(e.Digest())) {
		if time.Now().After(deadline) {
			t.Fatalf("no whole-file copy of %s after 10 s", name)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// fileNodeAt finds the node serving name.
func (m *ptMount) fileNodeAt(t *testing.T, name string) *fileNode {
	t.Helper()
	in := m.root.EmbeddedInode()
	for _, p := range strings.Split(name, "/") {
		if in = in.GetChild(p); in == nil {
			t.Fatalf("no inode for %s", name)
		}
	}
	return in.Operations().(*fileNode)
}

// waitReleased waits until the daemon has seen the release of every open
// of n: the kernel sends RELEASE after close(2) returns.
func waitReleased(t *testing.T, n *fileNode) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		n.mu.Lock()
		c, w := n.cachedOpens, n.wholeRefs
		n.mu.Unlock()
		if c == 0 && w == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d cached and %d passthrough opens still not released", c, w)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func entryAt(t *testing.T, l *layer.Layer, name string) *layer.Entry {
	t.Helper()
	e := l.Root()
	for _, p := range strings.Split(name, "/") {
		e = e.Child(p)
		if e == nil {
			t.Fatalf("no entry %s", name)
		}
	}
	return e
}

// Once a file was read entirely, its whole-file copy is written, and later
// opens read it without a single READ request to the daemon, through any
// of its names, by read(2) and by mmap. With copies off the same sequence
// goes through the daemon and still reads the right bytes.
func TestPassthroughReads(t *testing.T) {
	for _, tt := range []struct {
		name string
		on   bool
	}{{"passthrough on", true}, {"passthrough off", false}} {
		t.Run(tt.name, func(t *testing.T) {
			m := mountPassthrough(t, tt.on, nil)
			want := fstest.TarFile(t, m.tar, fstest.SampleBigFile)
			got, reads := m.readDropping(t, fstest.SampleBigFile)
			if !bytes.Equal(got, want) || reads == 0 {
				t.Fatalf("first read: %d bytes (want %d) in %d daemon reads", len(got), len(want), reads)
			}
			waitReleased(t, m.fileNodeAt(t, fstest.SampleBigFile))
			if tt.on {
				m.waitWhole(t, fstest.SampleBigFile)
			}
			for i := range 2 {
				got, reads = m.readDropping(t, fstest.SampleBigFile)
				if !bytes.Equal(got, want) {
					t.Fatalf("open %d after the first: wrong bytes", i+2)
				}
				if tt.on && reads != 0 {
					t.Errorf("open %d after the first: %d daemon reads, want none (passthrough)", i+2, reads)
				}
				if !tt.on && reads == 0 {
					t.Errorf("open %d after the first: no daemon reads with passthrough off (page cache not dropped?)", i+2)
				}
			}
			// A hard link is the same inode, and so the same copy.
			wantSh := fstest.TarFile(t, m.tar, fstest.SampleLinkedTo)
			if got, _ := m.readDropping(t, fstest.SampleLinkedTo); !bytes.Equal(got, wantSh) {
				t.Fatal("first read of the linked file: wrong bytes")
			}
			waitReleased(t, m.fileNodeAt(t, fstest.SampleLinkedTo))
			if tt.on {
				m.waitWhole(t, fstest.SampleLinkedTo)
			}
			got, reads = m.readDropping(t, fstest.SampleHardLink)
			if !bytes.Equal(got, wantSh) || (tt.on && reads != 0) {
				t.Errorf("through the hard link: %q in %d daemon reads", got, reads)
			}
			// mmap reads the same bytes.
			before := m.reads.Load()
			if got := readMapped(t, m.path(fstest.SampleBigFile), len(want)); !bytes.Equal(got, want) {
				t.Error("mmap: wrong bytes")
			}
			if n := m.reads.Load() - before; tt.on && n != 0 {
				t.Errorf("mmap: %d daemon reads, want none", n)
			}
			if !tt.on && m.disk.WholeStats().Files != 0 {
				t.Errorf("whole-file copies written with passthrough off: %+v", m.disk.WholeStats())
			}
		})
	}
}

// readMapped maps the file at p and returns its first n bytes as read
// through the mapping. The pages are touched by the kernel inside write(2)
// to a temp file, never by Go code: this process serves the mount, and a
// page fault taken in user mode cannot be preempted, so a garbage
// collection stopping the world while it waits for a FUSE read would stop
// the goroutines that must answer it. In a syscall the runtime lets go.
func readMapped(t *testing.T, p string, n int) []byte {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	mem, err := unix.Mmap(int(f.Fd()), 0, n, unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		t.Fatalf("mmap: %v", err)
	}
	defer unix.Munmap(mem)
	out, err := os.CreateTemp(t.TempDir(), "mapped")
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	if _, err := out.Write(mem); err != nil {
		t.Fatalf("writing out the mapping: %v", err)
	}
	got, err := os.ReadFile(out.Name())
	if err != nil {
		t.Fatal(err)
	}
	return got
}

// The kernel fails a passthrough open with EIO while the inode is open in
// cached mode. A copy that appears while the file is held open that way
// must not be offered to further opens until every cached open is
// released; then it is.
func TestPassthroughWhileOpenCached(t *testing.T) {
	m := mountPassthrough(t, true, nil)
	want := fstest.TarFile(t, m.tar, fstest.SampleBigFile)
	held, err := os.Open(m.path(fstest.SampleBigFile))
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	if got, err := io.ReadAll(held); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("reading the held open: %v", err)
	}
	// The file is now cached; this open (cached mode: one is held) asks
	// for the copy, which is written while both are open.
	f2, err := os.Open(m.path(fstest.SampleBigFile))
	if err != nil {
		t.Fatalf("second open while held: %v", err)
	}
	m.waitWhole(t, fstest.SampleBigFile)
	for i := range 3 {
		f, err := os.Open(m.path(fstest.SampleBigFile))
		if err != nil {
			t.Fatalf("open %d after the copy was written, with a cached open held: %v", i, err)
		}
		got, err := io.ReadAll(f)
		f.Close()
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("read %d after the copy was written: %v", i, err)
		}
	}
	if err := unix.Fadvise(int(held.Fd()), 0, 0, unix.FADV_DONTNEED); err != nil {
		t.Fatal(err)
	}
	f2.Close()
	held.Close()
	waitReleased(t, m.fileNodeAt(t, fstest.SampleBigFile))
	got, reads := m.readDropping(t, fstest.SampleBigFile)
	if !bytes.Equal(got, want) || reads != 0 {
		t.Errorf("after all cached opens ended: %d daemon reads (want 0, passthrough), right bytes %v", reads, bytes.Equal(got, want))
	}
	// And the reverse: while a passthrough open is held, every other open
	// is passthrough too (go-fuse reuses the backing file), never EIO.
	pt, err := os.Open(m.path(fstest.SampleBigFile))
	if err != nil {
		t.Fatal(err)
	}
	defer pt.Close()
	for i := range 3 {
		got, reads := m.readDropping(t, fstest.SampleBigFile)
		if !bytes.Equal(got, want) || reads != 0 {
			t.Errorf("open %d beside a passthrough open: %d daemon reads, right bytes %v", i, reads, bytes.Equal(got, want))
		}
	}
}

// dirWhole hands out a directory as the whole-file copy: the kernel
// refuses to register it as a backing file, as it refuses files on
// overlayfs or when the daemon lacks the privilege. go-fuse then turns
// passthrough off for the mount, and reads go through the daemon.
type dirWhole struct {
	*layer.Layer
	dir string
}

func (d dirWhole) OpenWhole(e *layer.Entry) (*os.File, bool) {
	f, err := os.Open(d.dir)
	return f, err == nil
}

func TestPassthroughRegistrationFails(t *testing.T) {
	dir := t.TempDir()
	m := mountPassthrough(t, true, func(l *layer.Layer) Reader { return dirWhole{l, dir} })
	for _, name := range []string{fstest.SampleBigFile, fstest.SampleLinkedTo, fstest.SampleBigFile} {
		want := fstest.TarFile(t, m.tar, name)
		got, reads := m.readDropping(t, name)
		if !bytes.Equal(got, want) || reads == 0 {
			t.Errorf("%s: %d bytes (want %d) in %d daemon reads (want some)", name, len(got), len(want), reads)
		}
	}
}

// The whole tree reads right with passthrough on, before and after every
// file has its copy; the second time, with the page cache dropped, without
// any READ reaching the daemon.
func TestPassthroughMatchesTar(t *testing.T) {
	m := mountPassthrough(t, true, nil)
	fstest.CompareTree(t, m.dir, m.tar)
	// Every file is cached now; each release asked for its copy.
	var files []*layer.Entry
	var walk func(e *layer.Entry)
	seen := map[*layer.Entry]bool{}
	walk = func(e *layer.Entry) {
		for i := range e.NumChildren() {
			_, c := e.ChildAt(i)
			if seen[c] {
				continue
			}
			seen[c] = true
			if c.Type == layer.TypeDir {
				walk(c)
			} else if c.Digest() != "" {
				files = append(files, c)
			}
		}
	}
	walk(m.l.Root())
	deadline := time.Now().Add(20 * time.Second)
	for _, e := range files {
		for !m.disk.HasWhole(string(e.Digest())) {
			if time.Now().After(deadline) {
				t.Fatalf("no copy of %s", e.Path())
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	if err := os.WriteFile("/proc/sys/vm/drop_caches", []byte("1\n"), 0o644); err != nil {
		t.Logf("cannot drop the page cache (%v): not counting daemon reads", err)
		fstest.CompareTree(t, m.dir, m.tar)
		return
	}
	before := m.reads.Load()
	fstest.CompareTree(t, m.dir, m.tar)
	if n := m.reads.Load() - before; n != 0 {
		t.Errorf("second tree compare made %d daemon reads, want none", n)
	}
}
