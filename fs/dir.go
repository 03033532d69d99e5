package fs

import (
	"context"
	"syscall"
	"time"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/poolfs/poolfs/layer"
)

// cacheTimeout is how long the kernel may trust entries, attributes and
// failed lookups: a layer view never changes while it is mounted.
const cacheTimeout = 24 * time.Hour

// dirNode serves a directory of the view below its root. Its children's
// inodes are made as the kernel looks them up.
type dirNode struct {
	node
	ReadOnlyDir
}

var (
	_ = (gofs.NodeLookuper)((*dirNode)(nil))
	_ = (gofs.NodeReaddirer)((*dirNode)(nil))
)

// Lookup answers from the view. A miss is final for this view, so it
// carries a long entry timeout: programs like python stat thousands of
// names that do not exist, and the kernel should remember the answer.
// (go-fuse only turns that into a cached negative entry when the raw file
// system is wrapped by NewNodeFS/Mount of this package.)
func (d *dirNode) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	return d.lookupUnder(ctx, &d.Inode, name, out)
}

// lookupUnder looks name up in d's entry and returns its inode under
// parent (d's own, or the Root's when d stands in for it). An entry's
// inode number is fixed (shared.inoBase + its ID), so every name of a hard
// link, and every lookup of a name, ends at one inode: go-fuse keeps the
// one it knows and drops the node made here.
func (d *dirNode) lookupUnder(ctx context.Context, parent *gofs.Inode, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	ce := d.e.Child(name)
	if ce == nil {
		out.SetEntryTimeout(cacheTimeout)
		return nil, syscall.ENOENT
	}
	ch := parent.GetChild(name)
	if ch == nil {
		ch = parent.NewInode(ctx, newNode(ce, d.sh), gofs.StableAttr{Mode: typeBits(ce.Type), Ino: d.sh.ino(ce)})
	}
	if vn, ok := ch.Operations().(viewNode); ok {
		vn.fillAttr(&out.Attr)
	}
	return ch, gofs.OK
}

// Readdir lists the view's names in sorted order, with "." and ".." as a
// local file system would.
func (d *dirNode) Readdir(ctx context.Context) (gofs.DirStream, syscall.Errno) {
	return d.list(&d.Inode)
}

func (d *dirNode) list(self *gofs.Inode) (gofs.DirStream, syscall.Errno) {
	n := d.e.NumChildren()
	list := make([]fuse.DirEntry, 0, n+2)
	ino := self.StableAttr().Ino
	parent := ino
	if _, p := self.Parent(); p != nil {
		parent = p.StableAttr().Ino
	}
	list = append(list,
		fuse.DirEntry{Name: ".", Mode: syscall.S_IFDIR, Ino: ino},
		fuse.DirEntry{Name: "..", Mode: syscall.S_IFDIR, Ino: parent})
	for i := range n {
		name, ce := d.e.ChildAt(i)
		list = append(list, fuse.DirEntry{Name: name, Mode: typeBits(ce.Type), Ino: d.sh.ino(ce)})
	}
	return gofs.NewListDirStream(list), gofs.OK
}

// ino is e's inode number in this view.
func (sh *shared) ino(e *layer.Entry) uint64 { return sh.inoBase + uint64(e.ID()) }
