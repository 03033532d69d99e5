package pool

import (
	"context"
	"errors"
	"fmt"
	"io"
	"syscall"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"github.com/sirupsen/logrus"

	layerfs "github.com/poolfs/poolfs/fs"
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

// blobBlockSize is the unit the blob file is fetched and cached in. Clients
// read the blob sequentially (push, save), so large blocks mean few round
// trips without wasting much at the end.
const blobBlockSize = 1 << 20

// blobFile serves the compressed layer blob byte for byte, fetched lazily.
type blobFile struct {
	readOnlyFile
	layer *Layer
	cache Cache
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
	n, err := f.layer.ReadBlob(ctx, f.cache, dest, off)
	if err != nil {
		f.log.WithError(err).WithField("offset", off).Warn("reading layer blob failed")
		return nil, syscall.EIO
	}
	return fuse.ReadResultData(dest[:n]), 0
}

// ReadBlob reads the compressed blob at off through the block cache. It
// returns fewer bytes than len(p) only at the end of the blob.
func (l *Layer) ReadBlob(ctx context.Context, c Cache, p []byte, off int64) (int, error) {
	size := l.Desc.Size
	if off < 0 {
		return 0, fmt.Errorf("reading blob %s: negative offset %d", l.Desc.Digest, off)
	}
	n := 0
	for n < len(p) && off+int64(n) < size {
		pos := off + int64(n)
		idx := pos / blobBlockSize
		block, err := l.blobBlock(ctx, c, idx)
		if err != nil {
			return n, err
		}
		n += copy(p[n:], block[pos-idx*blobBlockSize:])
	}
	return n, nil
}

// Blocks are not put in the chunk cache: only the whole blob has a digest,
// so a block cannot be verified on its own, and a block spoiled in transit
// would otherwise be served from the cache forever (and survive restarts on
// disk). The cache holds verified bytes only; the kernel's page cache still
// keeps what `podman push`/`save` read.
func (l *Layer) blobBlock(ctx context.Context, c Cache, idx int64) ([]byte, error) {
	start := idx * blobBlockSize
	b := make([]byte, min(blobBlockSize, l.Desc.Size-start))
	// io.ReaderAt may say EOF along with the last full read.
	if n, err := l.Blob.ReadAt(ctx, b, start); err != nil && !(errors.Is(err, io.EOF) && n == len(b)) {
		return nil, fmt.Errorf("fetching blob %s block %d: %w", l.Desc.Digest, idx, err)
	}
	return b, nil
}
