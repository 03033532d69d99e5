package remote

import (
	"context"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
	digest "github.com/opencontainers/go-digest"
)

// imageEntry is one resolved image: its layers with Ref and DiffID left
// empty (the caller's spelling and the config's diff IDs are filled in on
// the way out).
type imageEntry struct {
	layers []LayerDesc
	config v1.Descriptor
	from   name.Reference // the endpoint that served the manifest, for the config
	// subject describes the image manifest itself (the platform's, for an
	// index): the subject of artifacts attached to the image.
	subject v1.Descriptor
	expires time.Time // zero: never (digest references are immutable)

	// The platform image's manifest as served, and the index the
	// reference named if it named one (nil otherwise): the image store
	// keeps both, as containers/image does.
	manifest  []byte
	mediaType types.MediaType
	index     []byte

	// The config's diff IDs, once fetched (guarded by Resolver.imgMu);
	// diffIDsKnown with nil diffIDs: the image does not say.
	diffIDsKnown bool
	diffIDs      []digest.Digest
}

func (r *Resolver) cachedImage(key string) (*imageEntry, bool) {
	r.imgMu.Lock()
	defer r.imgMu.Unlock()
	e, ok := r.imgs[key]
	if !ok {
		return nil, false
	}
	if !e.expires.IsZero() && time.Now().After(e.expires) {
		delete(r.imgs, key)
		return nil, false
	}
	return e, true
}

func (r *Resolver) storeImage(key string, ref name.Reference, e *imageEntry) {
	if _, byDigest := ref.(name.Digest); !byDigest {
		e.expires = time.Now().Add(r.s.tagTTL)
	}
	r.imgMu.Lock()
	r.imgs[key] = e
	r.imgMu.Unlock()
}

// imageDiffIDs returns the diff IDs of e's layers (nil if the image does
// not give them), fetching the config once. Like the manifest fetch, the
// config fetch is shared and detached from any one caller's cancellation.
// A failed fetch is not remembered: the next caller tries again.
func (r *Resolver) imageDiffIDs(ctx context.Context, e *imageEntry) ([]digest.Digest, error) {
	r.imgMu.Lock()
	if e.diffIDsKnown {
		ids := e.diffIDs
		r.imgMu.Unlock()
		return ids, nil
	}
	r.imgMu.Unlock()
	ch := r.cfgSF.DoChan(e.config.Digest.String(), func() (any, error) {
		log := r.s.log.WithField("ref", e.from.String())
		hashes, err := r.diffIDs(context.WithoutCancel(ctx), e.from, e.config, log)
		if err != nil {
			return nil, err
		}
		var ids []digest.Digest
		switch {
		case hashes == nil:
		case len(hashes) != len(e.layers):
			log.Warnf("config lists %d diff_ids for %d layers; diff IDs unknown", len(hashes), len(e.layers))
		default:
			ids = make([]digest.Digest, len(hashes))
			for i, h := range hashes {
				ids[i] = digest.Digest(h.String())
			}
		}
		return ids, nil
	})
	select {
	case res := <-ch:
		if res.Err != nil {
			return nil, res.Err
		}
		ids := res.Val.([]digest.Digest)
		r.imgMu.Lock()
		e.diffIDs, e.diffIDsKnown = ids, true
		r.imgMu.Unlock()
		return ids, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}
