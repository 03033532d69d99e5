package remote

import (
	"context"
	"fmt"
	"maps"

	"github.com/google/go-containerregistry/pkg/name"
	digest "github.com/opencontainers/go-digest"
)

// Image is one platform image of a reference, with what a containers/storage
// image record keeps of it: manifests and config byte for byte.
type Image struct {
	// Name is the reference as asked for, normalised (tag or digest).
	Name string
	// Digested is the image's repository at ManifestDigest
	// ("repo@sha256:..."): it names this image for good, whatever a tag
	// does later. Layers' Ref is Digested.
	Digested       string
	ManifestDigest digest.Digest
	Manifest       []byte
	MediaType      string
	// IndexDigest and Index are the index the reference named, when it
	// named one ("" and nil otherwise).
	IndexDigest  digest.Digest
	Index        []byte
	ConfigDigest digest.Digest
	Config       []byte
	// Layers in manifest order, DiffID filled in from the config.
	Layers []LayerDesc
}

// ResolveImage fetches ref's manifest (an index resolved to the
// configured platform, as ResolveLayer does) and config, from the
// registry: a tag is looked up afresh, not taken from the resolver's
// cache, and the answer replaces the cached one.
func (r *Resolver) ResolveImage(ctx context.Context, ref string) (Image, error) {
	nref, err := r.parseRef(ref)
	if err != nil {
		return Image{}, fmt.Errorf("resolve image: %w", err)
	}
	eps, err := r.endpoints(ref)
	if err != nil {
		return Image{}, fmt.Errorf("resolve image %s: %w", ref, err)
	}
	e, err := r.fetchImageFrom(ctx, eps)
	if err != nil {
		return Image{}, fmt.Errorf("resolve image %s: %w", ref, err)
	}
	r.storeImage(nref.Name(), nref, e)
	log := r.s.log.WithField("ref", nref.String())
	cfg, err := r.configBytes(ctx, e.from, e.config, log)
	if err != nil {
		return Image{}, fmt.Errorf("resolve image %s: %w", ref, err)
	}
	cfgDigest := digest.Digest(e.config.Digest.String())
	hashes := parseDiffIDs(cfg, cfgDigest, log)
	if len(hashes) != len(e.layers) {
		return Image{}, fmt.Errorf("resolve image %s: config %s lists %d diff_ids for %d layers", ref, cfgDigest, len(hashes), len(e.layers))
	}
	img := Image{
		Name:           nref.Name(),
		ManifestDigest: digest.FromBytes(e.manifest),
		Manifest:       e.manifest,
		MediaType:      string(e.mediaType),
		Index:          e.index,
		ConfigDigest:   cfgDigest,
		Config:         cfg,
	}
	if e.index != nil {
		img.IndexDigest = digest.FromBytes(e.index)
	}
	img.Digested = nref.Context().Digest(img.ManifestDigest.String()).Name()
	for i, l := range e.layers {
		l.Ref = img.Digested
		l.Annotations = maps.Clone(l.Annotations)
		l.DiffID = digest.Digest(hashes[i].String())
		img.Layers = append(img.Layers, l)
	}
	// The digested reference is immutable: cache it like any digest
	// lookup (with its diff IDs), so the pool opens the layers without
	// asking the registry again.
	if dref, err := name.NewDigest(img.Digested); err == nil {
		de := &imageEntry{layers: e.layers, config: e.config, from: e.from, subject: e.subject, manifest: e.manifest, mediaType: e.mediaType, diffIDsKnown: true}
		for _, l := range img.Layers {
			de.diffIDs = append(de.diffIDs, l.DiffID)
		}
		r.storeImage(dref.Name(), dref, de)
	}
	return img, nil
}
