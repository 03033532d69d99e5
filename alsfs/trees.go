package alsfs

import (
	"context"
	"errors"
	"strings"
	"syscall"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"github.com/sirupsen/logrus"

	"github.com/poolfs/poolfs/alspath"
	layerfs "github.com/poolfs/poolfs/fs"
	"github.com/poolfs/poolfs/pool"
)

// A layer's tree can live on a mount of its own, beside the pool's, that is
// mounted read-only (unless Options.InPlaceTrees). The pool's mount cannot
// be: the client's create(use) and rmdir(<digest>) must reach the daemon, and on a
// read-only superblock the kernel answers them with EROFS itself. But on a
// writable one the kernel marks a directory's atime stale each time it reads
// the directory's listing (fuse_invalidate_atime), so the next stat of every
// directory a walk listed costs a GETATTR round trip, even though nothing
// can change. On the trees mount that stat is answered from the kernel's
// cache.

// ErrNotOpen says a trees-mount path names a layer no pool path has opened.
var ErrNotOpen = errors.New("layer not opened through the pool")

// The trees mount also opens files without a round trip to the daemon
// (layerfs.ServeOptions.FreeOpens): a file the kernel holds in its page
// cache is opened and read as on a local disk. On that connection no open
// can get passthrough, though, so a layer whose bytes are mostly in large
// files, read faster through passthrough once cached, is served in place
// on the pool's mount instead, where every open reaches the daemon
// (layerfs.PrefersOpens weighs the two).

// treeNode is the node for layer l's tree in the pool's mount, whose parent
// directory is depth directories below the mount: the tree itself, or,
// with a trees mount (als.trees), a symlink to <trees>/<blob digest> on
// it. The links are relative, so they resolve wherever the two mounts are
// seen from.
func (a *als) treeNode(ctx context.Context, l *pool.Layer, depth int, log *logrus.Entry) (gofs.InodeEmbedder, uint32) {
	trees := a.trees
	if trees != "" && a.prefersOpens(ctx, l) {
		log.Debug("serving the tree in place, where its large files can have passthrough")
		trees = ""
	}
	if trees == "" {
		return treeRoot(l, log), syscall.S_IFDIR
	}
	// depth+1 steps up lead from the parent to the directory that holds
	// both mounts.
	target := strings.Repeat("../", depth+1) + trees + "/" + l.Desc.Digest.String()
	link := &gofs.MemSymlink{Data: []byte(target)}
	link.Attr.Mode = syscall.S_IFLNK | 0o777
	link.Attr.Size = uint64(len(target))
	link.Attr.Nlink = 1
	return link, syscall.S_IFLNK
}

// prefersOpens says whether l's tree is served in place even beside a
// trees mount, so that its large files can have passthrough (see above).
// It is weighed once per layer, on its first path.
func (a *als) prefersOpens(ctx context.Context, l *pool.Layer) bool {
	w := a.pool.WholeFiles()
	if w == nil {
		return false
	}
	a.mu.Lock()
	prefers, known := a.prefers[l]
	a.mu.Unlock()
	if known {
		return prefers
	}
	// A layer's first path comes right after a Get, mostly the one that
	// opened it: its tree is in memory, or loaded as the lookups below
	// the path would load it.
	v, err := l.View(ctx)
	if err != nil {
		return false // weighed again on the next path
	}
	prefers = layerfs.PrefersOpens(v.Root(), w.MinSize())
	a.mu.Lock()
	a.prefers[l] = prefers
	a.mu.Unlock()
	return prefers
}

// treeRoot makes the node of l's tree root, whose tree stays in memory
// while the kernel uses it.
func treeRoot(l *pool.Layer, log *logrus.Entry) *layerfs.Root {
	r := layerfs.NewHeldRoot(heldTree{l}, log)
	l.AddTreeNode(r)
	return r
}

// heldTree is a layer as the layerfs.Holder of its tree.
type heldTree struct{ l *pool.Layer }

func (h heldTree) Hold(ctx context.Context) (layerfs.Reader, error) {
	v, err := h.l.Hold(ctx)
	if err != nil {
		return nil, err // not a nil *layer.Layer in a Reader
	}
	return v, nil
}

func (h heldTree) Release() { h.l.Release() }

// Trees is the node mounted at the trees mount (see treeNode): its child
// <blob digest> is the tree of the pool's open layer with that blob
// digest. A layer is opened by a lookup through the pool, which is how
// every link into this mount is reached.
type Trees struct {
	syntheticDir
	als *als
}

// newTrees returns the node to mount as the pool's trees mount.
func newTrees(a *als) *Trees { return &Trees{syntheticDir: syntheticDir{access: a.access}, als: a} }

var (
	_ gofs.NodeLookuper  = (*Trees)(nil)
	_ gofs.NodeGetattrer = (*Trees)(nil)
)

func (t *Trees) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if ch := t.GetChild(name); ch != nil {
		return ch, childAttr(ctx, ch, out)
	}
	log := t.als.log.WithFields(logrus.Fields{"mount": "trees", "path": name})
	dg, err := alspath.ParseDigest(name)
	if err != nil {
		return nil, refuse(log, out, err)
	}
	l := t.als.pool.Opened(dg)
	if l == nil {
		// Not cached by the kernel (refuse): the pool may open it next.
		return nil, refuse(log, out, ErrNotOpen)
	}
	log = log.WithFields(logrus.Fields{"ref": l.Desc.Ref, "digest": dg})
	ch := t.NewPersistentInode(ctx, treeRoot(l, log), gofs.StableAttr{Mode: syscall.S_IFDIR})
	t.addChild(name, ch)
	return ch, childAttr(ctx, ch, out)
}
