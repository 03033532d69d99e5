package fs

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/sirupsen/logrus"
	logtest "github.com/sirupsen/logrus/hooks/test"
	"golang.org/x/sys/unix"

	"github.com/poolfs/poolfs/fs/fstest"
	"github.com/poolfs/poolfs/layer"
)

func TestMountMatchesTar(t *testing.T) {
	s := openSample(t)
	dir := mount(t, NewLayerRoot(s.l, nil), nil)
	fstest.CompareTree(t, dir, s.tar)
}

// Walking the metadata of the whole mount (stat, readlink, xattrs,
// readdir) never fetches file data.
func TestMetadataWalkFetchesNothing(t *testing.T) {
	s := openSample(t)
	dir := mount(t, NewLayerRoot(s.l, nil), nil)
	s.blob.ResetStats()
	if _, err := fstest.DirView(dir, false); err != nil {
		t.Fatal(err)
	}
	if calls, n := s.blob.Stats(); calls != 0 {
		t.Errorf("metadata walk made %d blob reads (%d bytes)", calls, n)
	}
}

func TestReaddirTypes(t *testing.T) {
	s := openSample(t)
	dir := mount(t, NewLayerRoot(s.l, nil), nil)
	for _, d := range []string{".", "dev", "bin", "etc", "run"} {
		ents, err := os.ReadDir(filepath.Join(dir, d))
		if err != nil {
			t.Fatal(err)
		}
		for _, de := range ents {
			fi, err := os.Lstat(filepath.Join(dir, d, de.Name()))
			if err != nil {
				t.Fatal(err)
			}
			if de.Type() != fi.Mode().Type() {
				t.Errorf("%s/%s: readdir type %v, lstat type %v", d, de.Name(), de.Type(), fi.Mode().Type())
			}
		}
	}
}

func TestReadThroughMount(t *testing.T) {
	s := openSample(t)
	dir := mount(t, NewLayerRoot(s.l, nil), nil)
	want := fstest.TarFile(t, s.tar, fstest.SampleBigFile)

	got, err := os.ReadFile(filepath.Join(dir, fstest.SampleBigFile))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("read %d bytes differing from the tar's %d", len(got), len(want))
	}

	f, err := os.Open(filepath.Join(dir, fstest.SampleBigFile))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, off := range []int64{0, 1, 4095, 4096, 10000, int64(len(want)) - 7} {
		p := make([]byte, 5000)
		n, err := f.ReadAt(p, off)
		if err != nil && !errors.Is(err, io.EOF) {
			t.Fatalf("pread at %d: %v", off, err)
		}
		if !bytes.Equal(p[:n], want[off:min(off+5000, int64(len(want)))]) {
			t.Errorf("pread at %d: wrong bytes", off)
		}
	}
}

func TestModes(t *testing.T) {
	s := openSample(t)
	dir := mount(t, NewLayerRoot(s.l, nil), nil)
	tests := []struct {
		path string
		mode uint32
	}{
		{fstest.SampleModeZero, unix.S_IFREG},
		{"usr/bin/sudo", unix.S_IFREG | unix.S_ISUID | 0o755},
		{"usr/bin/wall", unix.S_IFREG | unix.S_ISGID | 0o755},
		{"tmp", unix.S_IFDIR | unix.S_ISVTX | 0o777},
		{"emptydir", unix.S_IFDIR | 0o700},
		{"etc/removed", unix.S_IFCHR},
		{".", unix.S_IFDIR | 0o751},
	}
	for _, tt := range tests {
		var st unix.Stat_t
		if err := unix.Lstat(filepath.Join(dir, tt.path), &st); err != nil {
			t.Fatal(err)
		}
		if st.Mode != tt.mode {
			t.Errorf("%s: mode %#o, want %#o", tt.path, st.Mode, tt.mode)
		}
	}
	var st unix.Stat_t
	if err := unix.Lstat(filepath.Join(dir, fstest.SampleBigFile), &st); err != nil {
		t.Fatal(err)
	}
	if st.Blocks != (st.Size+511)/512 || st.Blksize != 4096 || st.Ctim != st.Mtim || st.Atim != st.Mtim {
		t.Errorf("stat: blocks %d blksize %d for size %d, times %v %v %v", st.Blocks, st.Blksize, st.Size, st.Atim, st.Mtim, st.Ctim)
	}
}

// Every mutation answers EROFS: from the nodes themselves on the mount of
// Options() (not "ro", so that the pool gets create and rmdir), and from
// the kernel on a "ro" mount.
func TestReadOnly(t *testing.T) {
	ro := Options()
	ro.MountOptions.Options = append(ro.MountOptions.Options, "ro")
	for _, m := range []struct {
		name string
		opts *gofs.Options
	}{{"ro mount", ro}, {"Options() mount", Options()}} {
		t.Run(m.name, func(t *testing.T) {
			s := openSample(t)
			dir := mount(t, NewLayerRoot(s.l, nil), m.opts)
			p := func(name string) string { return filepath.Join(dir, name) }
			ops := []struct {
				name string
				op   func() error
			}{
				{"open for writing", func() error {
					fd, err := unix.Open(p("etc/passwd"), unix.O_WRONLY, 0)
					if err == nil {
						unix.Close(fd)
					}
					return err
				}},
				{"open read-write", func() error {
					fd, err := unix.Open(p("etc/passwd"), unix.O_RDWR, 0)
					if err == nil {
						unix.Close(fd)
					}
					return err
				}},
				{"create", func() error {
					fd, err := unix.Open(p("new"), unix.O_CREAT|unix.O_WRONLY, 0o644)
					if err == nil {
						unix.Close(fd)
					}
					return err
				}},
				{"truncate", func() error { return unix.Truncate(p("etc/passwd"), 0) }},
				{"mkdir", func() error { return unix.Mkdir(p("newdir"), 0o755) }},
				{"mknod", func() error { return unix.Mknod(p("newfifo"), unix.S_IFIFO|0o644, 0) }},
				{"unlink", func() error { return unix.Unlink(p("etc/passwd")) }},
				{"rmdir", func() error { return unix.Rmdir(p("emptydir")) }},
				{"rename", func() error { return unix.Rename(p("etc/passwd"), p("etc/passwd2")) }},
				{"symlink", func() error { return unix.Symlink("x", p("newlink")) }},
				{"link", func() error { return unix.Link(p("etc/passwd"), p("newhard")) }},
				{"chmod", func() error { return unix.Chmod(p("etc/passwd"), 0o600) }},
				{"chown", func() error { return unix.Lchown(p("etc/passwd"), 1, 1) }},
				{"utimes", func() error { return unix.UtimesNano(p("etc/passwd"), make([]unix.Timespec, 2)) }},
				{"setxattr", func() error { return unix.Lsetxattr(p("etc/passwd"), "user.x", []byte("1"), 0) }},
				{"removexattr", func() error { return unix.Lremovexattr(p(fstest.SampleXattrFile), "user.foo") }},
			}
			for _, op := range ops {
				if err := op.op(); !errors.Is(err, unix.EROFS) {
					t.Errorf("%s: %v, want EROFS", op.name, err)
				}
			}
			// Nothing changed.
			fstest.CompareTree(t, dir, s.tar)
		})
	}
}

func TestXattrSyscalls(t *testing.T) {
	s := openSample(t)
	dir := mount(t, NewLayerRoot(s.l, nil), nil)
	f := filepath.Join(dir, fstest.SampleXattrFile)

	if n, err := unix.Lgetxattr(f, "user.foo", nil); err != nil || n != 3 {
		t.Errorf("size query: %d, %v; want 3", n, err)
	}
	if _, err := unix.Lgetxattr(f, "user.foo", make([]byte, 2)); !errors.Is(err, unix.ERANGE) {
		t.Errorf("small buffer: %v, want ERANGE", err)
	}
	buf := make([]byte, 10)
	if n, err := unix.Lgetxattr(f, "user.bin", buf); err != nil || !bytes.Equal(buf[:n], []byte{0, 1, 0xfe, 0xff}) {
		t.Errorf("binary value: %q, %v", buf[:n], err)
	}
	if n, err := unix.Lgetxattr(f, "user.empty", buf); err != nil || n != 0 {
		t.Errorf("empty value: %d, %v", n, err)
	}
	if _, err := unix.Lgetxattr(f, "user.missing", buf); !errors.Is(err, unix.ENODATA) {
		t.Errorf("missing attribute: %v, want ENODATA", err)
	}
	if _, err := unix.Llistxattr(f, make([]byte, 3)); !errors.Is(err, unix.ERANGE) {
		t.Errorf("small list buffer: %v, want ERANGE", err)
	}
	if n, err := unix.Lgetxattr(filepath.Join(dir, "bin/ping"), "security.capability", buf[:0]); err != nil || n != 20 {
		t.Errorf("security.capability size: %d, %v; want 20", n, err)
	}
}

func TestStatfs(t *testing.T) {
	s := openSample(t)
	dir := mount(t, NewLayerRoot(s.l, nil), nil)
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		t.Fatal(err)
	}
	if st.Bsize != 4096 || st.Files == 0 || st.Blocks == 0 || st.Namelen != 255 {
		t.Errorf("statfs: %+v", st)
	}
}

// Failed lookups inside a view are cached by the kernel when mounted
// through NewNodeFS; plain go-fuse (NegativeTimeout nil) asks every time.
func TestNegativeLookupCached(t *testing.T) {
	tests := []struct {
		name      string
		raw       func(root gofs.InodeEmbedder, opts *gofs.Options) *countingFS
		wantCalls int
	}{
		{"poolfs NewNodeFS", func(root gofs.InodeEmbedder, opts *gofs.Options) *countingFS {
			return &countingFS{RawFileSystem: NewNodeFS(root, opts), lookups: map[string]int{}}
		}, 1},
		{"go-fuse NewNodeFS", func(root gofs.InodeEmbedder, opts *gofs.Options) *countingFS {
			return &countingFS{RawFileSystem: gofs.NewNodeFS(root, opts), lookups: map[string]int{}}
		}, 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := openSample(t)
			opts := Options()
			c := tt.raw(NewLayerRoot(s.l, nil), opts)
			dir := mountRaw(t, c, opts)
			for i := 0; i < 3; i++ {
				var st unix.Stat_t
				if err := unix.Lstat(filepath.Join(dir, "etc", "no-such-file"), &st); !errors.Is(err, unix.ENOENT) {
					t.Fatalf("stat of a missing file: %v", err)
				}
			}
			if got := c.count("no-such-file"); got != tt.wantCalls {
				t.Errorf("%d lookups of a missing name for 3 stats, want %d", got, tt.wantCalls)
			}
		})
	}
}

// Two views of one layer in one mount get distinct inodes; hard links
// within a view share theirs.
func TestTwoViewsOneMount(t *testing.T) {
	s := openSample(t)
	root := &twoViews{a: NewLayerRoot(s.l, nil), b: NewLayerRoot(s.l, nil)}
	dir := mount(t, root, nil)
	ino := func(p string) uint64 {
		var st unix.Stat_t
		if err := unix.Lstat(filepath.Join(dir, p), &st); err != nil {
			t.Fatal(err)
		}
		return st.Ino
	}
	if ino("a/"+fstest.SampleLinkedTo) == ino("b/"+fstest.SampleLinkedTo) {
		t.Error("two views share an inode")
	}
	if ino("a/"+fstest.SampleLinkedTo) != ino("a/"+fstest.SampleHardLink) {
		t.Error("hard links in a view do not share an inode")
	}
	fstest.CompareTree(t, filepath.Join(dir, "b"), s.tar)
}

type twoViews struct {
	gofs.Inode
	a, b gofs.InodeEmbedder
}

func (r *twoViews) OnAdd(ctx context.Context) {
	for name, n := range map[string]gofs.InodeEmbedder{"a": r.a, "b": r.b} {
		r.AddChild(name, r.NewPersistentInode(ctx, n, gofs.StableAttr{Mode: syscall.S_IFDIR}), false)
	}
}

// A failing Reader makes read(2) fail with EIO and logs the path once.
func TestReadErrorIsEIO(t *testing.T) {
	root, _ := tinyView(t)
	r := &fakeReader{root: root, readFn: func(*layer.Entry, []byte, int64) (int, error) {
		return 0, layer.ErrVerify
	}}
	logger, hook := logtest.NewNullLogger()
	dir := mount(t, NewLayerRoot(r, logrus.NewEntry(logger)), nil)
	_, err := os.ReadFile(filepath.Join(dir, "f"))
	if !errors.Is(err, unix.EIO) {
		t.Errorf("read: %v, want EIO", err)
	}
	entries := hook.AllEntries()
	if len(entries) == 0 {
		t.Fatal("nothing logged")
	}
	for _, e := range entries {
		if e.Data["path"] != "f" || !errors.Is(e.Data[logrus.ErrorKey].(error), layer.ErrVerify) {
			t.Errorf("log entry %q %v lacks path or error", e.Message, e.Data)
		}
	}
}
