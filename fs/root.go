// Package fs exposes one layer view as go-fuse nodes: a read-only tree
// whose metadata comes from the layer's TOC and whose file contents are
// read (lazily, verified) through a Reader.
package fs

import (
	"context"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"syscall"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"github.com/sirupsen/logrus"

	"github.com/poolfs/poolfs/layer"
)

// Reader is what the nodes need from a layer; *layer.Layer satisfies it.
type Reader interface {
	Root() *layer.Entry
	ReadAt(ctx context.Context, e *layer.Entry, p []byte, off int64) (int, error)
}

// WholeFiler is implemented by Readers that can keep whole-file copies of
// files for FUSE passthrough; *layer.Layer does (its copies exist once
// the layer is opened with layer.WithWholeFiles).
type WholeFiler interface {
	// OpenWhole opens the local copy of e's whole content, if one exists.
	// It must be quick: it runs on the open(2) it answers.
	OpenWhole(e *layer.Entry) (*os.File, bool)
	// MaterializeWhole asks for a copy of e to be made in the background;
	// it must return at once.
	MaterializeWhole(e *layer.Entry)
}

// Holder hands out a layer's view, which may leave memory while nobody
// holds it and come back on the next Hold (see NewHeldRoot).
type Holder interface {
	// Hold returns the view, loading it if it is not in memory, and keeps
	// it there until the matching Release.
	Hold(ctx context.Context) (Reader, error)
	Release()
}

// shared is the state the nodes of one loaded view point to.
type shared struct {
	r     Reader
	whole WholeFiler // nil: every read goes through the daemon
	log   *logrus.Entry
	// inoBase+Entry.ID is each entry's inode number (see Root).
	inoBase uint64
	root    *Root
}

// Root is a view's root directory node. It creates the inodes of the view
// lazily, as the kernel looks names up, and go-fuse drops them when the
// kernel forgets them; the root itself keeps only a copy of its own
// attributes, so the view can leave memory while nothing below the root
// is in use (InUse) and be loaded again through its Holder.
type Root struct {
	gofs.Inode
	ReadOnly
	ReadOnlyDir
	views Holder
	log   *logrus.Entry

	inoBase uint64
	mu      sync.Mutex
	loaded  bool      // attr, bytes and files are set
	attr    fuse.Attr // the root entry's
	// Totals for statfs, computed once: the view never changes.
	bytes, files uint64
}

var (
	_ = (gofs.NodeLookuper)((*Root)(nil))
	_ = (gofs.NodeReaddirer)((*Root)(nil))
	_ = (gofs.NodeGetattrer)((*Root)(nil))
	_ = (gofs.NodeGetxattrer)((*Root)(nil))
	_ = (gofs.NodeListxattrer)((*Root)(nil))
	_ = (gofs.NodeStatfser)((*Root)(nil))
)

// inoBlocks hands each Root a block of 2^32 inode numbers for its
// entries: several views of one layer in one mount never share inodes,
// and none reaches go-fuse's automatic numbers (from 2^63).
var inoBlocks atomic.Uint64

// NewLayerRoot returns the go-fuse node of a layer view's root directory,
// for a view that stays in memory. Add it with
// parent.NewPersistentInode(ctx, node, fs.StableAttr{Mode: syscall.S_IFDIR})
// or mount it as a file system root.
func NewLayerRoot(l Reader, log *logrus.Entry) gofs.InodeEmbedder {
	return NewHeldRoot(always{l}, log)
}

// NewHeldRoot is NewLayerRoot for a view that h may drop from memory
// while InUse is false and load again.
func NewHeldRoot(h Holder, log *logrus.Entry) *Root {
	if log == nil {
		lg := logrus.New()
		lg.Out = io.Discard
		log = logrus.NewEntry(lg)
	}
	return &Root{views: h, log: log, inoBase: inoBlocks.Add(1) << 32}
}

// always is the Holder of a view that never leaves memory.
type always struct{ r Reader }

func (a always) Hold(context.Context) (Reader, error) { return a.r, nil }
func (a always) Release()                             {}

// InUse says whether the kernel knows an inode below the root (an entry
// looked up and not forgotten, an open file): the view must then stay.
func (r *Root) InUse() bool { return len(r.Children()) > 0 }

// hold loads the view and returns its root directory node, which lives
// for one operation; release must follow.
func (r *Root) hold(ctx context.Context) (*dirNode, syscall.Errno) {
	v, err := r.views.Hold(ctx)
	if err != nil {
		r.log.WithError(err).Error("loading layer view")
		return nil, syscall.EIO
	}
	sh := &shared{r: v, log: r.log, inoBase: r.inoBase, root: r}
	if w, ok := v.(WholeFiler); ok {
		sh.whole = w
	}
	e := v.Root()
	if e == nil {
		// Show an empty directory rather than crash the daemon.
		r.log.Error("layer view has no root; showing an empty directory")
		e = &layer.Entry{Type: layer.TypeDir, Mode: 0o755, NLink: 2}
	}
	d := &dirNode{node: node{e: e, sh: sh}}
	r.mu.Lock()
	if !r.loaded {
		d.fillAttr(&r.attr)
		r.bytes, r.files = totals(e)
		r.loaded = true
	}
	r.mu.Unlock()
	return d, 0
}

func (r *Root) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	d, errno := r.hold(ctx)
	if errno != 0 {
		return nil, errno
	}
	defer r.views.Release()
	return d.lookupUnder(ctx, &r.Inode, name, out)
}

func (r *Root) Readdir(ctx context.Context) (gofs.DirStream, syscall.Errno) {
	d, errno := r.hold(ctx)
	if errno != 0 {
		return nil, errno
	}
	defer r.views.Release()
	return d.list(&r.Inode)
}

func (r *Root) Getattr(ctx context.Context, f gofs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	r.mu.Lock()
	loaded := r.loaded
	r.mu.Unlock()
	if !loaded {
		if _, errno := r.hold(ctx); errno != 0 {
			return errno
		}
		r.views.Release()
	}
	r.mu.Lock()
	out.Attr = r.attr
	r.mu.Unlock()
	out.Ino = r.StableAttr().Ino
	return gofs.OK
}

func (r *Root) Getxattr(ctx context.Context, attr string, dest []byte) (uint32, syscall.Errno) {
	d, errno := r.hold(ctx)
	if errno != 0 {
		return 0, errno
	}
	defer r.views.Release()
	return d.Getxattr(ctx, attr, dest)
}

func (r *Root) Listxattr(ctx context.Context, dest []byte) (uint32, syscall.Errno) {
	d, errno := r.hold(ctx)
	if errno != 0 {
		return 0, errno
	}
	defer r.views.Release()
	return d.Listxattr(ctx, dest)
}

func (r *Root) Statfs(ctx context.Context, out *fuse.StatfsOut) syscall.Errno {
	if errno := r.Getattr(ctx, nil, &fuse.AttrOut{}); errno != 0 {
		return errno
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	statfs(out, r.bytes, r.files)
	return gofs.OK
}

// newNode makes the node type that serves e.
func newNode(e *layer.Entry, sh *shared) gofs.InodeEmbedder {
	switch e.Type {
	case layer.TypeDir:
		return &dirNode{node: node{e: e, sh: sh}}
	case layer.TypeReg:
		return &fileNode{node: node{e: e, sh: sh}}
	case layer.TypeSymlink:
		return &symlinkNode{node{e: e, sh: sh}}
	default:
		// Devices and FIFOs: the kernel serves opens of these itself.
		return &node{e: e, sh: sh}
	}
}

func typeBits(t layer.EntryType) uint32 {
	switch t {
	case layer.TypeDir:
		return syscall.S_IFDIR
	case layer.TypeReg:
		return syscall.S_IFREG
	case layer.TypeSymlink:
		return syscall.S_IFLNK
	case layer.TypeChar:
		return syscall.S_IFCHR
	case layer.TypeBlock:
		return syscall.S_IFBLK
	case layer.TypeFIFO:
		return syscall.S_IFIFO
	}
	return syscall.S_IFREG
}

// totals counts the bytes of regular files (each inode once) and the
// inodes of the view.
func totals(root *layer.Entry) (bytes, files uint64) {
	eachEntry(root, func(e *layer.Entry) {
		files++
		if e.Type == layer.TypeReg && e.Size > 0 {
			bytes += uint64(e.Size)
		}
	})
	return bytes, files
}

// eachEntry calls fn once for every entry of the view rooted at root, root
// included; a hard-linked entry is visited once.
func eachEntry(root *layer.Entry, fn func(e *layer.Entry)) {
	linked := map[uint32]bool{} // hard-linked entries visited so far
	stack := []*layer.Entry{root}
	for len(stack) > 0 {
		e := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		if e.Type != layer.TypeDir && e.NLink > 1 {
			if linked[e.ID()] {
				continue
			}
			linked[e.ID()] = true
		}
		fn(e)
		for i := range e.NumChildren() {
			_, c := e.ChildAt(i)
			stack = append(stack, c)
		}
	}
}
