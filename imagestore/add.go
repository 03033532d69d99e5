package imagestore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	digest "github.com/opencontainers/go-digest"
	"github.com/sirupsen/logrus"
	"golang.org/x/sync/errgroup"

	"github.com/poolfs/poolfs/alspath"
	"github.com/poolfs/poolfs/layer"
	"github.com/poolfs/poolfs/pool"
	"github.com/poolfs/poolfs/remote"
)

// Options configure Open.
type Options struct {
	// Pool looks the images' layers up; they are opened through it, and
	// served from it to podman.
	Pool *pool.Pool
	// Resolver resolves image references (platform, credentials and
	// registries.conf are its own).
	Resolver *remote.Resolver
	Log      *logrus.Entry
}

// Daemon is the image store of a running daemon: Store plus what adding
// and syncing images needs.
type Daemon struct {
	*Store
	pool     *pool.Pool
	resolver *remote.Resolver
}

// Open opens (creating if missing) the image store of the ALS root whose
// pool is mounted at <root>/.pool.
func Open(root string, o Options) (*Daemon, error) {
	s, err := OpenStore(root, o.Log)
	if err != nil {
		return nil, err
	}
	return NewDaemon(s, o), nil
}

// OpenStore opens the store's files alone, which needs no pool: a pool
// can be given the store's Keeps at construction, and the Daemon made
// with NewDaemon once the pool exists.
func OpenStore(root string, log *logrus.Entry) (*Store, error) {
	return open(filepath.Join(root, DirName), alspath.MountDir, log)
}

// NewDaemon adds what adding and syncing images needs to s (o.Log is
// not used: s has its logger).
func NewDaemon(s *Store, o Options) *Daemon {
	return &Daemon{Store: s, pool: o.Pool, resolver: o.Resolver}
}

// Progress reports how far adding one image got.
type Progress struct {
	Ref      string `json:"ref"`
	Resolved int    `json:"resolved"` // layers looked up so far
	Total    int    `json:"total"`
}

// lookups bounds the layers of one image looked up at once.
const lookups = 4

// Add resolves ref, looks each of its layers up through the pool and puts
// the image in the store under ref's name. Every layer must be in a format
// the pool serves lazily (eStargz, zstd:chunked): it serves nothing else. progress (may be nil) is called as layers
// are resolved.
func (d *Daemon) Add(ctx context.Context, ref string, progress func(Progress)) (Image, error) {
	// The layers' profiles are looked for beside the manifest, as a
	// layer's first lookup does.
	d.pool.ExpectProfiles(ref)
	img, err := d.resolver.ResolveImage(ctx, ref)
	if err != nil {
		return Image{}, err
	}
	return d.add(ctx, img, progress)
}

func (d *Daemon) add(ctx context.Context, img remote.Image, progress func(Progress)) (Image, error) {
	log := d.log.WithFields(logrus.Fields{"ref": img.Name, "manifest": img.ManifestDigest})
	start := time.Now()
	report := func(n int) {
		if progress != nil {
			progress(Progress{Ref: img.Name, Resolved: n, Total: len(img.Layers)})
		}
	}
	report(0)
	sizes := make([]int64, len(img.Layers))
	formats := make([]string, len(img.Layers))
	errs := make([]error, len(img.Layers))
	var (
		mu   sync.Mutex
		done int
	)
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(lookups)
	for i, ld := range img.Layers {
		g.Go(func() error {
			l, err := d.pool.Get(gctx, pool.LayerKey{Ref: ld.Ref, Digest: ld.Digest})
			if errors.Is(err, layer.ErrNoFormat) {
				// The details (which footer failed how) are in the
				// daemon's log; the user needs the layer.
				errs[i] = fmt.Errorf("layer %d (%s) of %s is not eStargz or zstd:chunked, the only formats the image store serves (convert the image, e.g. with poolfs optimize): %w",
					i+1, ld.Digest, img.Name, layer.ErrNoFormat)
				return errs[i]
			}
			if err != nil {
				errs[i] = fmt.Errorf("looking layer %d (%s) of %s up through the pool: %w", i+1, ld.Digest, img.Name, err)
				return errs[i]
			}
			formats[i] = l.Format()
			if sizes[i], err = uncompressedSize(gctx, l); err != nil {
				errs[i] = fmt.Errorf("layer %d (%s) of %s: sizing its tree: %w", i+1, ld.Digest, img.Name, err)
				return errs[i]
			}
			mu.Lock()
			done++
			report(done)
			mu.Unlock()
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		// The first failing layer, whichever failed first: the same
		// image gives the same answer every time.
		for _, e := range errs {
			if e != nil && !errors.Is(e, context.Canceled) {
				return Image{}, e
			}
		}
		return Image{}, err
	}
	im, err := d.newImage(img, sizes, formats)
	if err != nil {
		return Image{}, err
	}
	out, err := d.put(ctx, im)
	if err != nil {
		return Image{}, err
	}
	log.WithFields(logrus.Fields{"image": out.ID, "layers": len(img.Layers), "elapsed": time.Since(start).Round(time.Millisecond)}).Info("image added to the image store")
	return out, nil
}

// uncompressedSizeAnnotation is where stargz converters record the tar's
// size, which is what containers/storage records for a pulled layer.
const uncompressedSizeAnnotation = "io.containers.estargz.uncompressed-size"

// uncompressedSize is the layer's diff-size: the converter's record of the
// tar size, else the sum of the files' sizes (what the overlay driver's
// DiffSize would count).
func uncompressedSize(ctx context.Context, l *pool.Layer) (int64, error) {
	if s, ok := l.Desc.Annotations[uncompressedSizeAnnotation]; ok {
		var n int64
		if err := json.Unmarshal([]byte(s), &n); err == nil && n > 0 {
			return n, nil
		}
	}
	v, err := l.View(ctx)
	if err != nil {
		return 0, err
	}
	var sum int64
	seen := map[uint32]bool{} // hard links: one entry under several names
	var walk func(e *layer.Entry)
	walk = func(e *layer.Entry) {
		if seen[e.ID()] {
			return
		}
		seen[e.ID()] = true
		if e.Type == layer.TypeReg {
			sum += e.Size
		}
		for i := range e.NumChildren() {
			_, c := e.ChildAt(i)
			walk(c)
		}
	}
	walk(v.Root())
	return sum, nil
}

// newImage builds the records of img as containers/image would on a pull.
func (d *Daemon) newImage(img remote.Image, sizes []int64, formats []string) (newImage, error) {
	storeName, err := StorageName(img.Name)
	if err != nil {
		return newImage{}, err
	}
	now := time.Now().UTC()
	var im newImage
	parent := ""
	for i, ld := range img.Layers {
		if ld.DiffID == "" {
			return newImage{}, fmt.Errorf("layer %d (%s) of %s: the config gives no diff ID", i+1, ld.Digest, img.Name)
		}
		id := layerID(parent, ld.DiffID)
		im.layers = append(im.layers, layerRecord{
			ID:                 id,
			Parent:             parent,
			Created:            now,
			CompressedDigest:   ld.Digest,
			CompressedSize:     ld.Size,
			UncompressedDigest: ld.DiffID,
			UncompressedSize:   sizes[i],
			CompressionType:    compressionOf(formats[i]),
			Flags:              map[string]any{flagRef: ld.Ref},
		})
		im.targets = append(im.targets, diffTarget(d.poolDir, ld.Ref, ld.Digest))
		parent = id
	}
	im.data = []bigData{
		{key: img.ConfigDigest.String(), data: img.Config, digest: img.ConfigDigest},
		{key: manifestKeyFor(img.ManifestDigest), data: img.Manifest, digest: img.ManifestDigest},
		{key: manifestKey, data: img.Manifest, digest: img.ManifestDigest},
	}
	if img.Index != nil {
		im.data = append(im.data, bigData{key: manifestKeyFor(img.IndexDigest), data: img.Index, digest: img.IndexDigest})
	}
	rec := imageRecord{
		ID:             img.ConfigDigest.Encoded(),
		Digest:         img.ManifestDigest,
		Names:          []string{storeName},
		TopLayer:       parent,
		BigDataSizes:   map[string]int64{},
		BigDataDigests: map[string]digest.Digest{},
		Created:        configCreated(img.Config, now),
		Flags:          map[string]any{flagDigested: img.Digested},
	}
	for _, it := range im.data {
		rec.BigDataNames = append(rec.BigDataNames, it.key)
		rec.BigDataSizes[it.key] = int64(len(it.data))
		rec.BigDataDigests[it.key] = it.digest
	}
	im.rec = rec
	return im, nil
}

func configCreated(cfg []byte, def time.Time) time.Time {
	var c struct {
		Created *time.Time `json:"created"`
	}
	if err := json.Unmarshal(cfg, &c); err != nil || c.Created == nil {
		return def
	}
	return c.Created.UTC()
}

// StorageName is ref as containers/image names a pulled image: fully
// qualified, Docker Hub as docker.io, a tag or a digest (":latest" added
// to a reference that has neither).
func StorageName(ref string) (string, error) {
	r, err := name.ParseReference(ref)
	if err != nil {
		return "", fmt.Errorf("%q is not an image reference: %w", ref, err)
	}
	repo := r.Context().RegistryStr() + "/" + r.Context().RepositoryStr()
	if r.Context().RegistryStr() == name.DefaultRegistry {
		repo = "docker.io/" + r.Context().RepositoryStr()
	}
	if d, ok := r.(name.Digest); ok {
		return repo + "@" + d.DigestStr(), nil
	}
	return repo + ":" + r.Identifier(), nil
}

// Remove takes each of refs out of the store: a name (tag or digest
// reference) is taken off its image, which goes when it has no name left;
// an image ID (or a unique prefix of at least 12 characters) or
// repository@manifest digest removes the image. It fails, removing
// nothing, if a ref names no image.
func (d *Daemon) Remove(ctx context.Context, refs []string) ([]Image, error) {
	type matcher func(imageRecord) (string, bool)
	var ms []matcher
	for _, ref := range refs {
		m, err := d.matcher(ref)
		if err != nil {
			return nil, err
		}
		ms = append(ms, m)
	}
	gone, err := d.remove(ctx, func(im imageRecord) (string, bool) {
		for _, m := range ms {
			if n, ok := m(im); ok {
				return n, true
			}
		}
		return "", false
	})
	if err != nil {
		return nil, err
	}
	for _, im := range gone {
		d.log.WithFields(logrus.Fields{"image": im.ID, "names": strings.Join(im.Names, ",")}).Info("image removed from the image store")
	}
	return gone, nil
}

func (d *Daemon) matcher(ref string) (func(imageRecord) (string, bool), error) {
	s := d.Store
	s.mu.Lock()
	defer s.mu.Unlock()
	byID := func(id string) func(imageRecord) (string, bool) {
		return func(im imageRecord) (string, bool) { return "", im.ID == id }
	}
	ref = strings.TrimPrefix(ref, "sha256:")
	if len(ref) >= 12 && len(ref) <= 64 && strings.Trim(ref, "0123456789abcdef") == "" {
		var ids []string
		for _, im := range s.images {
			if strings.HasPrefix(im.ID, ref) {
				ids = append(ids, im.ID)
			}
		}
		if len(ids) == 1 {
			return byID(ids[0]), nil
		}
		if len(ids) > 1 {
			return nil, fmt.Errorf("%s names more than one image", ref)
		}
	}
	n, err := StorageName(ref)
	if err != nil {
		return nil, err
	}
	for _, im := range s.images {
		if slices.Contains(im.Names, n) {
			return func(im imageRecord) (string, bool) { return n, slices.Contains(im.Names, n) }, nil
		}
	}
	for _, im := range s.images {
		if dg, _ := im.Flags[flagDigested].(string); dg != "" {
			if dn, err := StorageName(dg); err == nil && dn == n {
				return byID(im.ID), nil
			}
		}
	}
	return nil, fmt.Errorf("no image %s in the image store", ref)
}

// Synced is what Sync did for one tag.
type Synced struct {
	Name string        `json:"name"`
	From digest.Digest `json:"from"` // manifest digest before
	To   digest.Digest `json:"to"`   // after; equal to From if the tag had not moved
	Err  string        `json:"error,omitempty"`
}

// Sync resolves every tag in the store again; a tag that moved is put on
// the image it names now (added like Add does), and the image it named
// before stays, under its other names or none, until removed.
func (d *Daemon) Sync(ctx context.Context, progress func(Progress)) ([]Synced, error) {
	type tagged struct {
		name string
		from digest.Digest
	}
	var tags []tagged
	d.mu.Lock()
	for _, im := range d.images {
		for _, n := range im.Names {
			if !strings.Contains(n, "@") {
				tags = append(tags, tagged{n, im.Digest})
			}
		}
	}
	d.mu.Unlock()
	var out []Synced
	var errs []error
	for _, t := range tags {
		res := Synced{Name: t.name, From: t.from, To: t.from}
		img, err := d.resolver.ResolveImage(ctx, t.name)
		if err == nil && img.ManifestDigest != t.from {
			_, err = d.add(ctx, img, progress)
			if err == nil {
				res.To = img.ManifestDigest
				d.log.WithFields(logrus.Fields{"ref": t.name, "from": t.from, "to": img.ManifestDigest}).Info("tag moved; the image store follows it")
			}
		}
		if err != nil {
			res.Err = err.Error()
			errs = append(errs, err)
		}
		out = append(out, res)
	}
	return out, errors.Join(errs...)
}

// OpenLayers looks every layer in the store up through the pool, so that
// after a restart the pool serves them (from its metadata store, without
// the registry) before podman asks. Failures are logged: a layer the pool
// cannot open now is opened on podman's first lookup, or fails it then.
func (d *Daemon) OpenLayers(ctx context.Context) {
	d.mu.Lock()
	layers := slices.Clone(d.layers)
	d.mu.Unlock()
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(lookups)
	for _, l := range layers {
		ref, _ := l.Flags[flagRef].(string)
		if ref == "" {
			continue
		}
		g.Go(func() error {
			if _, err := d.pool.Get(gctx, pool.LayerKey{Ref: ref, Digest: l.CompressedDigest}); err != nil {
				d.log.WithFields(logrus.Fields{"ref": ref, "digest": l.CompressedDigest}).WithError(err).Warn("opening an image store layer failed")
			}
			return nil
		})
	}
	_ = g.Wait()
}
