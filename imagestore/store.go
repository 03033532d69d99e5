// Package imagestore keeps a containers/storage additional image store at
// <ROOT>/images whose layers are the pool's: podman, given
// `additionalimagestores = ["<ROOT>/images"]`, lists its images and runs
// them without pulling anything, and the files its containers read come
// lazily from the registry through the pool.
//
// The store is read-only to podman; the daemon is its only writer. Every
// update takes the store's lock files the way containers/storage does and
// replaces images.json and layers.json by rename, so podman sees the store
// before or after an update, and a crash leaves one or the other.
package imagestore

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	digest "github.com/opencontainers/go-digest"
	"github.com/sirupsen/logrus"
)

// DirName is the store's directory under the ALS root.
const DirName = "images"

// Store is the image store at <ROOT>/images.
type Store struct {
	dir     string // <ROOT>/images
	poolDir string // the pool's mount, relative to ROOT
	log     *logrus.Entry

	mu     sync.Mutex // one update at a time; guards images and layers
	images []imageRecord
	layers []layerRecord

	// kept is the set of blob digests of the layers in layers.json, for
	// Keeps, which the pool may call on any goroutine.
	kept atomic.Pointer[map[digest.Digest]bool]
}

// open reads the store at dir (creating it if missing) whose layers link
// into the pool mounted at <dir>/../<poolDir>.
func open(dir, poolDir string, log *logrus.Entry) (*Store, error) {
	if log == nil {
		log = logrus.NewEntry(logrus.StandardLogger())
	}
	s := &Store{dir: dir, poolDir: poolDir, log: log}
	for _, d := range []string{s.path(imagesDir), s.path(layersDir), s.path(driver, linkDir)} {
		// 0700 like containers/storage's own directories: podman runs as
		// root, and nobody else has business reading image configs.
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, fmt.Errorf("creating image store: %w", err)
		}
	}
	for _, d := range []string{s.path(imagesDir), s.path(layersDir), s.path(driver), s.path(driver, linkDir)} {
		if err := removeTemps(d); err != nil {
			return nil, err
		}
	}
	for _, l := range []string{s.path(imagesDir, imagesLock), s.path(layersDir, layersLock)} {
		if err := createLockFile(l); err != nil {
			return nil, err
		}
	}
	if err := readJSON(s.path(imagesDir, imagesJSON), &s.images); err != nil {
		return nil, err
	}
	if err := readJSON(s.path(layersDir, layersJSON), &s.layers); err != nil {
		return nil, err
	}
	s.setKept()
	return s, nil
}

func (s *Store) path(elem ...string) string {
	return filepath.Join(append([]string{s.dir}, elem...)...)
}

// Dir is the store's directory, what storage.conf's additionalimagestores
// names.
func (s *Store) Dir() string { return s.dir }

// Keeps tells whether a layer, by compressed blob digest, belongs to an
// image in the store: the pool must keep such a layer (and its tree)
// servable even when no container has used it for a while, since podman
// may start one from the store at any time without asking the pool first.
func (s *Store) Keeps(blob digest.Digest) bool {
	if m := s.kept.Load(); m != nil {
		return (*m)[blob]
	}
	return false
}

func (s *Store) setKept() {
	m := make(map[digest.Digest]bool, len(s.layers))
	for _, l := range s.layers {
		m[l.CompressedDigest] = true
	}
	s.kept.Store(&m)
}

// Image is one image in the store as `poolfs image ls` shows it.
type Image struct {
	ID       string        `json:"id"`
	Names    []string      `json:"names"`
	Digested string        `json:"digested"` // repository@manifest digest
	Digest   digest.Digest `json:"digest"`   // manifest digest
	Layers   int           `json:"layers"`
	Size     int64         `json:"size"` // uncompressed layers
	Created  time.Time     `json:"created"`
}

// List returns the store's images, oldest first.
func (s *Store) List() []Image {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Image, 0, len(s.images))
	for _, im := range s.images {
		out = append(out, s.describe(im))
	}
	return out
}

func (s *Store) describe(im imageRecord) Image {
	out := Image{ID: im.ID, Names: slices.Clone(im.Names), Digest: im.Digest, Created: im.Created}
	if out.Names == nil {
		out.Names = []string{}
	}
	if d, ok := im.Flags[flagDigested].(string); ok {
		out.Digested = d
	}
	for id := im.TopLayer; id != ""; {
		l := findLayer(s.layers, id)
		if l == nil {
			break
		}
		out.Layers++
		out.Size += l.UncompressedSize
		id = l.Parent
	}
	return out
}

func findLayer(ls []layerRecord, id string) *layerRecord {
	for i := range ls {
		if ls[i].ID == id {
			return &ls[i]
		}
	}
	return nil
}

func findImage(is []imageRecord, id string) int {
	for i := range is {
		if is[i].ID == id {
			return i
		}
	}
	return -1
}

// bigData is one big-data item of an image.
type bigData struct {
	key    string
	data   []byte
	digest digest.Digest
}

// newImage is an image to add: its record, big data and layers (base
// first), with the files each layer needs.
type newImage struct {
	rec     imageRecord
	data    []bigData
	layers  []layerRecord
	targets []string // per layer: where its diff links
}

// put adds im to the store under its names (taking each from any other
// image that has it: a tag that moved), or adds the names to the image if
// it is there already. Files first, then the records.
func (s *Store) put(ctx context.Context, im newImage) (Image, error) {
	// The files too are written under the lock: two adds may share
	// layers, and a commit removes the big data of images it drops.
	// Writing them takes milliseconds; resolving the image, before, is
	// the slow part.
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, l := range im.layers {
		if err := s.writeLayerDir(l, im.layers[:i], im.targets[i]); err != nil {
			return Image{}, err
		}
	}
	if err := s.writeBigData(im.rec.ID, im.data); err != nil {
		return Image{}, err
	}
	images := cloneImages(s.images)
	for i := range images {
		if images[i].ID != im.rec.ID {
			images[i].Names = slices.DeleteFunc(images[i].Names, func(n string) bool { return slices.Contains(im.rec.Names, n) })
		}
	}
	if i := findImage(images, im.rec.ID); i >= 0 {
		for _, n := range im.rec.Names {
			if !slices.Contains(images[i].Names, n) {
				images[i].Names = append(images[i].Names, n)
			}
		}
		// The records describe the same config and layers; only the
		// manifest may differ (another push of the same content).
		for _, d := range im.data {
			if !slices.Contains(images[i].BigDataNames, d.key) {
				images[i].BigDataNames = append(images[i].BigDataNames, d.key)
				images[i].BigDataSizes[d.key] = int64(len(d.data))
				images[i].BigDataDigests[d.key] = d.digest
			}
		}
	} else {
		images = append(images, im.rec)
	}
	layers := slices.Clone(s.layers)
	for _, l := range im.layers {
		if findLayer(layers, l.ID) == nil {
			layers = append(layers, l)
		}
	}
	if err := s.commit(ctx, images, layers); err != nil {
		return Image{}, err
	}
	return s.describe(s.images[findImage(s.images, im.rec.ID)]), nil
}

// remove drops the name from its image, or the whole image if name is its
// ID or its last name. It returns the image as it was.
func (s *Store) remove(ctx context.Context, match func(imageRecord) (byName string, ok bool)) ([]Image, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var (
		gone   []Image
		images []imageRecord
	)
	for _, im := range cloneImages(s.images) {
		name, ok := match(im)
		if !ok {
			images = append(images, im)
			continue
		}
		gone = append(gone, s.describe(im))
		if name != "" && len(im.Names) > 1 {
			im.Names = slices.DeleteFunc(im.Names, func(n string) bool { return n == name })
			images = append(images, im)
		}
	}
	if len(gone) == 0 {
		return nil, nil
	}
	if err := s.commit(ctx, images, s.layers); err != nil {
		return nil, err
	}
	return gone, nil
}

// commit makes images the store's images, with the layers of layers they
// use. Under both locks: layers.json gains any new layer before
// images.json names it, and loses unused ones only after images.json no
// longer does, so at every point (and after a crash at any point) each
// image's layers are in layers.json.
func (s *Store) commit(ctx context.Context, images []imageRecord, layers []layerRecord) error {
	used := usedLayers(images, layers)
	union := slices.Clone(s.layers)
	for _, l := range used {
		if findLayer(union, l.ID) == nil {
			union = append(union, l)
		}
	}
	lockL, lockI, err := lockBoth(ctx, s.path(layersDir, layersLock), s.path(imagesDir, imagesLock))
	if err != nil {
		return err
	}
	defer lockI.unlock()
	defer lockL.unlock()
	writeLayers := func(ls []layerRecord) error {
		if err := writeJSON(s.path(layersDir, layersJSON), nonNil(ls)); err != nil {
			return err
		}
		return lockL.touch()
	}
	if len(union) != len(s.layers) {
		if err := writeLayers(union); err != nil {
			return err
		}
	}
	if err := writeJSON(s.path(imagesDir, imagesJSON), nonNil(images)); err != nil {
		return err
	}
	if err := lockI.touch(); err != nil {
		return err
	}
	s.images = images
	s.layers = union
	if len(used) != len(union) {
		if err := writeLayers(used); err != nil {
			return err
		}
		s.layers = used
	}
	s.setKept()
	s.removeUnusedBigData()
	return nil
}

// usedLayers returns the layers images use, in the order of layers.
func usedLayers(images []imageRecord, layers []layerRecord) []layerRecord {
	need := map[string]bool{}
	for _, im := range images {
		for id := im.TopLayer; id != "" && !need[id]; {
			need[id] = true
			l := findLayer(layers, id)
			if l == nil {
				break
			}
			id = l.Parent
		}
	}
	var out []layerRecord
	for _, l := range layers {
		if need[l.ID] {
			out = append(out, l)
		}
	}
	return out
}

// nonNil makes an empty list marshal as [] (containers/storage writes
// that for an empty store).
func nonNil[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}

func cloneImages(is []imageRecord) []imageRecord {
	out := make([]imageRecord, len(is))
	for i, im := range is {
		im.Names = slices.Clone(im.Names)
		im.BigDataNames = slices.Clone(im.BigDataNames)
		im.BigDataSizes = cloneMap(im.BigDataSizes)
		im.BigDataDigests = cloneMap(im.BigDataDigests)
		out[i] = im
	}
	return out
}

func cloneMap[K comparable, V any](m map[K]V) map[K]V {
	out := make(map[K]V, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

// removeUnusedBigData removes the big-data directories of images no
// longer in the store. A layer's directory stays: it is a few hundred
// bytes, and a container podman made from a removed image still names it
// in its lower file.
func (s *Store) removeUnusedBigData() {
	ents, err := os.ReadDir(s.path(imagesDir))
	if err != nil {
		s.log.WithError(err).Warn("listing image data directories failed")
		return
	}
	for _, e := range ents {
		if !e.IsDir() || strings.HasPrefix(e.Name(), tmpPrefix) || findImage(s.images, e.Name()) >= 0 {
			continue
		}
		if err := os.RemoveAll(s.path(imagesDir, e.Name())); err != nil {
			s.log.WithError(err).WithField("image", e.Name()).Warn("removing the data of a removed image failed")
		}
	}
}

// writeLayerDir makes overlay/<ID> (diff, link, lower) for l, whose
// parents base first are below, and its l/ link. An existing directory is
// kept: layer IDs name content.
func (s *Store) writeLayerDir(l layerRecord, below []layerRecord, target string) error {
	dir := s.path(driver, l.ID)
	if _, err := os.Lstat(filepath.Join(dir, "link")); err != nil {
		tmp := s.path(driver, tmpPrefix+l.ID)
		if err := os.RemoveAll(tmp); err != nil {
			return fmt.Errorf("writing layer %s: %w", l.ID, err)
		}
		if err := os.Mkdir(tmp, 0o700); err != nil {
			return fmt.Errorf("writing layer %s: %w", l.ID, err)
		}
		if err := os.Symlink(target, filepath.Join(tmp, "diff")); err != nil {
			return fmt.Errorf("writing layer %s: %w", l.ID, err)
		}
		if err := os.WriteFile(filepath.Join(tmp, "link"), []byte(shortName(l.ID)), 0o644); err != nil {
			return fmt.Errorf("writing layer %s: %w", l.ID, err)
		}
		if len(below) > 0 {
			// The overlay driver's lower file: the parent first.
			lower := make([]string, 0, len(below))
			for i := len(below) - 1; i >= 0; i-- {
				lower = append(lower, linkDir+"/"+shortName(below[i].ID))
			}
			if err := os.WriteFile(filepath.Join(tmp, "lower"), []byte(strings.Join(lower, ":")), 0o644); err != nil {
				return fmt.Errorf("writing layer %s: %w", l.ID, err)
			}
		}
		if err := os.RemoveAll(dir); err != nil {
			return fmt.Errorf("writing layer %s: %w", l.ID, err)
		}
		if err := os.Rename(tmp, dir); err != nil {
			return fmt.Errorf("writing layer %s: %w", l.ID, err)
		}
	}
	return symlinkAtomic("../"+l.ID+"/diff", s.path(driver, linkDir, shortName(l.ID)))
}

// writeBigData writes the items of image id that are not there yet.
func (s *Store) writeBigData(id string, items []bigData) error {
	dir := s.path(imagesDir, id)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("writing image %s: %w", id, err)
	}
	for _, it := range items {
		p := filepath.Join(dir, bigDataFile(it.key))
		if _, err := os.Stat(p); err == nil {
			continue
		} else if !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("writing image %s: %w", id, err)
		}
		if err := writeFileAtomic(p, it.data, 0o600); err != nil {
			return err
		}
	}
	return nil
}
