package alsfs

import (
	"context"
	"encoding/json"
	"sort"
	"syscall"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	digest "github.com/opencontainers/go-digest"
	"github.com/sirupsen/logrus"

	"github.com/poolfs/poolfs/layer"
	"github.com/poolfs/poolfs/pool"
)

// useFile is the name the containers/storage client creates to say "one
// more user"; it must never exist.
const useFile = "use"

// layerDir is <ref>/<digest> of grammar 2: diff, info and blob.
type layerDir struct {
	syntheticDir
	als    *als
	layer  *pool.Layer
	diffID digest.Digest // from the config of the image the path names
	log    *logrus.Entry
}

var (
	_ gofs.NodeOnAdder  = (*layerDir)(nil)
	_ gofs.NodeLookuper = (*layerDir)(nil)
	_ gofs.NodeCreater  = (*layerDir)(nil)
)

func newLayerDir(a *als, l *pool.Layer, diffID digest.Digest, log *logrus.Entry) *layerDir {
	return &layerDir{syntheticDir: syntheticDir{access: a.access}, als: a, layer: l, diffID: diffID, log: log}
}

// OnAdd builds the three files up front: the client stats all of them
// before it believes the layer exists.
func (d *layerDir) OnAdd(ctx context.Context) {
	tree, mode := d.als.treeNode(ctx, d.layer, 2, d.log) // below <ref>/<digest>
	diff := d.NewPersistentInode(ctx, tree, gofs.StableAttr{Mode: mode})
	d.AddChild("diff", diff, false)
	info := d.NewPersistentInode(ctx, &bytesFile{readOnlyFile: readOnlyFile{access: d.access, groupRead: true}, data: layerInfo(ctx, d.layer, d.diffID)}, gofs.StableAttr{Mode: syscall.S_IFREG})
	d.AddChild("info", info, false)
	// The blob holds every file of the layer: the group may read it only
	// if it may read all of them anyway.
	blobRead := false
	if v, err := d.layer.View(ctx); err == nil {
		blobRead = d.access.Group && worldReadable(v.Root())
	}
	blob := d.NewPersistentInode(ctx, &blobFile{readOnlyFile: readOnlyFile{access: d.access, groupRead: blobRead}, layer: d.layer, log: d.log}, gofs.StableAttr{Mode: syscall.S_IFREG})
	d.AddChild("blob", blob, false)
}

func (d *layerDir) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	ch := d.GetChild(name)
	if ch == nil {
		// "use" and typos alike: the answer for this name never changes.
		out.SetEntryTimeout(entryTimeout)
		return nil, syscall.ENOENT
	}
	return ch, childAttr(ctx, ch, out)
}

// Create of "use" counts one more user and fails with ENOENT, as the
// protocol asks; anything else is a write to a read-only store.
func (d *layerDir) Create(ctx context.Context, name string, flags uint32, mode uint32, out *fuse.EntryOut) (*gofs.Inode, gofs.FileHandle, uint32, syscall.Errno) {
	if name != useFile {
		return nil, nil, 0, syscall.EROFS
	}
	d.log.WithField("uses", d.layer.AddUse()).Debug("layer used")
	return nil, nil, 0, syscall.ENOENT
}

// info is the JSON of a containers/storage layer record (the keys its
// Layer type decodes).
type info struct {
	CompressedDigest   string         `json:"compressed-diff-digest,omitempty"`
	CompressedSize     int64          `json:"compressed-size,omitempty"`
	UncompressedDigest string         `json:"diff-digest,omitempty"`
	UncompressedSize   int64          `json:"diff-size,omitempty"`
	TOCDigest          string         `json:"toc-digest,omitempty"`
	CompressionType    int            `json:"compression,omitempty"`
	UIDs               []uint32       `json:"uidset,omitempty"`
	GIDs               []uint32       `json:"gidset,omitempty"`
	Flags              map[string]any `json:"flags,omitempty"`
}

// compressionGzip and compressionZstd are containers/storage's
// archive.Gzip and archive.Zstd.
const (
	compressionGzip = 2
	compressionZstd = 4
)

// uncompressedSizeAnnotation is what stargz converters record the tar size
// in; without it the size is left out, as containers/storage allows.
const uncompressedSizeAnnotation = "io.containers.estargz.uncompressed-size"

// layerInfo is l's info as seen through an image whose config gives it
// diffID ("" if it gives none).
func layerInfo(ctx context.Context, l *pool.Layer, diffID digest.Digest) []byte {
	in := info{
		CompressedDigest:   l.Desc.Digest.String(),
		CompressedSize:     l.Desc.Size,
		UncompressedDigest: diffID.String(),
		TOCDigest:          l.Desc.TOCDigest.String(),
		CompressionType:    compressionGzip,
	}
	if l.Format() == layer.FormatZstdChunked {
		in.CompressionType = compressionZstd
	}
	if diffID != "" {
		// Newer clients look here when they cannot trust diff-digest.
		in.Flags = map[string]any{"expected-layer-diffid": diffID.String()}
	}
	if s, ok := l.Desc.Annotations[uncompressedSizeAnnotation]; ok {
		var n int64
		if err := json.Unmarshal([]byte(s), &n); err == nil && n > 0 {
			in.UncompressedSize = n
		}
	}
	if v, err := l.View(ctx); err == nil {
		in.UIDs, in.GIDs = idSets(v.Root())
	}
	// Only strings, numbers and slices go in: Marshal cannot fail.
	b, _ := json.Marshal(in)
	return append(b, '\n')
}

// idSets collects the owners used in the layer, which the client uses to
// decide whether the layer fits a user-namespaced container.
func idSets(root *layer.Entry) (uids, gids []uint32) {
	u, g := map[uint32]bool{}, map[uint32]bool{}
	// Directories have one name each, so the walk ends; a hard-linked
	// file seen twice changes nothing.
	var walk func(e *layer.Entry)
	walk = func(e *layer.Entry) {
		u[e.UID], g[e.GID] = true, true
		for i := range e.NumChildren() {
			_, c := e.ChildAt(i)
			walk(c)
		}
	}
	walk(root)
	return sortedKeys(u), sortedKeys(g)
}

func sortedKeys(m map[uint32]bool) []uint32 {
	out := make([]uint32, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out
}
