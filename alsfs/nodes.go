package alsfs

import (
	"context"
	"errors"
	"strings"
	"syscall"
	"time"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"github.com/sirupsen/logrus"

	"github.com/poolfs/poolfs/alspath"
	"github.com/poolfs/poolfs/pool"
)

// entryTimeout is how long the kernel may keep a positive lookup of a
// grammar directory: what a name decodes to never changes.
const entryTimeout = 24 * time.Hour

// Root is the node mounted at <ALS root>/.pool.
type Root struct {
	syntheticDir
	als *als
}

// newRoot returns the node to mount at <ALS root>/.pool.
func newRoot(a *als) *Root {
	return &Root{syntheticDir: syntheticDir{access: a.access}, als: a}
}

var (
	_ gofs.NodeLookuper  = (*Root)(nil)
	_ gofs.NodeGetattrer = (*Root)(nil)
)

// Lookup decides, from the first path element, which grammar a path uses.
func (r *Root) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if ch := r.GetChild(name); ch != nil {
		return ch, childAttr(ctx, ch, out)
	}
	log := r.als.log.WithField("path", name)
	el, err := alspath.ParseElement(name)
	var node gofs.InodeEmbedder
	switch {
	case err == nil && el.IsAnnotation():
		node = &annotationDir{syntheticDir: syntheticDir{access: r.access}, als: r.als, ann: map[string]string{el.Key: el.Value}, path: name}
	case err == nil:
		node = &refDir{syntheticDir: syntheticDir{access: r.access}, als: r.als, encoded: name, ref: el.Ref}
	default:
		return nil, refuse(log, out, err)
	}
	return addDir(ctx, &r.syntheticDir, name, node, out), 0
}

// addDir makes a persistent synthetic directory child. Persistent because
// the path a client was given (a diff dir, a rootfs symlink target) must
// keep resolving to the same inode even after the kernel forgets it.
func addDir(ctx context.Context, parent *syntheticDir, name string, node gofs.InodeEmbedder, out *fuse.EntryOut) *gofs.Inode {
	ch := parent.NewPersistentInode(ctx, node, gofs.StableAttr{Mode: syscall.S_IFDIR})
	parent.addChild(name, ch)
	parent.access.mountDirAttr(&out.Attr)
	out.SetEntryTimeout(entryTimeout)
	out.SetAttrTimeout(entryTimeout)
	return ch
}

func childAttr(ctx context.Context, ch *gofs.Inode, out *fuse.EntryOut) syscall.Errno {
	if ga, ok := ch.Operations().(gofs.NodeGetattrer); ok {
		var a fuse.AttrOut
		if errno := ga.Getattr(ctx, nil, &a); errno != 0 {
			return errno
		}
		out.Attr = a.Attr
	}
	out.SetEntryTimeout(entryTimeout)
	out.SetAttrTimeout(entryTimeout)
	return 0
}

// refuse answers a lookup the path grammar rejects. The miss is not cached
// by the kernel (timeout 0) so that a layer that failed for a transient
// reason can be found on the next try.
func refuse(log *logrus.Entry, out *fuse.EntryOut, err error) syscall.Errno {
	if errors.Is(err, pool.ErrDiffIDMismatch) {
		// Not a client's typo: two images disagree and one of them is wrong.
		log.WithError(err).Warn("lookup refused")
	} else {
		log.WithError(err).Info("lookup refused")
	}
	out.SetEntryTimeout(0)
	if errors.Is(err, ErrAccess) {
		return syscall.EACCES
	}
	return syscall.ENOENT
}

// annotationDir is one element of a grammar-1 path; it carries every
// annotation decoded on the way down.
type annotationDir struct {
	syntheticDir
	als  *als
	ann  map[string]string
	path string
}

var (
	_ gofs.NodeLookuper  = (*annotationDir)(nil)
	_ gofs.NodeGetattrer = (*annotationDir)(nil)
)

func (d *annotationDir) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if ch := d.GetChild(name); ch != nil {
		return ch, childAttr(ctx, ch, out)
	}
	log := d.als.log.WithField("path", d.path+"/"+name)
	if _, err := alspath.ParseLayerID(name); err == nil {
		key, err := alspath.KeyFromAnnotations(d.ann)
		if err != nil {
			return nil, refuse(log, out, err)
		}
		log = log.WithFields(logrus.Fields{"ref": key.Ref, "digest": key.Digest})
		l, err := d.als.get(ctx, pool.LayerKey(key))
		if err != nil {
			return nil, refuse(log, out, err)
		}
		tree, mode := d.als.treeNode(ctx, l, strings.Count(d.path, "/")+1, log)
		ch := d.NewPersistentInode(ctx, tree, gofs.StableAttr{Mode: mode})
		d.addChild(name, ch)
		return ch, childAttr(ctx, ch, out)
	}
	el, err := alspath.ParseElement(name)
	if err != nil {
		return nil, refuse(log, out, err)
	}
	if !el.IsAnnotation() {
		return nil, refuse(log, out, errors.Join(alspath.ErrGrammar, errors.New("image reference inside an annotation path")))
	}
	if len(d.ann) >= alspath.MaxAnnotations {
		return nil, refuse(log, out, errors.Join(alspath.ErrGrammar, errors.New("too many annotations")))
	}
	ann := make(map[string]string, len(d.ann)+1)
	for k, v := range d.ann {
		ann[k] = v
	}
	ann[el.Key] = el.Value
	node := &annotationDir{syntheticDir: syntheticDir{access: d.access}, als: d.als, ann: ann, path: d.path + "/" + name}
	return addDir(ctx, &d.syntheticDir, name, node, out), 0
}

// refDir is the image-reference element of a grammar-2 path. The client
// joins base64std(ref) into the path unescaped, so a '/' in the encoding
// would split it; that cannot happen: references are ASCII without '?',
// and standard base64 of such text never produces '/' (see
// TestStdBase64OfReferencesHasNoSlash).
type refDir struct {
	syntheticDir
	als     *als
	encoded string
	ref     string
}

var (
	_ gofs.NodeLookuper = (*refDir)(nil)
	_ gofs.NodeRmdirer  = (*refDir)(nil)
)

func (d *refDir) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if ch := d.GetChild(name); ch != nil {
		return ch, childAttr(ctx, ch, out)
	}
	log := d.als.log.WithField("path", d.encoded+"/"+name)
	dg, err := alspath.ParseDigest(name)
	if err != nil {
		return nil, refuse(log, out, err)
	}
	log = log.WithFields(logrus.Fields{"ref": d.ref, "digest": dg})
	l, err := d.als.get(ctx, pool.LayerKey{Ref: d.ref, Digest: dg})
	if err != nil {
		return nil, refuse(log, out, err)
	}
	diffID, err := d.als.pool.DiffIDFor(ctx, l, d.ref)
	if err != nil {
		return nil, refuse(log, out, err)
	}
	return addDir(ctx, &d.syntheticDir, name, newLayerDir(d.als, l, diffID, log), out), 0
}

// Rmdir of <digest> is the client saying "one user fewer". It must fail
// with ENOENT: any other answer makes containers/storage log a warning.
func (d *refDir) Rmdir(ctx context.Context, name string) syscall.Errno {
	ch := d.GetChild(name)
	if ch == nil {
		return syscall.ENOENT
	}
	if ld, ok := ch.Operations().(*layerDir); ok {
		ld.log.WithField("uses", ld.layer.DropUse()).Debug("layer released")
	}
	return syscall.ENOENT
}
