package pool

import (
	"context"
	"sync"
	"syscall"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	layerfs "github.com/poolfs/poolfs/fs"
)

// dirAttr is the attribute of every synthetic directory: read-only to all.
func dirAttr(out *fuse.Attr) {
	out.Mode = syscall.S_IFDIR | 0o555
	out.Nlink = 2
}

// syntheticDir is what the grammar directories share: fixed attributes,
// a lock that makes concurrent lookups of one name create one child, and
// EROFS for every change (layerfs.ReadOnly, layerfs.ReadOnlyDir).
type syntheticDir struct {
	gofs.Inode
	layerfs.ReadOnly
	layerfs.ReadOnlyDir
	mu sync.Mutex
}

var _ gofs.NodeGetattrer = (*syntheticDir)(nil)

func (d *syntheticDir) Getattr(ctx context.Context, fh gofs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	dirAttr(&out.Attr)
	out.SetTimeout(entryTimeout)
	return 0
}
