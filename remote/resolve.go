package remote

import (
	"context"
	"fmt"
	"maps"

	"github.com/google/go-containerregistry/pkg/name"
	digest "github.com/opencontainers/go-digest"
)

// ResolveLayer fetches the manifest of ref (tag or digest; an index is
// resolved to Options.Platform) and its config, and returns the layer
// whose compressed blob digest or whose TOC digest annotation equals dgst,
// DiffID included. It returns ErrLayerNotFound (wrapped) if there is none.
// Results are cached per reference (digest references forever, tags for
// 30 seconds) and concurrent calls for one reference share a single fetch.
func (r *Resolver) ResolveLayer(ctx context.Context, ref string, dgst digest.Digest) (LayerDesc, error) {
	ld, img, i, err := r.resolve(ctx, ref, dgst)
	if err != nil {
		return LayerDesc{}, err
	}
	ids, err := r.imageDiffIDs(ctx, img)
	if err != nil {
		return LayerDesc{}, fmt.Errorf("resolve layer %s in %s: %w", dgst, ref, err)
	}
	if ids != nil {
		ld.DiffID = ids[i]
	}
	return ld, nil
}

// ResolveBlob is ResolveLayer without the config: DiffID is left empty.
// It costs one round trip less, so a caller can start reading the blob
// while ResolveLayer fetches the config (which the two share).
func (r *Resolver) ResolveBlob(ctx context.Context, ref string, dgst digest.Digest) (LayerDesc, error) {
	ld, _, _, err := r.resolve(ctx, ref, dgst)
	return ld, err
}

// resolve finds dgst among the layers of ref: the layer, its image and its
// index in the image.
func (r *Resolver) resolve(ctx context.Context, ref string, dgst digest.Digest) (LayerDesc, *imageEntry, int, error) {
	fail := func(err error) (LayerDesc, *imageEntry, int, error) { return LayerDesc{}, nil, 0, err }
	if err := dgst.Validate(); err != nil {
		return fail(fmt.Errorf("resolve layer %q in %s: %w", dgst, ref, err))
	}
	img, _, err := r.imageOf(ctx, ref)
	if err != nil {
		return fail(fmt.Errorf("resolve layer %s: %w", dgst, err))
	}
	for i, l := range img.layers {
		if l.Digest == dgst || publishes(l.Annotations, dgst) {
			l.Ref = ref
			// The cached map is shared; hand out a copy callers may modify.
			l.Annotations = maps.Clone(l.Annotations)
			return l, img, i, nil
		}
	}
	return fail(fmt.Errorf("resolve layer %s in %s: %w", dgst, ref, ErrLayerNotFound))
}

// Layers returns the layers ref's manifest lists (an index resolved to
// Options.Platform), from the cache or the registry like ResolveLayer, with
// Ref and DiffID left empty; pinned says ref names its manifest by digest,
// so that the list can never change.
func (r *Resolver) Layers(ctx context.Context, ref string) (layers []LayerDesc, pinned bool, err error) {
	img, pinned, err := r.imageOf(ctx, ref)
	if err != nil {
		return nil, false, err
	}
	layers = make([]LayerDesc, len(img.layers))
	for i, l := range img.layers {
		l.Annotations = maps.Clone(l.Annotations) // the cached map is shared
		layers[i] = l
	}
	return layers, pinned, nil
}

// imageOf returns the image ref names, and whether ref is by digest.
func (r *Resolver) imageOf(ctx context.Context, ref string) (*imageEntry, bool, error) {
	nref, err := r.parseRef(ref)
	if err != nil {
		return nil, false, err
	}
	eps, err := r.endpoints(ref)
	if err != nil {
		return nil, false, err
	}
	img, err := r.image(ctx, nref, eps)
	if err != nil {
		return nil, false, fmt.Errorf("image %s: %w", ref, err)
	}
	_, pinned := nref.(name.Digest)
	return img, pinned, nil
}

// image returns the layers of ref from the cache or the registry. The fetch
// is shared by concurrent callers and so runs detached from any one
// caller's cancellation (its attempts are bounded by RequestTimeout and
// Retries); each caller still returns as soon as its own ctx is done, and a
// fetch nobody waits for any more still fills the cache.
//
// ref is the logical reference (the cache key); eps are where it is fetched
// from, in order (see endpoints).
func (r *Resolver) image(ctx context.Context, ref name.Reference, eps []name.Reference) (*imageEntry, error) {
	key := ref.Name()
	if img, ok := r.cachedImage(key); ok {
		return img, nil
	}
	ch := r.imgSF.DoChan(key, func() (any, error) {
		if img, ok := r.cachedImage(key); ok {
			return img, nil
		}
		img, err := r.fetchImageFrom(context.WithoutCancel(ctx), eps)
		if err != nil {
			return nil, err
		}
		r.storeImage(key, ref, img)
		return img, nil
	})
	select {
	case res := <-ch:
		if res.Err != nil {
			return nil, res.Err
		}
		return res.Val.(*imageEntry), nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// publishes reports whether one of a layer's annotations has the value d:
// a client may ask for a layer by a digest its annotations publish (its
// TOC digest) as by its blob digest. Which annotation that must be is the
// layer format's business, so the caller checks it (see pool.describe).
func publishes(ann map[string]string, d digest.Digest) bool {
	for _, v := range ann {
		if v == string(d) {
			return true
		}
	}
	return false
}
