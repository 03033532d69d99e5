package pool

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/poolfs/poolfs/layer"
	"github.com/poolfs/poolfs/meta"
	"github.com/poolfs/poolfs/remote"
)

// A layer is served under a reference only if that reference's manifest
// lists it, as a registry serves a blob only from a repository that holds
// it: an open layer is not handed out under any other name. What each
// reference's manifest lists is fetched once and kept, in memory and in the
// metadata store, so a restart, and images that share base layers, cost no
// extra request.
//
// A reference by digest names a manifest that never changes: its list is
// kept for good. A tag moves: its list is trusted to serve the layers it
// has for DefaultTagRecheck after it was fetched, then fetched again at the
// next lookup under the tag that has to decide (a new (tag, layer) pair, or
// any after a restart); a layer the tag no longer lists is refused from
// then on. A layer the list does not have is asked for again at once (the
// resolver keeps a tag's manifest for 30 s), as the tag may have moved to
// an image that has it. If the registry
// cannot be reached for that, the old list keeps serving (with a warning),
// unless the registry answered that the image is gone or not ours to read.
// Within one daemon's life a (reference, layer) directory already looked up
// stays: its node was made when the manifest listed the layer.

// DefaultTagRecheck is how long what a tag's manifest lists is trusted.
// Podman fetches a tag's manifest itself at every pull and then asks for the
// layers it lists, so a fresh pull never asks for a layer the tag dropped;
// the recheck bounds how long anything else (an image pulled before the tag
// moved, a hand-made path) is served under the tag, at the cost of one
// manifest request per tag and hour, and only on a lookup the pool has not
// answered before.
const DefaultTagRecheck = time.Hour

// ErrNotListed says the reference's manifest does not list the layer.
var ErrNotListed = errors.New("layer not listed by the reference's manifest")

// refLister is implemented by resolvers that can list a reference's layers
// (*remote.Resolver); with others the pool does not check references.
type refLister interface {
	Layers(ctx context.Context, ref string) (layers []remote.LayerDesc, pinned bool, err error)
}

// Option sets up a Pool at construction (see New).
type Option func(*Pool)

// WithTagRecheck sets how long what a tag's manifest lists is trusted
// (default DefaultTagRecheck; see ErrNotListed).
func WithTagRecheck(d time.Duration) Option { return func(p *Pool) { p.tagRecheck = d } }

// listed returns nil if key's reference lists key's layer, ErrNotListed
// (wrapped) if not, or why it could not tell.
func (p *Pool) listed(ctx context.Context, key LayerKey) error {
	lister, ok := p.resolver.(refLister)
	if !ok {
		return nil
	}
	m, known := p.knownManifest(key.Ref)
	ask := !known || !p.fresh(m) && !p.recheckFailedRecently(key.Ref)
	if known && !ask && !m.Pinned && !slices.Contains(m.Layers, key.Digest) {
		// The tag may have moved to an image that has the layer (podman
		// pulling the new image asks for it): look again, through the
		// resolver's short cache of tags, before refusing.
		ask = !p.recheckFailedRecently(key.Ref)
	}
	if ask {
		v, err, _ := p.listing.Do(key.Ref, func() (any, error) {
			ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), openTimeout)
			defer cancel()
			return p.fetchManifest(ctx, lister, key.Ref)
		})
		switch {
		case err == nil:
			m = v.(meta.Manifest)
		case known && !gone(err):
			p.mu.Lock()
			p.recheckFailed[key.Ref] = time.Now()
			p.mu.Unlock()
			p.log.WithError(err).WithFields(logrus.Fields{"ref": key.Ref, "fetched_at": m.FetchedAt}).
				Warn("cannot recheck what the tag lists; trusting what it listed before")
		default:
			return fmt.Errorf("checking that %s lists layer %s: %w", key.Ref, key.Digest, err)
		}
	}
	if !slices.Contains(m.Layers, key.Digest) {
		return fmt.Errorf("layer %s under %s (manifest fetched %s): %w", key.Digest, key.Ref, m.FetchedAt.UTC().Format(time.RFC3339), ErrNotListed)
	}
	return nil
}

// gone says the registry answered that the image is not there, or not
// ours to read: a list kept from before must not outlive that.
func gone(err error) bool {
	var se *remote.StatusError
	if !errors.As(err, &se) {
		return false
	}
	switch se.StatusCode {
	case http.StatusNotFound, http.StatusUnauthorized, http.StatusForbidden:
		return true
	}
	return false
}

// recheckRetry is how long after a failed recheck of a tag the old list is
// trusted without trying again: the lookups of an image's layers come one
// after another, and each would otherwise wait for the retries.
const recheckRetry = 30 * time.Second

func (p *Pool) recheckFailedRecently(ref string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	at, ok := p.recheckFailed[ref]
	return ok && time.Since(at) < recheckRetry
}

func (p *Pool) fresh(m meta.Manifest) bool {
	return m.Pinned || time.Since(m.FetchedAt) < p.tagRecheck
}

// knownManifest returns what ref lists from memory or the metadata store.
func (p *Pool) knownManifest(ref string) (meta.Manifest, bool) {
	p.mu.Lock()
	m, ok := p.refs[ref]
	p.mu.Unlock()
	if ok || p.meta == nil {
		return m, ok
	}
	m, err := p.meta.LookupManifest(ref)
	if err != nil {
		if !errors.Is(err, meta.ErrNotFound) {
			p.log.WithError(err).WithField("ref", ref).Warn("reading stored manifest record failed; asking the registry")
		}
		return meta.Manifest{}, false
	}
	p.remember(ref, m)
	return m, true
}

// fetchManifest asks the registry what ref lists and keeps the answer.
func (p *Pool) fetchManifest(ctx context.Context, lister refLister, ref string) (meta.Manifest, error) {
	layers, pinned, err := lister.Layers(ctx, ref)
	if err != nil {
		return meta.Manifest{}, err
	}
	m := meta.Manifest{FetchedAt: time.Now(), Pinned: pinned}
	for _, l := range layers {
		m.Layers = append(m.Layers, l.Digest)
		if d, err := layer.TOCDigestFromAnnotations(l.Annotations); err == nil && d != "" {
			m.Layers = append(m.Layers, d)
		}
	}
	p.mu.Lock()
	if old, ok := p.refs[ref]; ok && slices.Equal(old.Layers, m.Layers) {
		// The same layers: an honest config gives them the same diff_ids
		// (see DiffIDFor), so what was looked up of them still holds.
		m.DiffIDs = old.DiffIDs
	}
	p.mu.Unlock()
	p.remember(ref, m)
	p.storeManifest(ref)
	return m, nil
}

// storeManifest writes what the pool keeps of ref to the metadata store,
// in the background. Each write takes the record as it is when the write
// runs, so of two writes racing the last one is never the older record.
func (p *Pool) storeManifest(ref string) {
	if p.meta == nil {
		return
	}
	p.inBackground(func() {
		p.mu.Lock()
		m, ok := p.refs[ref]
		p.mu.Unlock()
		if !ok {
			return
		}
		if err := p.meta.PutManifest(ref, m); err != nil {
			p.log.WithError(err).WithField("ref", ref).Warn("storing manifest record failed")
		}
	})
}

func (p *Pool) remember(ref string, m meta.Manifest) {
	p.mu.Lock()
	p.refs[ref] = m
	delete(p.recheckFailed, ref)
	p.mu.Unlock()
}
