package fs

import (
	"context"
	"syscall"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// ReadOnly answers every change to a node's own attributes with EROFS.
// Embed it next to gofs.Inode in any node of the mount: the mount is not
// flagged read-only in the kernel (the pool must receive create(use) and
// rmdir(<digest>)), so the nodes refuse writes themselves.
type ReadOnly struct{}

var (
	_ gofs.NodeSetattrer     = ReadOnly{}
	_ gofs.NodeSetxattrer    = ReadOnly{}
	_ gofs.NodeRemovexattrer = ReadOnly{}
)

func (ReadOnly) Setattr(ctx context.Context, f gofs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	return syscall.EROFS
}

func (ReadOnly) Setxattr(ctx context.Context, attr string, data []byte, flags uint32) syscall.Errno {
	return syscall.EROFS
}

func (ReadOnly) Removexattr(ctx context.Context, attr string) syscall.Errno {
	return syscall.EROFS
}

// ReadOnlyDir answers every change to a directory's entries with EROFS;
// directory nodes embed it beside ReadOnly. Rmdir must be answered too:
// go-fuse treats a node without Rmdir as success and drops the child from
// its tree.
type ReadOnlyDir struct{}

var (
	_ gofs.NodeCreater   = ReadOnlyDir{}
	_ gofs.NodeMkdirer   = ReadOnlyDir{}
	_ gofs.NodeMknoder   = ReadOnlyDir{}
	_ gofs.NodeLinker    = ReadOnlyDir{}
	_ gofs.NodeSymlinker = ReadOnlyDir{}
	_ gofs.NodeUnlinker  = ReadOnlyDir{}
	_ gofs.NodeRmdirer   = ReadOnlyDir{}
	_ gofs.NodeRenamer   = ReadOnlyDir{}
)

func (ReadOnlyDir) Create(ctx context.Context, name string, flags uint32, mode uint32, out *fuse.EntryOut) (*gofs.Inode, gofs.FileHandle, uint32, syscall.Errno) {
	return nil, nil, 0, syscall.EROFS
}

func (ReadOnlyDir) Mkdir(ctx context.Context, name string, mode uint32, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	return nil, syscall.EROFS
}

func (ReadOnlyDir) Mknod(ctx context.Context, name string, mode uint32, dev uint32, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	return nil, syscall.EROFS
}

func (ReadOnlyDir) Link(ctx context.Context, target gofs.InodeEmbedder, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	return nil, syscall.EROFS
}

func (ReadOnlyDir) Symlink(ctx context.Context, target, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	return nil, syscall.EROFS
}

func (ReadOnlyDir) Unlink(ctx context.Context, name string) syscall.Errno { return syscall.EROFS }

func (ReadOnlyDir) Rmdir(ctx context.Context, name string) syscall.Errno { return syscall.EROFS }

func (ReadOnlyDir) Rename(ctx context.Context, name string, newParent gofs.InodeEmbedder, newName string, flags uint32) syscall.Errno {
	return syscall.EROFS
}

// OpensForWrite reports whether open flags ask for anything but reading.
func OpensForWrite(flags uint32) bool {
	return flags&syscall.O_ACCMODE != syscall.O_RDONLY || flags&syscall.O_TRUNC != 0
}
