package alsfs

import (
	"context"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	layerfs "github.com/poolfs/poolfs/fs"
)

// syntheticDir is what the grammar directories share: fixed attributes,
// a lock that makes concurrent lookups of one name create one child, and
// EROFS for every change (layerfs.ReadOnly, layerfs.ReadOnlyDir).
type syntheticDir struct {
	gofs.Inode
	layerfs.ReadOnly
	layerfs.ReadOnlyDir
	access Access // the store's: who may enter
	mu     sync.Mutex
	// mtime (Unix nanoseconds) is when the last child was added.
	mtime atomic.Int64
}

var _ gofs.NodeGetattrer = (*syntheticDir)(nil)

func (d *syntheticDir) Getattr(ctx context.Context, fh gofs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	d.access.mountDirAttr(&out.Attr)
	t := time.Unix(0, d.mtime.Load())
	out.SetTimes(nil, &t, &t)
	out.SetTimeout(entryTimeout)
	return 0
}

// addChild adds a child to a grammar directory, which the kernel may have
// listed before: it keeps the listings of every directory of the mount
// (see layerfs.NewNodeFS). A new mtime and an invalidation of the
// directory's attributes and cached pages make the next listing come from
// the daemon again; the mtime is what resets a cached listing that had no
// entries (and so no pages to invalidate).
func (d *syntheticDir) addChild(name string, ch *gofs.Inode) {
	d.AddChild(name, ch, false)
	d.mtime.Store(time.Now().UnixNano())
	// An error means the kernel holds nothing to drop (or the mount is
	// going away).
	_ = d.NotifyContent(0, 0)
}
