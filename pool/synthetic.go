package pool

import (
	"context"
	"sync"
	"syscall"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// dirAttr is the attribute of every synthetic directory: read-only to all.
func dirAttr(out *fuse.Attr) {
	out.Mode = syscall.S_IFDIR | 0o555
	out.Nlink = 2
}

// syntheticDir is what the grammar directories share: fixed attributes, a
// lock that makes concurrent lookups of one name create one child, and
// EROFS for every change. The mount itself is not mounted read-only because
// the containers/storage client must reach create(use) and rmdir(<digest>),
// which a read-only mount would refuse in the kernel before asking us.
type syntheticDir struct {
	gofs.Inode
	mu sync.Mutex
}

var (
	_ gofs.NodeGetattrer     = (*syntheticDir)(nil)
	_ gofs.NodeMkdirer       = (*syntheticDir)(nil)
	_ gofs.NodeCreater       = (*syntheticDir)(nil)
	_ gofs.NodeUnlinker      = (*syntheticDir)(nil)
	_ gofs.NodeRenamer       = (*syntheticDir)(nil)
	_ gofs.NodeSymlinker     = (*syntheticDir)(nil)
	_ gofs.NodeLinker        = (*syntheticDir)(nil)
	_ gofs.NodeMknoder       = (*syntheticDir)(nil)
	_ gofs.NodeSetattrer     = (*syntheticDir)(nil)
	_ gofs.NodeSetxattrer    = (*syntheticDir)(nil)
	_ gofs.NodeRemovexattrer = (*syntheticDir)(nil)
	_ gofs.NodeRmdirer       = (*syntheticDir)(nil)
)

func (d *syntheticDir) Getattr(ctx context.Context, fh gofs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	dirAttr(&out.Attr)
	out.SetTimeout(entryTimeout)
	return 0
}

func (d *syntheticDir) Mkdir(ctx context.Context, name string, mode uint32, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	return nil, syscall.EROFS
}

func (d *syntheticDir) Create(ctx context.Context, name string, flags uint32, mode uint32, out *fuse.EntryOut) (*gofs.Inode, gofs.FileHandle, uint32, syscall.Errno) {
	return nil, nil, 0, syscall.EROFS
}

func (d *syntheticDir) Unlink(ctx context.Context, name string) syscall.Errno { return syscall.EROFS }

func (d *syntheticDir) Rename(ctx context.Context, name string, newParent gofs.InodeEmbedder, newName string, flags uint32) syscall.Errno {
	return syscall.EROFS
}

func (d *syntheticDir) Symlink(ctx context.Context, target, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	return nil, syscall.EROFS
}

func (d *syntheticDir) Link(ctx context.Context, target gofs.InodeEmbedder, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	return nil, syscall.EROFS
}

func (d *syntheticDir) Mknod(ctx context.Context, name string, mode uint32, dev uint32, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	return nil, syscall.EROFS
}

func (d *syntheticDir) Setattr(ctx context.Context, f gofs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	return syscall.EROFS
}

func (d *syntheticDir) Setxattr(ctx context.Context, attr string, data []byte, flags uint32) syscall.Errno {
	return syscall.EROFS
}

func (d *syntheticDir) Removexattr(ctx context.Context, attr string) syscall.Errno {
	return syscall.EROFS
}

// Rmdir must be answered: go-fuse treats a node without Rmdir as success
// and would drop the child from its tree.
func (d *syntheticDir) Rmdir(ctx context.Context, name string) syscall.Errno { return syscall.EROFS }
