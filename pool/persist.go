package pool

import (
	"context"
	"errors"
	"time"

	digest "github.com/opencontainers/go-digest"

	"github.com/sirupsen/logrus"

	"github.com/poolfs/poolfs/layer"
	"github.com/poolfs/poolfs/meta"
	"github.com/poolfs/poolfs/profile"
	"github.com/poolfs/poolfs/remote"
)

// WithMeta makes the pool record every layer it opens in m and, on a
// lookup it has not served since it started, reopen the layer from m
// without asking the registry (default: nothing persists).
//
// Records are keyed by the reference and digest the client asked for. The
// record names the layer by digest, and its bytes never change; whether the
// reference still lists the layer is decided apart, from the reference's
// manifest, which m keeps too (see Pool.listed and DefaultTagRecheck).
func WithMeta(m *meta.Store) Option { return func(p *Pool) { p.meta = m } }

// openStored returns the layer key names from the metadata store, or nil
// if the store does not know it or its record fails verification (then
// the record is dropped, and the caller goes to the registry).
func (p *Pool) openStored(ctx context.Context, key LayerKey, log *logrus.Entry) *Layer {
	if p.meta == nil {
		return nil
	}
	rec, err := p.meta.Lookup(key.Ref, key.Digest)
	if errors.Is(err, meta.ErrNotFound) {
		return nil
	}
	if err != nil {
		log.WithError(err).Warn("reading stored layer record failed; asking the registry")
		return nil
	}
	if key.TOCDigest != "" && rec.TOC.Digest != key.TOCDigest {
		return nil // let the registry path report the mismatch
	}
	drop := func(err error) *Layer {
		log.WithError(err).Warn("stored layer record is damaged; dropping it and asking the registry")
		if derr := p.meta.Delete(rec.Desc.Digest); derr != nil {
			log.WithError(derr).Warn("dropping damaged layer record failed")
		}
		return nil
	}
	if rec.Desc.TOCDigest != "" && rec.Desc.TOCDigest != rec.TOC.Digest {
		return drop(errors.New("record's descriptor and TOC name different TOC digests"))
	}

	if l := p.byDigest(rec.Desc.Digest); l != nil {
		return l
	}

	// Blob access needs no network until the first read.
	blob, err := p.resolver.Blob(ctx, rec.Desc)
	if err != nil {
		return drop(err)
	}
	view, err := layer.OpenStored(blob, rec.TOC, p.cache, log, p.layerOptions()...)
	if errors.Is(err, layer.ErrLimit) {
		log.WithError(err).Warn("layer refused: its tree would pass a memory limit")
		return nil
	}
	if err != nil {
		return drop(err)
	}
	// Prefetched like a layer opened from the registry; after a restart
	// its prioritized chunks are usually in the disk cache already.
	l := p.newLayer(key, rec.Desc, blob, view, true, log)
	// A layer with no profile of its own (opened before but never read,
	// or whose profile was lost) looks for a published one as a layer
	// from the registry does: in the background, the open not waiting.
	var found <-chan *profile.Profile
	l.prof.stored, found = p.profilesFor(key.Ref, rec.Desc.Digest, rec.TOC.Digest, log)
	l = p.adopt(l, nil, found, log)
	log.WithField("toc_digest", rec.TOC.Digest).Info("layer opened from the metadata store")
	p.inBackground(func() {
		if err := p.meta.Touch(rec.Desc.Digest); err != nil {
			log.WithError(err).Warn("marking stored layer record used failed")
		}
	})
	return l
}

// persist records a layer just opened from the registry, in the
// background: compressing the TOC and committing it (fsync) takes tens of
// milliseconds that the client, waiting for the layer, need not wait. A
// failure costs only a registry round trip after the next restart, so it
// is logged, not returned. Flush waits for the records.
func (p *Pool) persist(l *Layer, key LayerKey, desc remote.LayerDesc, toc layer.TOC, log *logrus.Entry) {
	if p.meta == nil {
		return
	}
	p.inBackground(func() {
		if err := p.meta.Put(key.Ref, key.Digest, meta.Record{Desc: desc, TOC: toc}); err != nil {
			log.WithError(err).Warn("storing layer record failed")
			return
		}
		// Only now may the tree leave memory: it comes back from here.
		l.tree.mu.Lock()
		l.tree.stored = true
		l.tree.mu.Unlock()
	})
}

// recordRef records that key names l, which may have been opened under
// another reference, so that after a restart key finds l's record without
// the registry (the reference's manifest, which lists l, is stored too:
// see Pool.listed).
func (p *Pool) recordRef(key LayerKey, l *Layer) {
	if p.meta == nil {
		return
	}
	p.inBackground(func() {
		if err := p.meta.Alias(key.Ref, key.Digest, l.Desc.Digest); err != nil {
			p.log.WithError(err).WithFields(logrus.Fields{"ref": key.Ref, "digest": key.Digest}).Warn("storing layer record failed")
		}
	})
}

// inBackground runs a metadata store write that no lookup waits for;
// Flush waits for it.
func (p *Pool) inBackground(write func()) {
	p.persisting.Add(1)
	go func() {
		defer p.persisting.Done()
		write()
	}()
}

// Flush waits until the records of the layers opened so far are written
// to the metadata store, ending their startup windows so that what they
// recorded is stored too. Call it before closing the store.
func (p *Pool) Flush() {
	for _, l := range p.Layers() {
		l.prof.mu.Lock()
		v := l.prof.recording
		l.prof.mu.Unlock()
		if v != nil {
			v.EndRecording()
		}
		<-l.prof.settled
	}
	p.persisting.Wait()
}

// PruneMeta forgets the stored records of layers neither opened by this
// pool nor used since maxAge ago (see meta.Store.Prune), and returns how
// many it forgot. Without a metadata store it does nothing.
func (p *Pool) PruneMeta(maxAge time.Duration) (int, error) {
	if p.meta == nil {
		return 0, nil
	}
	p.mu.Lock()
	inUse := make(map[digest.Digest]bool, len(p.layers))
	for d := range p.layers {
		inUse[d] = true
	}
	p.mu.Unlock()
	return p.meta.Prune(time.Now().Add(-maxAge), inUse)
}
