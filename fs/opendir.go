package fs

import (
	"syscall"

	"github.com/hanwen/go-fuse/v2/fuse"
)

// cachedListings answers OPENDIR with ENOSYS. The kernel then stops sending
// OPENDIR and RELEASEDIR for the whole mount (fc->no_opendir) and treats
// every directory as opened with FOPEN_KEEP_CACHE|FOPEN_CACHE_DIR, so a
// listing is read from the daemon once and then served from the kernel's
// page cache: a walk of a tree the kernel already knows costs no round trip
// at all, where two per directory remained with FOPEN_CACHE_DIR alone.
//
// Layer views never change. Directories of the mount whose children do
// change (the grammar directories above the layers) invalidate their
// listing themselves when they gain a child (see pool's
// syntheticDir.addChild).
//
// READDIR and READDIRPLUS then arrive without a handle (Fh 0); each one
// opens a directory stream on go-fuse's side for that one request. The
// kernel reads a listing into its cache once, so the cost is paid once per
// directory.
type cachedListings struct {
	fuse.RawFileSystem
}

func (c cachedListings) OpenDir(cancel <-chan struct{}, in *fuse.OpenIn, out *fuse.OpenOut) fuse.Status {
	return fuse.ENOSYS
}

func (c cachedListings) ReadDir(cancel <-chan struct{}, in *fuse.ReadIn, out *fuse.DirEntryList) fuse.Status {
	return c.withHandle(cancel, in, func(in *fuse.ReadIn) fuse.Status {
		return c.RawFileSystem.ReadDir(cancel, in, out)
	})
}

func (c cachedListings) ReadDirPlus(cancel <-chan struct{}, in *fuse.ReadIn, out *fuse.DirEntryList) fuse.Status {
	return c.withHandle(cancel, in, func(in *fuse.ReadIn) fuse.Status {
		return c.RawFileSystem.ReadDirPlus(cancel, in, out)
	})
}

// ReleaseDir never comes from the kernel once OPENDIR failed with ENOSYS;
// a handle-less release is dropped rather than passed to go-fuse, which has
// no handle 0 to release.
func (c cachedListings) ReleaseDir(in *fuse.ReleaseIn) {
	if in.Fh != 0 {
		c.RawFileSystem.ReleaseDir(in)
	}
}

// withHandle runs read with a directory handle of go-fuse's own for the
// request's node, seeking to the requested offset as go-fuse does for any
// handle whose position differs.
func (c cachedListings) withHandle(cancel <-chan struct{}, in *fuse.ReadIn, read func(*fuse.ReadIn) fuse.Status) fuse.Status {
	if in.Fh != 0 {
		return read(in) // a handle opened before the kernel learnt of ENOSYS
	}
	open := fuse.OpenIn{InHeader: in.InHeader, Flags: syscall.O_RDONLY | syscall.O_DIRECTORY}
	var opened fuse.OpenOut
	if st := c.RawFileSystem.OpenDir(cancel, &open, &opened); !st.Ok() {
		return st
	}
	defer c.RawFileSystem.ReleaseDir(&fuse.ReleaseIn{InHeader: in.InHeader, Fh: opened.Fh})
	withFh := *in
	withFh.Fh = opened.Fh
	return read(&withFh)
}
