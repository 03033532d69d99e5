package pool

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/poolfs/poolfs/internal/pace"

	digest "github.com/opencontainers/go-digest"
	"github.com/sirupsen/logrus"

	"github.com/poolfs/poolfs/layer"
	"github.com/poolfs/poolfs/remote"
)

// A layer looked up under a reference whose manifest the pool has yet to
// fetch waits for that manifest (to check the reference lists the layer,
// and for its size and TOC digest) before its TOC can be read: a round
// trip, or more, before the first blob byte moves. When the path names the
// layer's blob digest (podman's lookups by blob digest do), the blob can be
// addressed without the manifest, and a suffix range needs no size: the
// pool reads the blob's end (the window layer.Open reads the TOC from)
// beside the manifest, a tailGuess. Nothing in it is trusted or served
// until the manifest has confirmed it: the reference lists the digest
// (Pool.listed), the digest is the layer's blob digest and the size is the
// manifest's; then the TOC in it is verified against the manifest's TOC
// digest as any TOC read (layer.OpenWithTOC). A guess that does not fit
// (the path named a TOC digest, the size differs, the registry refuses
// suffix ranges) is dropped and the TOC is read as it was before.

// tailReader is implemented by resolvers that read a blob's end by digest
// alone (*remote.Resolver).
type tailReader interface {
	Tail(ctx context.Context, ref string, dgst digest.Digest, n int64, progress func(int)) ([]byte, int64, error)
}

// tailGuess is the end of the blob a lookup's path names, being read.
type tailGuess struct {
	digest digest.Digest
	n      int64
	cancel context.CancelFunc

	done     chan struct{} // closed when the read is over; then data, size, err are set
	nearEnd  chan struct{} // closed when the read is about a round trip from done, or over
	nearOnce sync.Once
	data     []byte
	size     int64
	err      error
}

// awaitsManifest says Get has key's reference's manifest to fetch before
// it can open the layer: the layer is not open, the metadata store does
// not have it, and the manifest is not known. The reads that need no
// manifest (guessTail, expectProfiles) then go beside that fetch.
func (p *Pool) awaitsManifest(key LayerKey) bool {
	if p.byDigest(key.Digest) != nil {
		return false
	}
	if m, known := p.knownManifest(key.Ref); known && p.fresh(m) {
		return false
	}
	if p.meta != nil {
		if _, err := p.meta.Lookup(key.Ref, key.Digest); err == nil {
			return false
		}
	}
	return true
}

// guessTail starts reading the end of the blob key names (for a key that
// awaitsManifest), unless its digest is known to be in no lazily served
// format, or lookups name TOC digests (see tocPathsRecently); a read
// already under way for key is shared. nil: none.
func (p *Pool) guessTail(key LayerKey) *tailGuess {
	tr, ok := p.resolver.(tailReader)
	if !ok || p.tocPathsRecently() {
		return nil
	}
	k := key.Ref + "@" + key.Digest.String()
	p.mu.Lock()
	defer p.mu.Unlock()
	if nf, ok := p.noFormat[key.Digest]; ok && time.Since(nf.at) < noFormatTTL {
		return nil
	}
	if g := p.guesses[k]; g != nil {
		return g
	}
	if p.guessCtx.Err() != nil {
		return nil // closed
	}
	ctx, cancel := context.WithCancel(p.guessCtx)
	g := &tailGuess{digest: key.Digest, n: layer.TailSize(), cancel: cancel, done: make(chan struct{}), nearEnd: make(chan struct{})}
	p.guesses[k] = g
	p.guessWG.Add(1)
	go func() {
		defer p.guessWG.Done()
		defer cancel()
		g.data, g.size, g.err = tr.Tail(ctx, key.Ref, key.Digest, g.n, pace.NearTheEnd(int(g.n), nil, g.near))
		g.near()
		close(g.done)
	}()
	return g
}

// tocPathsRecently says a lookup's path named a layer's TOC digest less
// than noFormatTTL ago. The client that made it (containers/storage 1.54
// and later, podman 5.1 and later) names every layer by its TOC digest,
// which addresses no blob: a guess would only add a request the registry
// answers 404 (and logs) to each first lookup.
func (p *Pool) tocPathsRecently() bool {
	at := p.tocPathAt.Load()
	return at != 0 && time.Since(time.Unix(0, at)) < noFormatTTL
}

func (g *tailGuess) near() { g.nearOnce.Do(func() { close(g.nearEnd) }) }

// dropGuess stops g, key's guess, unless an open has taken it. A nil
// guess may be dropped.
func (p *Pool) dropGuess(key LayerKey, g *tailGuess) {
	if g == nil {
		return
	}
	k := key.Ref + "@" + key.Digest.String()
	p.mu.Lock()
	mine := p.guesses[k] == g
	if mine {
		delete(p.guesses, k)
	}
	p.mu.Unlock()
	if mine {
		g.cancel()
	}
}

// takeGuess hands key's guess, if any, to the open that will use or stop
// it.
func (p *Pool) takeGuess(key LayerKey) *tailGuess {
	k := key.Ref + "@" + key.Digest.String()
	p.mu.Lock()
	defer p.mu.Unlock()
	g := p.guesses[k]
	delete(p.guesses, k)
	return g
}

// stop ends the read if it is still going. A nil guess may be stopped.
func (g *tailGuess) stop() {
	if g != nil {
		g.cancel()
	}
}

// failed reports a read that is over and brought nothing.
func (g *tailGuess) failed() bool {
	select {
	case <-g.done:
		return g.err != nil
	default:
		return false
	}
}

// use returns inner with the guess's bytes in front of it (knownTail),
// once desc, the layer as the manifest describes it, has confirmed them;
// nil if the guess does not fit desc. wait says the layer is expected to
// be in a lazily served format (the manifest names its TOC): otherwise a
// guess still on the way is not waited for. When the guess is about a
// round trip from done, inner is told (layer.TailNotifier) that its TOC
// read is, so that the streams waiting for the link (remote.Head,
// earlyRanges) start as they do near the end of their own TOC read.
func (g *tailGuess) use(ctx context.Context, inner remote.Blob, desc remote.LayerDesc, wait bool, log *logrus.Entry) *knownTail {
	if g == nil {
		return nil
	}
	if desc.Digest != g.digest {
		log.Debug("the path names the TOC digest: the early read of the blob's end is not used")
		return nil
	}
	if !wait {
		select {
		case <-g.done:
		default:
			return nil
		}
	}
	select {
	case <-g.nearEnd:
	case <-ctx.Done():
		return nil
	}
	if !g.failed() {
		tellTailRead(inner)
	}
	select {
	case <-g.done:
	case <-ctx.Done():
		return nil
	}
	log = log.WithField("early_read", "blob end")
	switch {
	case errors.Is(g.err, remote.ErrNoSuffixRange):
		log.WithError(g.err).Info("registry refuses suffix ranges: reading the TOC after the manifest")
		return nil
	case g.err != nil:
		log.WithError(g.err).Info("early read of the blob's end failed: reading the TOC after the manifest")
		return nil
	case g.size != desc.Size || int64(len(g.data)) != min(g.n, g.size):
		log.WithFields(logrus.Fields{"size": g.size, "bytes": len(g.data), "manifest_size": desc.Size}).
			Warn("early read of the blob's end does not fit the manifest: not used, reading the TOC after the manifest")
		return nil
	}
	return &knownTail{Blob: inner, start: g.size - int64(len(g.data)), data: g.data}
}

// knownTail is a remote.Blob whose last bytes were read ahead (see
// tailGuess.use): a read inside them is served from them, each byte once
// (a TOC read again after it failed its checks goes to the registry, so a
// byte spoiled in transit is not served twice); everything else goes to
// the blob. release drops them.
type knownTail struct {
	remote.Blob
	start int64

	mu     sync.Mutex
	data   []byte // the blob's bytes from start; nil once released
	served []span
}

var _ layer.TailNotifier = (*knownTail)(nil)

func (k *knownTail) ReadAt(ctx context.Context, p []byte, off int64) (int, error) {
	return k.ReadAtProgress(ctx, p, off, nil)
}

func (k *knownTail) ReadAtProgress(ctx context.Context, p []byte, off int64, progress func(n int)) (int, error) {
	if data := k.claim(off, int64(len(p))); data != nil {
		n := copy(p, data)
		if progress != nil {
			progress(n)
		}
		return n, nil
	}
	return k.Blob.ReadAtProgress(ctx, p, off, progress)
}

// claim returns the bytes [off, off+n) if they are all kept and none of
// them was served yet, and marks them served; nil otherwise.
func (k *knownTail) claim(off, n int64) []byte {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.data == nil || n <= 0 || off < k.start || off+n > k.start+int64(len(k.data)) || !claimOnce(&k.served, off, n) {
		return nil
	}
	return k.data[off-k.start : off-k.start+n]
}

// TailRead passes layer.Open's word on to the blob below.
func (k *knownTail) TailRead() { tellTailRead(k.Blob) }

// tellTailRead passes on to b, if it listens (layer.TailNotifier), the
// word that a layer's TOC read is over or about to be.
func tellTailRead(b remote.Blob) {
	if n, ok := b.(layer.TailNotifier); ok {
		n.TailRead()
	}
}

// release drops the bytes kept: from now on every read goes to the blob.
// A nil knownTail may be released.
func (k *knownTail) release() {
	if k == nil {
		return
	}
	k.mu.Lock()
	k.data = nil
	k.mu.Unlock()
}
