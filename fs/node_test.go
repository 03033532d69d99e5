package fs

import (
	"archive/tar"
	"context"
	"syscall"
	"testing"
	"time"

	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/poolfs/poolfs/layer"
)

// The nodes answer EROFS themselves, whatever the mount options.
func TestNodesRefuseMutation(t *testing.T) {
	root, f := tinyView(t)
	sh := &shared{r: &fakeReader{root: root}}
	d := &dirNode{node: node{e: root, sh: sh}}
	fn := &fileNode{node: node{e: f, sh: sh}}
	ctx := context.Background()
	var out fuse.EntryOut
	_, _, _, createErr := d.Create(ctx, "x", 0, 0o644, &out)
	_, mkdirErr := d.Mkdir(ctx, "x", 0o755, &out)
	_, mknodErr := d.Mknod(ctx, "x", syscall.S_IFIFO, 0, &out)
	_, linkErr := d.Link(ctx, fn, "x", &out)
	_, symlinkErr := d.Symlink(ctx, "t", "x", &out)
	_, writeErr := fn.Write(ctx, nil, []byte("x"), 0)
	_, _, openErr := fn.Open(ctx, syscall.O_WRONLY)
	_, _, openRWErr := fn.Open(ctx, syscall.O_RDWR)
	_, _, truncErr := fn.Open(ctx, syscall.O_RDONLY|syscall.O_TRUNC)
	for name, errno := range map[string]syscall.Errno{
		"create": createErr, "mkdir": mkdirErr, "mknod": mknodErr, "link": linkErr, "symlink": symlinkErr,
		"unlink": d.Unlink(ctx, "f"), "rmdir": d.Rmdir(ctx, "f"), "rename": d.Rename(ctx, "f", d, "g", 0),
		"setattr":  fn.Setattr(ctx, nil, &fuse.SetAttrIn{}, &fuse.AttrOut{}),
		"setxattr": fn.Setxattr(ctx, "user.x", nil, 0), "removexattr": fn.Removexattr(ctx, "user.a"),
		"write": writeErr, "open O_WRONLY": openErr, "open O_RDWR": openRWErr, "open O_TRUNC": truncErr,
	} {
		if errno != syscall.EROFS {
			t.Errorf("%s: %v, want EROFS", name, errno)
		}
	}
	fh, flags, errno := fn.Open(ctx, syscall.O_RDONLY)
	if errno != 0 || fh == nil || flags&fuse.FOPEN_KEEP_CACHE == 0 {
		t.Errorf("read-only open: %v, %#x, %v", fh, flags, errno)
	}
}

func TestNodeXattrs(t *testing.T) {
	_, f := tinyView(t)
	n := &node{e: f}
	ctx := context.Background()
	tests := []struct {
		name    string
		attr    string
		buf     int
		wantN   uint32
		wantErr syscall.Errno
	}{
		{"size query", "user.a", 0, 5, 0},
		{"exact buffer", "user.a", 5, 5, 0},
		{"small buffer", "user.a", 4, 5, syscall.ERANGE},
		{"empty value", "user.b", 10, 0, 0},
		{"missing", "user.c", 10, 0, syscall.ENODATA},
	}
	for _, tt := range tests {
		n2, errno := n.Getxattr(ctx, tt.attr, make([]byte, tt.buf))
		if n2 != tt.wantN || errno != tt.wantErr {
			t.Errorf("%s: %d, %v; want %d, %v", tt.name, n2, errno, tt.wantN, tt.wantErr)
		}
	}
	if sz, errno := n.Listxattr(ctx, nil); sz != 14 || errno != 0 {
		t.Errorf("list size: %d, %v; want 14", sz, errno)
	}
	if _, errno := n.Listxattr(ctx, make([]byte, 13)); errno != syscall.ERANGE {
		t.Errorf("list into a small buffer: %v, want ERANGE", errno)
	}
	buf := make([]byte, 14)
	if sz, errno := n.Listxattr(ctx, buf); errno != 0 || string(buf[:sz]) != "user.a\x00user.b\x00" {
		t.Errorf("list: %q, %v", buf[:sz], errno)
	}
}

func TestNodeAttr(t *testing.T) {
	mtime := time.Date(2200, 1, 2, 3, 4, 5, 0, time.UTC)
	root := viewOf(t,
		&tar.Header{Name: "reg", Typeflag: tar.TypeReg, Mode: 0o4755, Uid: 1234, Gid: 5678, Size: 1025, ModTime: mtime},
		&tar.Header{Name: "reg2", Typeflag: tar.TypeLink, Linkname: "reg"},
		&tar.Header{Name: "reg3", Typeflag: tar.TypeLink, Linkname: "reg"},
		&tar.Header{Name: "chr", Typeflag: tar.TypeChar, Mode: 0o600, Devmajor: 300, Devminor: 70000, ModTime: mtime},
		&tar.Header{Name: "sym", Typeflag: tar.TypeSymlink, Mode: 0o777, Linkname: "abc", ModTime: mtime},
		&tar.Header{Name: "dir/", Typeflag: tar.TypeDir, Mode: 0, ModTime: mtime},
		&tar.Header{Name: "dir/a/", Typeflag: tar.TypeDir, Mode: 0o755},
		&tar.Header{Name: "dir/b/", Typeflag: tar.TypeDir, Mode: 0o755},
		&tar.Header{Name: "fifo", Typeflag: tar.TypeFifo, Mode: 0o644, ModTime: time.Unix(0, 0)},
	)
	tests := []struct {
		e    *layer.Entry
		want fuse.Attr
	}{
		{root.Child("reg"),
			fuse.Attr{Mode: syscall.S_IFREG | 0o4755, Owner: fuse.Owner{Uid: 1234, Gid: 5678}, Size: 1025, Blocks: 3, Nlink: 3}},
		{root.Child("chr"),
			fuse.Attr{Mode: syscall.S_IFCHR | 0o600, Rdev: 300<<8 | 70000&0xff | (70000&^0xff)<<12, Nlink: 1}},
		{root.Child("sym"),
			fuse.Attr{Mode: syscall.S_IFLNK | 0o777, Size: 3, Blocks: 1, Nlink: 1}},
		{root.Child("dir"),
			fuse.Attr{Mode: syscall.S_IFDIR, Nlink: 4}},
		{root.Child("fifo"),
			fuse.Attr{Mode: syscall.S_IFIFO | 0o644, Nlink: 1}},
	}
	for _, tt := range tests {
		var a fuse.Attr
		(&node{e: tt.e}).fillAttr(&a)
		want := tt.want
		want.Blksize = 4096
		t0 := tt.e.ModTime()
		want.SetTimes(&t0, &t0, &t0)
		if a != want {
			t.Errorf("%+v:\n got %+v\nwant %+v", tt.e, a, want)
		}
	}
}
