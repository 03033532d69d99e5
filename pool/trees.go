package pool

import (
	"context"
	"errors"
	"strings"
	"syscall"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"github.com/sirupsen/logrus"

	"github.com/poolfs/poolfs/alspath"
)

// A layer's tree can live on a mount of its own, beside the pool's, that is
// mounted read-only (see SetTreesMount). The pool's mount cannot be: the
// client's create(use) and rmdir(<digest>) must reach the daemon, and on a
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

// SetTreesMount makes the layers' trees symlinks, from diff (grammar 2) and
// rootfs.<ID> (grammar 1), to <name>/<blob digest>, where name is a mount
// beside the pool's (in the same directory) serving NewTrees. The links are
// relative, so they resolve wherever the two mounts are seen from. Call it
// before the pool serves lookups; without it trees are served in place, as
// are those of layers that prefer opens (see above).
func (p *Pool) SetTreesMount(name string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.treesMount = name
}

// treeNode is the node for layer l's tree in the pool's mount, whose parent
// directory is depth directories below the mount: the tree itself, or a
// link into the trees mount.
func (p *Pool) treeNode(l *Layer, depth int, log *logrus.Entry) (gofs.InodeEmbedder, uint32) {
	p.mu.Lock()
	trees := p.treesMount
	p.mu.Unlock()
	if trees != "" && l.prefersOpens {
		log.Debug("serving the tree in place, where its large files can have passthrough")
		trees = ""
	}
	if trees == "" {
		return p.treeRoot(l, log), syscall.S_IFDIR
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

// Trees is the node mounted at the trees mount (see SetTreesMount): its
// child <blob digest> is the tree of the pool's open layer with that blob
// digest. A layer is opened by a lookup through the pool, which is how
// every link into this mount is reached.
type Trees struct {
	syntheticDir
	pool *Pool
}

// NewTrees returns the node to mount as the pool's trees mount.
func NewTrees(p *Pool) *Trees { return &Trees{syntheticDir: syntheticDir{access: p.access}, pool: p} }

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
	log := t.pool.log.WithFields(logrus.Fields{"mount": "trees", "path": name})
	dg, err := alspath.ParseDigest(name)
	if err != nil {
		return nil, refuse(log, out, err)
	}
	l := t.pool.byBlobDigest(dg)
	if l == nil {
		// Not cached by the kernel (refuse): the pool may open it next.
		return nil, refuse(log, out, ErrNotOpen)
	}
	l.touch()
	log = log.WithFields(logrus.Fields{"ref": l.Desc.Ref, "digest": dg})
	ch := t.NewPersistentInode(ctx, t.pool.treeRoot(l, log), gofs.StableAttr{Mode: syscall.S_IFDIR})
	t.addChild(name, ch)
	return ch, childAttr(ctx, ch, out)
}
