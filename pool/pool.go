// Package pool is the daemon's layer registry: it resolves the layers it
// is asked for (by package alsfs, for the paths of the additional layer
// store, and by the image store) and keeps each one (its registry
// descriptor, blob access and eStargz or zstd:chunked view) for as long as
// the daemon runs: recorded in the metadata store, prefetched, its tree's
// memory bounded. It knows nothing of FUSE.
package pool

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	digest "github.com/opencontainers/go-digest"
	"github.com/sirupsen/logrus"
	"golang.org/x/sync/singleflight"

	"github.com/poolfs/poolfs/cache"
	"github.com/poolfs/poolfs/layer"
	"github.com/poolfs/poolfs/meta"
	"github.com/poolfs/poolfs/profile"
	"github.com/poolfs/poolfs/remote"
)

// Resolver is the registry side the pool needs; *remote.Resolver is one.
type Resolver interface {
	// ResolveBlob finds the layer in the manifest, without its DiffID;
	// ResolveLayer adds the DiffID from the config.
	ResolveBlob(ctx context.Context, ref string, dgst digest.Digest) (remote.LayerDesc, error)
	ResolveLayer(ctx context.Context, ref string, dgst digest.Digest) (remote.LayerDesc, error)
	Blob(ctx context.Context, ld remote.LayerDesc) (remote.Blob, error)
}

// refChecker is implemented by resolvers that can refuse a reference
// without I/O (*remote.Resolver: registries.conf's blocked registries).
type refChecker interface {
	CheckRef(ref string) error
}

// Cache is where verified chunks and blob blocks are kept.
type Cache interface {
	Get(key string) ([]byte, bool)
	Add(key string, b []byte)
}

// openTimeout bounds the shared work of resolving and opening one layer. It
// is detached from the FUSE request that triggered it: other lookups may be
// waiting for the same result, and an interrupted `stat` must not poison it.
const openTimeout = 2 * time.Minute

// noFormatTTL is how long "this blob is in no lazily served format" is
// believed. The
// answer depends only on the blob's content, but it is reached from bytes
// that came over the network: layer.Open already refetches a footer that
// does not parse, and the TTL bounds the harm if a footer arrived spoiled on
// every attempt. Podman asks once per pull, so re-checking is cheap.
const noFormatTTL = 10 * time.Minute

// noFormat is a remembered ErrNoFormat answer.
type noFormat struct {
	err error
	at  time.Time
}

// Layer is one lazily served layer (eStargz, zstd:chunked) the pool serves, shared by every path that
// names it (both grammars, blob or TOC digest, any annotation order).
type Layer struct {
	Desc remote.LayerDesc
	Blob remote.Blob

	pool   *Pool
	format string    // the view's Format, known while the tree is out of memory
	tree   treeState // the view (see Hold, View, Tree)

	uses       atomic.Int64
	lastAccess atomic.Int64 // unix nanoseconds

	diff diffIDs // what image configs say of the uncompressed digest (see DiffIDFor)

	streamOnce sync.Once
	stream     *blobStream // the blob file's reads (see ReadBlob)

	prof profileState
}

// Format names the layer's blob format (layer.FormatEStargz,
// layer.FormatZstdChunked).
func (l *Layer) Format() string { return l.format }

// Uses is the reference count the containers/storage client keeps through
// create(use) and rmdir(<digest>) (see AddUse, DropUse). A tree with
// users stays in memory.
func (l *Layer) Uses() int64 { return l.uses.Load() }

// AddUse counts one more user and returns the new count.
func (l *Layer) AddUse() int64 { return l.uses.Add(1) }

// DropUse counts one user fewer and returns the new count, which does not
// go below 0: a client may release a layer it used before a restart.
func (l *Layer) DropUse() int64 {
	n := l.uses.Add(-1)
	if n < 0 {
		l.uses.CompareAndSwap(n, 0)
	}
	return max(n, 0)
}

// LastAccess is when a path last resolved to this layer.
func (l *Layer) LastAccess() time.Time { return time.Unix(0, l.lastAccess.Load()) }

func (l *Layer) touch() { l.lastAccess.Store(time.Now().UnixNano()) }

// Pool resolves layer keys to Layers, once per blob digest.
type Pool struct {
	resolver Resolver
	cache    Cache
	log      *logrus.Entry

	mu       sync.Mutex
	layers   map[digest.Digest]*Layer   // by compressed blob digest
	noFormat map[digest.Digest]noFormat // content never changes, so neither does this answer (but see noFormatTTL)
	opening  singleflight.Group

	meta       *meta.Store    // nil: nothing persists across restarts (see WithMeta)
	persisting sync.WaitGroup // records being written (see persist, Flush)

	prefetch PrefetchOptions // see WithPrefetch

	whole *layer.WholeFiles // see WithWholeFiles; nil: no whole-file copies

	// gate is every layer's: the layers share the link, so one layer's
	// prefetch holds back while another's reads wait (layer.DemandGate).
	gate *layer.DemandGate

	profileSource profile.Source                     // see WithProfileSource; nil: none
	profiles      map[digest.Digest]*profile.Profile // profiles kept without a metadata store
	tagRecheck    time.Duration                      // see WithTagRecheck
	refs          map[string]meta.Manifest           // what each reference lists (see listed)
	listing       singleflight.Group                 // manifest fetches by reference
	// When a tag's recheck last failed (see recheckRetry).
	recheckFailed map[string]time.Time

	// Reads of blob ends started before the manifest (see tailGuess), by
	// reference@digest; guessCtx ends them on Close, guessWG waits for them.
	guesses   map[string]*tailGuess
	guessCtx  context.Context
	guessStop context.CancelFunc
	guessWG   sync.WaitGroup
	// When a lookup's path last named a layer's TOC digest (unix ns): see
	// tocPathsRecently.
	tocPathAt atomic.Int64

	limits   TreeLimits // see WithTreeLimits
	treeMu   sync.Mutex
	treeUsed int64 // bytes of the trees in memory and being built
	stop     context.CancelFunc
	swept    chan struct{} // closed when sweepIdle has returned
}

// New returns an empty pool. With TreeLimits.Idle set, it looks for idle
// trees in the background until Close.
func New(resolver Resolver, c Cache, log *logrus.Entry, opts ...Option) *Pool {
	if log == nil {
		log = logrus.NewEntry(logrus.StandardLogger())
	}
	p := &Pool{
		resolver:   resolver,
		cache:      c,
		log:        log,
		layers:     map[digest.Digest]*Layer{},
		noFormat:   map[digest.Digest]noFormat{},
		profiles:   map[digest.Digest]*profile.Profile{},
		tagRecheck: DefaultTagRecheck,
		refs:       map[string]meta.Manifest{},

		recheckFailed: map[string]time.Time{},
		guesses:       map[string]*tailGuess{},
		gate:          layer.NewDemandGate(),
	}
	p.guessCtx, p.guessStop = context.WithCancel(context.Background())
	for _, o := range opts {
		o(p)
	}
	if p.limits.Idle > 0 {
		ctx, cancel := context.WithCancel(context.Background())
		p.stop = cancel
		p.swept = make(chan struct{})
		go func() {
			defer close(p.swept)
			p.sweepIdle(ctx)
		}()
	}
	return p
}

// LayerKey names a layer the pool is asked for: the layer Digest (its
// blob or TOC digest) of image Ref, and the TOC digest it must have, if
// the asker names one (a grammar-1 path may: see alspath.LayerKey, whose
// fields these are).
type LayerKey struct {
	Ref       string
	Digest    digest.Digest
	TOCDigest digest.Digest // optional
}

// Get returns the layer that key names, resolving the reference and opening
// its TOC on first use. Who may make the daemon fetch is for the caller to
// decide (alsfs checks the FUSE request's caller before it asks).
func (p *Pool) Get(ctx context.Context, key LayerKey) (*Layer, error) {
	// A reference the configuration refuses (registries.conf "blocked") is
	// refused even when its blob is already open under another name.
	if c, ok := p.resolver.(refChecker); ok {
		if err := c.CheckRef(key.Ref); err != nil {
			return nil, err
		}
	}
	// The blob's end (see tailGuess), and the index of the image's
	// published profiles, are read beside the manifest when the check
	// below has to fetch it.
	var g *tailGuess
	if p.awaitsManifest(key) {
		g = p.guessTail(key)
		p.expectProfiles(key)
	}
	defer p.dropGuess(key, g)
	// Nor is an open layer served under a reference that does not list it.
	if err := p.listed(ctx, key); err != nil {
		return nil, err
	}
	if l := p.byDigest(key.Digest); l != nil {
		// The same blob under a reference that lists it is the same
		// content, but a TOC digest named in the path must still match.
		if key.TOCDigest != "" && l.Desc.TOCDigest != key.TOCDigest {
			return nil, fmt.Errorf("layer %s: path names TOC digest %s but the layer's is %s", key.Digest, key.TOCDigest, l.Desc.TOCDigest)
		}
		l.touch()
		p.recordRef(key, l)
		return l, nil
	}
	v, err, _ := p.opening.Do(key.Ref+"@"+key.Digest.String(), func() (any, error) {
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), openTimeout)
		defer cancel()
		return p.open(ctx, key)
	})
	if err != nil {
		return nil, err
	}
	l := v.(*Layer)
	l.touch()
	p.recordRef(key, l)
	return l, nil
}

// byDigest finds an open layer by blob digest or TOC digest; both name the
// same layer and the grammar-2 client uses either depending on its version.
func (p *Pool) byDigest(d digest.Digest) *Layer {
	p.mu.Lock()
	defer p.mu.Unlock()
	if l, ok := p.layers[d]; ok {
		return l
	}
	for _, l := range p.layers {
		if l.Desc.TOCDigest == d {
			return l
		}
	}
	return nil
}

// byBlobDigest finds an open layer by blob digest only.
func (p *Pool) byBlobDigest(d digest.Digest) *Layer {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.layers[d]
}

// Opened returns the open layer with blob digest d, or nil if no Get has
// opened it: unlike Get it opens nothing. A layer it returns counts as
// used now (see LastAccess).
func (p *Pool) Opened(d digest.Digest) *Layer {
	l := p.byBlobDigest(d)
	if l != nil {
		l.touch()
	}
	return l
}

func (p *Pool) open(ctx context.Context, key LayerKey) (*Layer, error) {
	log := p.log.WithFields(logrus.Fields{"ref": key.Ref, "digest": key.Digest})
	g := p.takeGuess(key)
	defer g.stop()
	if l := p.openStored(ctx, key, log); l != nil {
		return l, nil
	}
	desc, err := p.resolver.ResolveBlob(ctx, key.Ref, key.Digest)
	if err == nil {
		desc, err = describe(desc, key.Digest, log)
	}
	if err != nil {
		return nil, fmt.Errorf("resolving layer %s of %s: %w", key.Digest, key.Ref, err)
	}
	if key.Digest != desc.Digest {
		p.tocPathAt.Store(time.Now().UnixNano())
	}
	tocDigest := desc.TOCDigest
	if key.TOCDigest != "" {
		if tocDigest != "" && tocDigest != key.TOCDigest {
			return nil, fmt.Errorf("layer %s of %s: path names TOC digest %s but the manifest says %s",
				desc.Digest, key.Ref, key.TOCDigest, tocDigest)
		}
		tocDigest = key.TOCDigest
	}

	if l := p.byDigest(desc.Digest); l != nil {
		return l, nil
	}
	p.mu.Lock()
	ne, known := p.noFormat[desc.Digest]
	p.mu.Unlock()
	if known && time.Since(ne.at) < noFormatTTL {
		return nil, ne.err
	}

	blob, err := p.resolver.Blob(ctx, desc)
	if err != nil {
		return nil, fmt.Errorf("opening blob %s of %s: %w", desc.Digest, key.Ref, err)
	}
	// The config (for the DiffID) is fetched while the TOC is: one round
	// trip less before the client sees the layer.
	type resolved struct {
		desc remote.LayerDesc
		err  error
	}
	withConfig := make(chan resolved, 1)
	go func() {
		d, err := p.resolver.ResolveLayer(ctx, key.Ref, key.Digest)
		withConfig <- resolved{d, err}
	}()
	diffID := func() (digest.Digest, error) {
		r := <-withConfig
		if r.err != nil {
			return "", fmt.Errorf("resolving layer %s of %s: %w", key.Digest, key.Ref, r.err)
		}
		return r.desc.DiffID, nil
	}
	// A stored profile replaces the prefetch of prioritized files, and
	// with it the stream of the blob's head; without one, a published
	// profile is looked for while the TOC is read.
	stored, found := p.profilesFor(key.Ref, desc.Digest, tocDigest, log)
	start := time.Now()
	viewBlob, head := blob, (*remote.Head)(nil)
	var early *earlyRanges
	if stored == nil {
		viewBlob, head = p.startHead(blob, tocDigest.String())
		if found != nil && tocDigest != "" {
			// A published profile that comes while the TOC is on the
			// wire is fetched like a stored one, from when the TOC read
			// is about done.
			early = pendingEarly(viewBlob)
			viewBlob = early
			found = p.planEarly(early, found, tocDigest)
		}
	} else if early = newEarlyRanges(blob, stored, p.cached); early != nil {
		viewBlob = early
	}
	_, zstdPos, zstd, zerr := layer.ZstdChunkedAnnotations(desc.Annotations)
	ahead := g.use(ctx, viewBlob, desc, tocDigest != "" || zstd && zerr == nil && zstdPos != nil, log)
	if ahead != nil {
		viewBlob = ahead
		if r, ok := blob.(interface{ Received(start, end int64) }); ok {
			r.Received(ahead.start, ahead.start+int64(len(ahead.data))) // for the layer's fetched bytes
		}
	}
	view, toc, err := layer.OpenWithTOC(ctx, viewBlob, tocDigest, p.cache, log, append(p.layerOptions(), layer.WithAnnotations(desc.Annotations))...)
	ahead.release()
	early.closePlans() // the replay can start itself now
	if err == nil {
		head.Limit(view.PrioritizedHead())
	} else {
		head.Release()
		early.Release()
		err = fmt.Errorf("opening TOC of %s in %s: %w", desc.Digest, key.Ref, err)
		if errors.Is(err, layer.ErrLimit) {
			// Said once here, with the limit, for whoever wonders why this
			// layer was pulled.
			log.WithError(err).Warn("layer refused: its tree would pass a memory limit")
		}
		if errors.Is(err, layer.ErrNoFormat) {
			p.mu.Lock()
			p.noFormat[desc.Digest] = noFormat{err: err, at: time.Now()}
			p.mu.Unlock()
		}
		return nil, err
	}
	if tocDigest == "" {
		desc.TOCDigest = view.TOCDigest()
	}
	if desc.DiffID, err = diffID(); err != nil {
		head.Release()
		early.Release()
		_ = p.reserve(-view.TreeBytes())
		return nil, err
	}
	l := p.newLayer(key, desc, blob, view, false, log)
	l.prof.stored, l.prof.early = stored, early
	l = p.adopt(l, head, found, log)
	if l.tree.view == view {
		p.persist(l, key, desc, toc, log)
	}
	log.WithFields(logrus.Fields{
		"toc_digest": desc.TOCDigest,
		"size":       desc.Size,
		"elapsed":    time.Since(start).Round(time.Millisecond),
	}).Info("layer opened")
	return l, nil
}

// adopt makes l the pool's layer for its blob digest and starts its
// prefetch, unless a concurrent open (another reference to the same blob)
// got there first: then that layer is kept and returned.
//
// head is the stream of the blob's start l's view reads through, if any
// (see startHead); the prefetch releases it when done with it.
//
// found, if not nil, gives the answer of a profile.Source lookup, replayed
// when it comes.
func (p *Pool) adopt(l *Layer, head *remote.Head, found <-chan *profile.Profile, log *logrus.Entry) *Layer {
	p.mu.Lock()
	defer p.mu.Unlock()
	if prev, ok := p.layers[l.Desc.Digest]; ok {
		head.Release()
		l.prof.early.Release()
		_ = p.reserve(-l.tree.view.TreeBytes())
		return prev
	}
	p.layers[l.Desc.Digest] = l
	p.startPrefetch(l, head, found, log)
	p.recordProfile(l, l.tree.view, log)
	return l
}

// describe sets desc.TOCDigest from the annotations (remote knows nothing
// of layer formats; layer says which annotation holds it) and checks that
// dgst, the digest desc was resolved by, is its blob digest or that TOC
// digest: remote finds a layer by any digest its annotations publish.
func describe(desc remote.LayerDesc, dgst digest.Digest, log *logrus.Entry) (remote.LayerDesc, error) {
	d, err := layer.TOCDigestFromAnnotations(desc.Annotations)
	if err != nil {
		log.WithField("digest", desc.Digest).WithError(err).Warn("ignoring malformed TOC digest annotation")
		d = ""
	}
	desc.TOCDigest = d
	if dgst != desc.Digest && dgst != d {
		return remote.LayerDesc{}, fmt.Errorf("layer %s has %s in an annotation that is not its TOC digest: %w", desc.Digest, dgst, remote.ErrLayerNotFound)
	}
	return desc, nil
}

// newLayer makes the Layer for a view just opened (and reserved for).
func (p *Pool) newLayer(key LayerKey, desc remote.LayerDesc, blob remote.Blob, view *layer.Layer, stored bool, log *logrus.Entry) *Layer {
	l := &Layer{Desc: desc, Blob: blob, pool: p, format: view.Format()}
	l.tree.view, l.tree.stored, l.tree.key, l.tree.log = view, stored, key, log
	l.tree.lastUsed = time.Now()
	return l
}

// WithWholeFiles makes the pool's layers keep whole-file copies of their
// fully cached large files through w, for FUSE passthrough (see
// layer.WholeFiles; default: none).
func WithWholeFiles(w *layer.WholeFiles) Option { return func(p *Pool) { p.whole = w } }

// WholeFiles is what the pool's layers keep whole-file copies through
// (nil: none; see WithWholeFiles).
func (p *Pool) WholeFiles() *layer.WholeFiles { return p.whole }

// Layers lists the layers opened so far.
func (p *Pool) Layers() []*Layer {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]*Layer, 0, len(p.layers))
	for _, l := range p.layers {
		out = append(out, l)
	}
	return out
}

// cached reports whether the pool's cache holds the chunk with digest d,
// as far as it can tell without reading it.
func (p *Pool) cached(d digest.Digest) bool {
	c, ok := p.cache.(cache.Peeker)
	return ok && c.Has(d.String())
}
