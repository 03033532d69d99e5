package remote

import (
	"time"

	"github.com/google/go-containerregistry/pkg/name"
)

// imageEntry is one resolved image: its layers with Ref left empty (the
// caller's spelling is filled in on the way out).
type imageEntry struct {
	layers  []LayerDesc
	expires time.Time // zero: never (digest references are immutable)
}

func (r *Resolver) cachedImage(key string) ([]LayerDesc, bool) {
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
	return e.layers, true
}

func (r *Resolver) storeImage(key string, ref name.Reference, layers []LayerDesc) {
	e := &imageEntry{layers: layers}
	if _, byDigest := ref.(name.Digest); !byDigest {
		e.expires = time.Now().Add(r.s.tagTTL)
	}
	r.imgMu.Lock()
	r.imgs[key] = e
	r.imgMu.Unlock()
}
