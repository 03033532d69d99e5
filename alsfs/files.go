package alsfs

import (
	"context"
	"syscall"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"github.com/sirupsen/logrus"

	layerfs "github.com/poolfs/poolfs/fs"
	"github.com/poolfs/poolfs/pool"
)

// readOnlyFile is what the synthetic files share: EROFS for changes and
// opens that keep the kernel's page cache, since the bytes never change.
type readOnlyFile struct {
	gofs.Inode
	layerfs.ReadOnly
	access    Access
	groupRead bool // readable by the group Access lets in
}

var _ gofs.NodeOpener = (*readOnlyFile)(nil)

func (f *readOnlyFile) Open(ctx context.Context, flags uint32) (gofs.FileHandle, uint32, syscall.Errno) {
	// O_APPEND stays refused here, as it always was for these files.
	if layerfs.OpensForWrite(flags) || flags&syscall.O_APPEND != 0 {
		return nil, 0, syscall.EROFS
	}
	return nil, fuse.FOPEN_KEEP_CACHE, 0
}

func (f *readOnlyFile) attr(out *fuse.AttrOut, size int64) {
	f.access.fileAttr(&out.Attr, size, f.groupRead)
	out.SetTimeout(entryTimeout)
}

// bytesFile serves a fixed byte slice (the info file).
type bytesFile struct {
	readOnlyFile
	data []byte
}

var (
	_ gofs.NodeGetattrer = (*bytesFile)(nil)
	_ gofs.NodeReader    = (*bytesFile)(nil)
)

func (f *bytesFile) Getattr(ctx context.Context, fh gofs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	f.attr(out, int64(len(f.data)))
	return 0
}

func (f *bytesFile) Read(ctx context.Context, fh gofs.FileHandle, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	if off >= int64(len(f.data)) {
		return fuse.ReadResultData(nil), 0
	}
	end := min(off+int64(len(dest)), int64(len(f.data)))
	return fuse.ReadResultData(f.data[off:end]), 0
}

// blobFile serves the compressed layer blob byte for byte, fetched lazily
// through the layer's blob stream. The bytes never change, so the kernel
// keeps them in its page cache across opens (FOPEN_KEEP_CACHE, from
// readOnlyFile): a second reader gets them without asking.
type blobFile struct {
	readOnlyFile
	layer *pool.Layer
	log   *logrus.Entry
}

var (
	_ gofs.NodeGetattrer = (*blobFile)(nil)
	_ gofs.NodeReader    = (*blobFile)(nil)
)

func (f *blobFile) Getattr(ctx context.Context, fh gofs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	f.attr(out, f.layer.Desc.Size)
	return 0
}

func (f *blobFile) Read(ctx context.Context, fh gofs.FileHandle, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	n, err := f.layer.ReadBlob(ctx, dest, off)
	if err != nil {
		f.log.WithError(err).WithField("offset", off).Warn("reading layer blob failed")
		return nil, syscall.EIO
	}
	return fuse.ReadResultData(dest[:n]), 0
}
