package pool

import (
	"context"
	"errors"
	"fmt"
	"runtime/debug"
	"sort"
	"sync"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/poolfs/poolfs/layer"
)

// TreeLimits bound the memory the layers' trees take (see
// docs/security.md, "Memory limits"). The zero value is no limit at all.
type TreeLimits struct {
	// MaxEntries is the most TOC entries one layer may have; a layer with
	// more is refused (ENOENT: podman pulls it the normal way). 0: none.
	MaxEntries int
	// MaxBytes bounds what all trees in memory take together, counting a
	// tree being built. A tree that would pass it first makes idle trees
	// leave memory, and is refused if that is not enough. 0: none.
	MaxBytes int64
	// Idle is how long a tree nobody uses stays in memory (0: for ever).
	// Nobody uses it when its layer has no `use` count, the kernel knows
	// no inode below its root (no entry cached, no file open) and no
	// background fetch runs on it. It comes back from the metadata store
	// on the next lookup, without a registry request.
	Idle time.Duration
	// Keep, if not nil, keeps a tree in memory whatever the above; meant
	// for an image store that lists the layers it holds.
	Keep func(*Layer) bool
}

// DefaultTreeLimits are the daemon's defaults (docs/security.md says why).
var DefaultTreeLimits = TreeLimits{
	// About three times the largest real layers (a few hundred thousand
	// entries): a hostile TOC of millions of tiny entries is refused
	// before it is built, and the biggest tree allowed takes 80-250 MiB.
	MaxEntries: 1_000_000,
	// Room for the trees of a few dozen ordinary images at once, or one
	// layer at the entries limit while it is built.
	MaxBytes: 512 << 20,
	Idle:     10 * time.Minute,
}

// WithTreeLimits bounds the trees' memory (see TreeLimits).
func WithTreeLimits(t TreeLimits) Option { return func(p *Pool) { p.limits = t } }

// treeState is what a Layer keeps about its tree.
type treeState struct {
	mu       sync.Mutex
	view     *layer.Layer // nil: out of memory, loaded again by Hold
	pins     int          // Holds not yet released
	lastUsed time.Time
	stored   bool       // the metadata store has the TOC: the tree can leave memory
	roots    []TreeNode // the nodes serving the tree (see AddTreeNode)
	loads    int        // times the tree came back from the metadata store
	key      LayerKey   // what the metadata store knows the layer by
	log      *logrus.Entry
}

// Hold returns the layer's view, loading it from the metadata store if it
// left memory, and keeps it in memory until Release.
func (l *Layer) Hold(ctx context.Context) (*layer.Layer, error) {
	l.tree.mu.Lock()
	defer l.tree.mu.Unlock()
	if l.tree.view == nil {
		v, err := l.pool.reload(ctx, l)
		if err != nil {
			return nil, err
		}
		l.tree.view = v
		l.tree.loads++
	}
	l.tree.pins++
	l.tree.lastUsed = time.Now()
	return l.tree.view, nil
}

// Release ends a Hold.
func (l *Layer) Release() {
	l.tree.mu.Lock()
	defer l.tree.mu.Unlock()
	l.tree.pins--
	l.tree.lastUsed = time.Now()
}

// View returns the layer's view, loading it if it left memory. A caller
// that keeps it for long should Hold it instead: a view it keeps after
// the pool let it go still works, but takes memory the limits no longer
// count.
func (l *Layer) View(ctx context.Context) (*layer.Layer, error) {
	v, err := l.Hold(ctx)
	if err != nil {
		return nil, err
	}
	l.Release()
	return v, nil
}

// TreeStatus says what a layer's tree holds in memory.
type TreeStatus struct {
	Loaded  bool
	Entries int
	Bytes   int64
	Loads   int // times it came back from the metadata store
}

// Tree reports on the layer's tree.
func (l *Layer) Tree() TreeStatus {
	l.tree.mu.Lock()
	defer l.tree.mu.Unlock()
	st := TreeStatus{Loads: l.tree.loads}
	if v := l.tree.view; v != nil {
		st.Loaded, st.Entries, st.Bytes = true, v.Entries(), v.TreeBytes()
	}
	return st
}

// TreeBytes is what the trees in memory take, and the limit (0: none).
func (p *Pool) TreeBytes() (used, limit int64) {
	p.treeMu.Lock()
	defer p.treeMu.Unlock()
	return p.treeUsed, p.limits.MaxBytes
}

// MaxEntries is the entries limit of one layer (0: none).
func (p *Pool) MaxEntries() int { return p.limits.MaxEntries }

// A TreeNode serves a layer's tree in a file system: its root node in a
// FUSE mount, one per path naming the layer (see alsfs).
type TreeNode interface {
	// InUse says whether the file system's user holds on to something
	// below the node (an entry the kernel looked up and did not forget, an
	// open file): the tree must then stay in memory.
	InUse() bool
}

// AddTreeNode makes the tree stay in memory while n is in use.
func (l *Layer) AddTreeNode(n TreeNode) {
	l.tree.mu.Lock()
	defer l.tree.mu.Unlock()
	l.tree.roots = append(l.tree.roots, n)
}

// layerOptions are the limits a tree is built under, and what its reads
// fetch besides their own chunks.
func (p *Pool) layerOptions() []layer.Option {
	return []layer.Option{
		layer.WithLimits(layer.Limits{MaxEntries: p.limits.MaxEntries, Reserve: p.reserve}),
		layer.WithELFDeps(!p.prefetch.NoELF),
		layer.WithReadaheadSameDir(p.prefetch.ReadaheadSameDir),
		layer.WithReadahead(p.prefetch.Readahead),
		layer.WithWholeFiles(p.whole),
	}
}

// reserve accounts n bytes of tree (negative: given back). Past the limit
// it makes idle trees leave memory, least recently used first, and fails
// if that does not make room.
func (p *Pool) reserve(n int64) error {
	for {
		p.treeMu.Lock()
		if n <= 0 || p.limits.MaxBytes == 0 || p.treeUsed+n <= p.limits.MaxBytes {
			p.treeUsed += n
			p.treeMu.Unlock()
			return nil
		}
		used := p.treeUsed
		p.treeMu.Unlock()
		if !p.unloadOne(0) {
			return fmt.Errorf("%w: trees would take more than %d bytes, %d are in use (the tree memory limit)", layer.ErrLimit, p.limits.MaxBytes, used)
		}
	}
}

// unloadOne makes the least recently used tree that has been unused for
// at least idle leave memory, and says whether there was one.
func (p *Pool) unloadOne(idle time.Duration) bool {
	layers := p.Layers()
	sort.Slice(layers, func(i, j int) bool { return layers[i].LastAccess().Before(layers[j].LastAccess()) })
	for _, l := range layers {
		if p.unload(l, idle) {
			return true
		}
	}
	return false
}

// unload drops l's tree if nobody has used it for idle. A layer whose tree
// is being loaded or held right now is skipped, not waited for: the
// caller may be that load, asking for room.
func (p *Pool) unload(l *Layer, idle time.Duration) bool {
	t := &l.tree
	if !t.mu.TryLock() {
		return false
	}
	defer t.mu.Unlock()
	if t.view == nil || t.pins > 0 || !t.stored || l.Uses() > 0 || time.Since(t.lastUsed) < idle {
		return false
	}
	for _, r := range t.roots {
		if r.InUse() {
			return false
		}
	}
	if p.limits.Keep != nil && p.limits.Keep(l) {
		return false
	}
	bytes := t.view.TreeBytes()
	t.view = nil
	_ = p.reserve(-bytes)
	t.log.WithFields(logrus.Fields{"tree_bytes": bytes, "idle": time.Since(t.lastUsed).Round(time.Second)}).Info("layer tree left memory")
	return true
}

// reload builds l's tree again from the metadata store, without the
// registry (the blob is not read either). Without a record it reads the
// TOC from the blob.
func (p *Pool) reload(ctx context.Context, l *Layer) (*layer.Layer, error) {
	log := l.tree.log
	if p.meta != nil {
		rec, err := p.meta.Lookup(l.tree.key.Ref, l.tree.key.Digest)
		if err == nil && rec.TOC.Digest == l.Desc.TOCDigest {
			v, err := layer.OpenStored(l.Blob, rec.TOC, p.cache, log, p.layerOptions()...)
			if err == nil {
				log.WithField("tree_bytes", v.TreeBytes()).Info("layer tree loaded again from the metadata store")
				return v, nil
			}
			if errors.Is(err, layer.ErrLimit) {
				log.WithError(err).Warn("layer tree not loaded again: over a limit")
				return nil, err
			}
			log.WithError(err).Warn("stored TOC unusable; reading the TOC from the registry")
		}
	}
	v, err := layer.Open(ctx, l.Blob, l.Desc.TOCDigest, p.cache, log, append(p.layerOptions(), layer.WithAnnotations(l.Desc.Annotations))...)
	if err != nil {
		return nil, fmt.Errorf("loading the tree of layer %s again: %w", l.Desc.Digest, err)
	}
	return v, nil
}

// sweepEvery is how often idle trees are looked for, at most.
const sweepEvery = time.Minute

// sweep makes every tree idle for p.limits.Idle leave memory, and gives
// the memory back to the kernel at once if it freed any: the point is a
// smaller daemon, not a smaller Go heap.
func (p *Pool) sweep() int {
	n := 0
	for _, l := range p.Layers() {
		if p.unload(l, p.limits.Idle) {
			n++
		}
	}
	if n > 0 {
		debug.FreeOSMemory()
	}
	return n
}

// sweepIdle runs sweep now and then until ctx ends.
func (p *Pool) sweepIdle(ctx context.Context) {
	every := min(sweepEvery, max(p.limits.Idle/4, 10*time.Millisecond))
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			p.sweep()
		}
	}
}

// Close stops the pool's background work and waits for a sweep under way
// to finish, so nothing logs or frees trees after Close returns.
func (p *Pool) Close() {
	// Under p.mu: no read of a blob's end starts after this (guessTail).
	p.mu.Lock()
	p.guessStop()
	p.mu.Unlock()
	p.guessWG.Wait()
	if p.stop != nil {
		p.stop()
		<-p.swept
	}
}
