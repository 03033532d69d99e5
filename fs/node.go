package fs

import (
	"context"
	"sort"
	"syscall"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/poolfs/poolfs/layer"
)

// node serves what every entry type has: attributes and xattrs, all from
// the view in memory (never from file data). Devices and FIFOs are plain
// nodes. The view is immutable, so every mutation is EROFS.
type node struct {
	gofs.Inode
	ReadOnly
	e  *layer.Entry
	sh *shared
}

var (
	_ = (gofs.NodeGetattrer)((*node)(nil))
	_ = (gofs.NodeGetxattrer)((*node)(nil))
	_ = (gofs.NodeListxattrer)((*node)(nil))
	_ = (gofs.NodeStatfser)((*node)(nil))
)

// viewNode lets a directory reach the attributes of any child node.
type viewNode interface {
	fillAttr(a *fuse.Attr)
}

func (n *node) Getattr(ctx context.Context, f gofs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	n.fillAttr(&out.Attr)
	return gofs.OK
}

func (n *node) fillAttr(a *fuse.Attr) {
	e := n.e
	a.Mode = typeBits(e.Type) | e.Mode
	a.Nlink = e.NLink
	a.Uid, a.Gid = e.UID, e.GID
	if e.Type == layer.TypeReg || e.Type == layer.TypeSymlink {
		a.Size = uint64(e.Size)
	}
	a.Blocks = (a.Size + 511) / 512
	a.Blksize = 4096
	if e.Type == layer.TypeChar || e.Type == layer.TypeBlock {
		a.Rdev = uint32(unix.Mkdev(e.DevMajor(), e.DevMinor()))
	}
	// A layer records one time per entry; ctime and atime echo it, as
	// they do after tar extraction with preserved times.
	t := e.ModTime()
	a.SetTimes(&t, &t, &t)
}

func (n *node) Getxattr(ctx context.Context, attr string, dest []byte) (uint32, syscall.Errno) {
	v, ok := n.e.Xattrs()[attr]
	if !ok {
		return 0, syscall.ENODATA
	}
	if len(dest) == 0 {
		return uint32(len(v)), gofs.OK // a size query
	}
	if len(dest) < len(v) {
		return uint32(len(v)), syscall.ERANGE
	}
	return uint32(copy(dest, v)), gofs.OK
}

func (n *node) Listxattr(ctx context.Context, dest []byte) (uint32, syscall.Errno) {
	x := n.e.Xattrs()
	names := make([]string, 0, len(x))
	size := 0
	for k := range x {
		names = append(names, k)
		size += len(k) + 1
	}
	if len(dest) == 0 {
		return uint32(size), gofs.OK
	}
	if len(dest) < size {
		return uint32(size), syscall.ERANGE
	}
	sort.Strings(names)
	off := 0
	for _, k := range names {
		off += copy(dest[off:], k)
		dest[off] = 0
		off++
	}
	return uint32(off), gofs.OK
}

func (n *node) Statfs(ctx context.Context, out *fuse.StatfsOut) syscall.Errno {
	return n.sh.root.Statfs(ctx, out)
}

func statfs(out *fuse.StatfsOut, bytes, files uint64) {
	const bsize = 4096
	out.Bsize = bsize
	out.Frsize = bsize
	out.Blocks = (bytes + bsize - 1) / bsize
	out.Files = files
	out.NameLen = 255
}

// symlinkNode serves a symbolic link.
type symlinkNode struct {
	node
}

var _ = (gofs.NodeReadlinker)((*symlinkNode)(nil))

func (n *symlinkNode) Readlink(ctx context.Context) ([]byte, syscall.Errno) {
	return []byte(n.e.LinkName()), gofs.OK
}
