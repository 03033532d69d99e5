package fs

import (
	"context"
	"errors"
	"io"
	"syscall"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"github.com/sirupsen/logrus"
)

// fileNode serves a regular file; its bytes come from the Reader, which
// fetches and verifies them on first use.
type fileNode struct {
	node
}

var (
	_ = (gofs.NodeOpener)((*fileNode)(nil))
	_ = (gofs.NodeReader)((*fileNode)(nil))
	_ = (gofs.NodeWriter)((*fileNode)(nil))
	_ = (gofs.NodeFsyncer)((*fileNode)(nil))
)

// fileHandle marks an open of a view file; reads need no per-open state.
type fileHandle struct{}

// Open refuses anything that could write. The content never changes, so
// the kernel may keep its page cache across opens (FOPEN_KEEP_CACHE).
func (f *fileNode) Open(ctx context.Context, flags uint32) (gofs.FileHandle, uint32, syscall.Errno) {
	if OpensForWrite(flags) {
		return nil, 0, syscall.EROFS
	}
	return &fileHandle{}, fuse.FOPEN_KEEP_CACHE, gofs.OK
}

// Read fills dest from the layer. The Reader returns a short count only at
// end of file, which is what the kernel expects of a read reply.
func (f *fileNode) Read(ctx context.Context, fh gofs.FileHandle, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	n, err := f.sh.r.ReadAt(ctx, f.e, dest, off)
	if err != nil && !errors.Is(err, io.EOF) {
		if ctx.Err() != nil {
			// The reader was interrupted; nobody is waiting for this reply.
			return nil, syscall.EINTR
		}
		f.sh.log.WithFields(logrus.Fields{"path": f.e.Path, "offset": off, "length": len(dest)}).
			WithError(err).Error("reading layer file")
		return nil, syscall.EIO
	}
	return fuse.ReadResultData(dest[:n]), gofs.OK
}

func (f *fileNode) Write(ctx context.Context, fh gofs.FileHandle, data []byte, off int64) (uint32, syscall.Errno) {
	return 0, syscall.EROFS
}

// Fsync has nothing to flush; failing it would break programs that fsync
// files they only read.
func (f *fileNode) Fsync(ctx context.Context, fh gofs.FileHandle, flags uint32) syscall.Errno {
	return gofs.OK
}
