package fs

import (
	"context"
	"syscall"
	"time"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// cacheTimeout is how long the kernel may trust entries, attributes and
// failed lookups: a layer view never changes while it is mounted.
const cacheTimeout = 24 * time.Hour

// dirNode serves a directory of the view. Its children were all added in
// OnAdd, so lookups and listings are answered from memory.
type dirNode struct {
	node
	ReadOnlyDir
}

var (
	_ = (gofs.NodeLookuper)((*dirNode)(nil))
	_ = (gofs.NodeReaddirer)((*dirNode)(nil))
)

// Lookup answers from the children built in OnAdd. A miss is final for
// this view, so it carries a long entry timeout: programs like python stat
// thousands of names that do not exist, and the kernel should remember
// the answer. (go-fuse only turns that into a cached negative entry when
// the raw file system is wrapped by NewNodeFS/Mount of this package.)
func (d *dirNode) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	ch := d.GetChild(name)
	if ch == nil {
		out.SetEntryTimeout(cacheTimeout)
		return nil, syscall.ENOENT
	}
	if vn, ok := ch.Operations().(viewNode); ok {
		vn.fillAttr(&out.Attr)
	}
	return ch, gofs.OK
}

// Readdir lists the view's names in sorted order, with "." and ".." as a
// local file system would.
func (d *dirNode) Readdir(ctx context.Context) (gofs.DirStream, syscall.Errno) {
	list := make([]fuse.DirEntry, 0, len(d.e.Names)+2)
	self := d.StableAttr().Ino
	parent := self
	if _, p := d.Parent(); p != nil {
		parent = p.StableAttr().Ino
	}
	list = append(list,
		fuse.DirEntry{Name: ".", Mode: syscall.S_IFDIR, Ino: self},
		fuse.DirEntry{Name: "..", Mode: syscall.S_IFDIR, Ino: parent})
	for _, name := range d.e.Names {
		ce := d.e.Children[name]
		if ce == nil {
			continue
		}
		de := fuse.DirEntry{Name: name, Mode: typeBits(ce.Type)}
		if ch := d.GetChild(name); ch != nil {
			de.Ino = ch.StableAttr().Ino
		}
		list = append(list, de)
	}
	return gofs.NewListDirStream(list), gofs.OK
}
