package fs

import (
	"context"
	"syscall"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

var _ = (gofs.NodeOpendirHandler)((*dirNode)(nil))

// OpendirHandle lets the kernel keep a directory's listing in its page
// cache (FOPEN_CACHE_DIR, FOPEN_KEEP_CACHE): a view never changes, so
// a second walk of a tree is answered without asking the daemon to list
// directories again.
func (d *dirNode) OpendirHandle(ctx context.Context, flags uint32) (gofs.FileHandle, uint32, syscall.Errno) {
	ds, errno := d.Readdir(ctx)
	if errno != gofs.OK {
		return nil, 0, errno
	}
	return ds, fuse.FOPEN_CACHE_DIR | fuse.FOPEN_KEEP_CACHE, gofs.OK
}
