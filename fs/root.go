// Package fs exposes one layer view as go-fuse nodes: a read-only tree
// whose metadata comes from the layer's TOC and whose file contents are
// read (lazily, verified) through a Reader.
package fs

import (
	"context"
	"io"
	"os"
	"syscall"

	gofs "github.com/hanwen/go-fuse/v2/fs"
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
// layer.Layer.SetWholeFiles is called).
type WholeFiler interface {
	// OpenWhole opens the local copy of e's whole content, if one exists.
	// It must be quick: it runs on the open(2) it answers.
	OpenWhole(e *layer.Entry) (*os.File, bool)
	// MaterializeWhole asks for a copy of e to be made in the background;
	// it must return at once.
	MaterializeWhole(e *layer.Entry)
}

// shared is the state every node of one layer view points to.
type shared struct {
	r     Reader
	whole WholeFiler // nil: every read goes through the daemon
	log   *logrus.Entry
	// Totals for statfs, computed once: the view never changes.
	bytes, files uint64
}

// rootNode is a view's root directory; adding it to a tree builds the rest.
type rootNode struct {
	dirNode
}

var _ = (gofs.NodeOnAdder)((*rootNode)(nil))

// NewLayerRoot returns the go-fuse node of a layer view's root directory.
// Add it with parent.NewPersistentInode(ctx, node,
// fs.StableAttr{Mode: syscall.S_IFDIR}) or mount it as a file system root:
// its OnAdd then builds the whole tree with persistent inodes. Inode
// numbers are left to go-fuse, so several views of one layer in one mount
// never share inodes.
func NewLayerRoot(l Reader, log *logrus.Entry) gofs.InodeEmbedder {
	if log == nil {
		lg := logrus.New()
		lg.Out = io.Discard
		log = logrus.NewEntry(lg)
	}
	sh := &shared{r: l, log: log}
	if w, ok := l.(WholeFiler); ok {
		sh.whole = w
	}
	root := l.Root()
	if root == nil {
		// Show an empty directory rather than crash the daemon.
		log.Error("layer view has no root; showing an empty directory")
		root = &layer.Entry{Type: layer.TypeDir, Mode: 0o755, NLink: 2}
	}
	sh.bytes, sh.files = totals(root)
	return &rootNode{dirNode{node: node{e: root, sh: sh}}}
}

// OnAdd creates an inode for every entry of the view. The tree is small
// next to the data it describes, and having it all up front means lookups
// never wait for anything. A hard-linked entry gets one inode, added under
// each of its names.
func (r *rootNode) OnAdd(ctx context.Context) {
	inodes := map[*layer.Entry]*gofs.Inode{}
	type dir struct {
		inode *gofs.Inode
		e     *layer.Entry
	}
	stack := []dir{{&r.Inode, r.e}}
	for len(stack) > 0 {
		d := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		for _, name := range d.e.Names {
			ce := d.e.Children[name]
			if ce == nil {
				continue
			}
			ch, ok := inodes[ce]
			if !ok {
				ch = d.inode.NewPersistentInode(ctx, newNode(ce, r.sh), gofs.StableAttr{Mode: typeBits(ce.Type)})
				inodes[ce] = ch
				if ce.Type == layer.TypeDir {
					stack = append(stack, dir{ch, ce})
				}
			}
			d.inode.AddChild(name, ch, false)
		}
	}
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
	seen := map[*layer.Entry]bool{}
	stack := []*layer.Entry{root}
	for len(stack) > 0 {
		e := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		if e == nil || seen[e] {
			continue
		}
		seen[e] = true
		fn(e)
		for _, c := range e.Children {
			stack = append(stack, c)
		}
	}
}
