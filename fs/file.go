package fs

import (
	"context"
	"errors"
	"io"
	"os"
	"sync"
	"syscall"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"github.com/sirupsen/logrus"
)

// fileNode serves a regular file; its bytes come from the Reader, which
// fetches and verifies them on first use, or, once the Reader keeps a
// whole-file copy of it (WholeFiler), from that copy through FUSE
// passthrough: the kernel reads the local file itself and never asks the
// daemon.
//
// The kernel puts each inode in one I/O mode at a time (fs/fuse/iomode.c):
// while any open of it is passthrough, every other open must be
// passthrough too (else open fails with EIO), and while any open is in
// cached mode (a plain open), a passthrough open fails with EIO. go-fuse
// takes care of the first rule: it gives every open of an inode that has a
// backing file that same backing file, provided the handle implements
// FilePassthroughFder (fileHandle always does). The second rule is kept
// here: passthrough is offered only while no cached-mode handle of the
// node is open.
//
// On a mount that serves free opens (ServeOptions.FreeOpens) none of this
// runs: Open and Release never come, and every read the page cache misses
// comes to Read without a handle.
type fileNode struct {
	node

	mu sync.Mutex
	// cachedOpens counts the handles opened in cached mode and not yet
	// released. The kernel drops its own count when the file is closed,
	// before it sends RELEASE, so this one is never lower than the
	// kernel's: it errs towards cached mode, which is always allowed.
	cachedOpens int
	// whole is the whole-file copy that passthrough handles hand to the
	// kernel, shared by all of them (one fd per node, not per open), and
	// wholeRefs counts those handles; it is closed with the last of them.
	whole     *os.File
	wholeRefs int
}

var (
	_ = (gofs.NodeOpener)((*fileNode)(nil))
	_ = (gofs.NodeReader)((*fileNode)(nil))
	_ = (gofs.NodeWriter)((*fileNode)(nil))
	_ = (gofs.NodeFsyncer)((*fileNode)(nil))
)

// fileHandle is one open of a view file. whole is the node's whole-file
// copy if this open was offered passthrough, nil if it reads through the
// daemon.
type fileHandle struct {
	n     *fileNode
	whole *os.File
}

var (
	_ = (gofs.FilePassthroughFder)((*fileHandle)(nil))
	_ = (gofs.FileReleaser)((*fileHandle)(nil))
)

// PassthroughFd gives go-fuse the copy to register as the open's backing
// file. go-fuse asks only when the inode has no backing file registered
// yet; otherwise it reuses that one. If registration fails (not root, a
// cache dir the kernel cannot stack on, such as overlayfs or another FUSE
// mount), go-fuse stops offering passthrough for the whole mount and
// every read comes to Read as before.
func (h *fileHandle) PassthroughFd() (int, bool) {
	if h.whole == nil {
		return -1, false
	}
	return int(h.whole.Fd()), true
}

// Release ends the open's part in the node's counts. A cached-mode open
// that ends is the moment its file is most likely fully cached (it was
// just read), so a whole-file copy is asked for then; the request returns
// at once and the copy is written in the background.
func (h *fileHandle) Release(ctx context.Context) syscall.Errno {
	n := h.n
	n.mu.Lock()
	if h.whole != nil {
		n.wholeRefs--
		if n.wholeRefs == 0 {
			// The kernel holds its own reference to a registered backing
			// file; this fd is only needed to register it.
			n.whole.Close()
			n.whole = nil
		}
	} else {
		n.cachedOpens--
	}
	n.mu.Unlock()
	if h.whole == nil && n.sh.whole != nil {
		n.sh.whole.MaterializeWhole(n.e)
	}
	return gofs.OK
}

// Open refuses anything that could write. The content never changes, so
// the kernel may keep its page cache across opens (FOPEN_KEEP_CACHE;
// go-fuse drops the flag for passthrough opens, which use the backing
// file's page cache instead).
func (f *fileNode) Open(ctx context.Context, flags uint32) (gofs.FileHandle, uint32, syscall.Errno) {
	if OpensForWrite(flags) {
		return nil, 0, syscall.EROFS
	}
	h := &fileHandle{n: f}
	f.mu.Lock()
	if f.sh.whole != nil && f.cachedOpens == 0 {
		if f.whole == nil {
			// Opened here, not in PassthroughFd, so that an open counted as
			// passthrough can always give go-fuse its fd: a handle that
			// failed to would be in cached mode without being counted.
			if w, ok := f.sh.whole.OpenWhole(f.e); ok {
				f.whole = w
			}
		}
		if f.whole != nil {
			f.wholeRefs++
			h.whole = f.whole
		}
	}
	if h.whole == nil {
		f.cachedOpens++
	}
	f.mu.Unlock()
	if h.whole == nil && f.sh.whole != nil {
		// A file cached by earlier reads (or by the prefetch) gets its copy
		// without waiting for this open to end.
		f.sh.whole.MaterializeWhole(f.e)
	}
	return h, fuse.FOPEN_KEEP_CACHE, gofs.OK
}

// Read fills dest from the layer. The Reader returns a short count only at
// end of file, which is what the kernel expects of a read reply.
// Passthrough opens never get here, except on a mount where go-fuse could
// not register backing files.
func (f *fileNode) Read(ctx context.Context, fh gofs.FileHandle, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	n, err := f.sh.r.ReadAt(ctx, f.e, dest, off)
	if err != nil && !errors.Is(err, io.EOF) {
		if ctx.Err() != nil {
			// The reader was interrupted; nobody is waiting for this reply.
			return nil, syscall.EINTR
		}
		f.sh.log.WithFields(logrus.Fields{"path": f.e.Path(), "offset": off, "length": len(dest)}).
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
