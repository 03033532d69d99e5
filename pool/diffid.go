package pool

import (
	"bufio"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"maps"
	"sync"
	"time"

	digest "github.com/opencontainers/go-digest"
	"github.com/sirupsen/logrus"

	"github.com/poolfs/poolfs/layer"
)

// ErrDiffIDMismatch says an image's config gives a layer a diff_id that
// decompressing the layer's blob proved wrong.
var ErrDiffIDMismatch = errors.New("config's diff_id disagrees with the layer's verified diff_id")

// verifyTimeout bounds the background decompression of one blob.
const verifyTimeout = 30 * time.Minute

// diffIDs is what is known of a layer's uncompressed digest: the values
// image configs gave it, and the one computed from the blob once two of
// them disagreed.
type diffIDs struct {
	mu        sync.Mutex
	claims    map[digest.Digest]string // diff_id -> the first reference that gave it
	verified  digest.Digest
	verifying bool
}

// DiffIDFor returns the diff_id that ref's own config gives layer l, the
// value a lookup through ref reports in info: the blob is shared by every
// image that names it, the config is not. When two images disagree about
// a blob, the blob is decompressed in the background (never on the lookup
// path: that reads all of it) to find the true value; from then on a
// lookup whose config disagrees with it fails with ErrDiffIDMismatch.
// Until then each image gets what its own config says. The value is kept
// with what the pool keeps of the reference (see listed), so a restart
// does not ask for the config again.
func (p *Pool) DiffIDFor(ctx context.Context, l *Layer, ref string) (digest.Digest, error) {
	d := l.Desc.DiffID
	if ref != l.Desc.Ref {
		var ok bool
		if d, ok = p.keptDiffID(ref, l.Desc.Digest); !ok {
			// Cached per reference by the resolver: the client has
			// just looked this image up, so this is usually no round
			// trip.
			desc, err := p.resolver.ResolveLayer(ctx, ref, l.Desc.Digest)
			if err != nil {
				return "", fmt.Errorf("resolving the diff_id of layer %s in %s: %w", l.Desc.Digest, ref, err)
			}
			d = desc.DiffID
			p.keepDiffID(ref, l.Desc.Digest, d)
		}
	}
	if d == "" {
		return "", nil // the config does not say; info leaves it out
	}
	l.diff.mu.Lock()
	defer l.diff.mu.Unlock()
	if v := l.diff.verified; v != "" && v != d {
		return "", fmt.Errorf("layer %s in %s: config gives diff_id %s, the blob decompresses to %s: %w",
			l.Desc.Digest, ref, d, v, ErrDiffIDMismatch)
	}
	if l.diff.claims == nil {
		l.diff.claims = map[digest.Digest]string{}
	}
	if _, ok := l.diff.claims[d]; !ok {
		l.diff.claims[d] = ref
		if len(l.diff.claims) > 1 && l.diff.verified == "" && !l.diff.verifying {
			l.diff.verifying = true
			p.log.WithFields(logrus.Fields{"ref": ref, "digest": l.Desc.Digest, "diff_id": d}).
				Warn("images disagree about the layer's diff_id; decompressing the blob in the background to find out which is right")
			go p.verifyDiffID(l)
		}
	}
	return d, nil
}

// keptDiffID returns the diff_id ref's config gives blob d from what the
// pool keeps of ref (see listed), so a restart asks no registry for it.
func (p *Pool) keptDiffID(ref string, d digest.Digest) (digest.Digest, bool) {
	m, ok := p.knownManifest(ref)
	if !ok {
		return "", false
	}
	id, ok := m.DiffIDs[d]
	return id, ok
}

// keepDiffID adds to what the pool keeps of ref that its config gives blob
// d the diff_id id. A reference whose list the pool does not keep keeps
// nothing; a list fetched again starts with none (the tag may have moved).
func (p *Pool) keepDiffID(ref string, d, id digest.Digest) {
	p.mu.Lock()
	m, ok := p.refs[ref]
	if ok {
		ids := maps.Clone(m.DiffIDs)
		if ids == nil {
			ids = map[digest.Digest]digest.Digest{}
		}
		ids[d] = id
		m.DiffIDs = ids
		p.refs[ref] = m
	}
	p.mu.Unlock()
	if ok {
		p.storeManifest(ref)
	}
}

// VerifiedDiffID is l's diff_id as computed from its blob, "" until images
// disagreed about it and the background check finished.
func (l *Layer) VerifiedDiffID() digest.Digest {
	l.diff.mu.Lock()
	defer l.diff.mu.Unlock()
	return l.diff.verified
}

// verifyDiffID decompresses l's blob and records its digest as the
// verified diff_id.
func (p *Pool) verifyDiffID(l *Layer) {
	log := p.log.WithField("digest", l.Desc.Digest)
	ctx, cancel := context.WithTimeout(context.Background(), verifyTimeout)
	defer cancel()
	d, err := l.uncompressedDigest(ctx)
	l.diff.mu.Lock()
	defer l.diff.mu.Unlock()
	l.diff.verifying = false
	if err != nil {
		// The next disagreeing lookup tries again.
		log.WithError(err).Warn("verifying the layer's diff_id failed")
		return
	}
	l.diff.verified = d
	for claim, ref := range l.diff.claims {
		if claim != d {
			log.WithFields(logrus.Fields{"ref": ref, "diff_id": claim, "verified": d}).
				Warn("image config gives the layer a wrong diff_id; lookups through such configs are refused from now on")
		}
	}
	log.WithField("diff_id", d).Info("layer diff_id verified")
}

// uncompressedDigest is the sha256 of the decompressed blob, as its format
// decompresses it (an eStargz blob's TOC and footer included).
func (l *Layer) uncompressedDigest(ctx context.Context) (digest.Digest, error) {
	zr, err := layer.Decompress(l.format, bufio.NewReaderSize(io.NewSectionReader(blobReaderAt{ctx, l}, 0, l.Desc.Size), 1<<20))
	if err != nil {
		return "", fmt.Errorf("decompressing blob %s: %w", l.Desc.Digest, err)
	}
	defer zr.Close()
	h := sha256.New()
	if _, err := io.Copy(h, zr); err != nil {
		return "", fmt.Errorf("decompressing blob %s: %w", l.Desc.Digest, err)
	}
	return digest.NewDigest(digest.SHA256, h), nil
}

// blobReaderAt is io.ReaderAt over the layer's blob stream.
type blobReaderAt struct {
	ctx context.Context
	l   *Layer
}

func (r blobReaderAt) ReadAt(p []byte, off int64) (int, error) {
	n, err := r.l.ReadBlob(r.ctx, p, off)
	if err == nil && n < len(p) {
		err = io.EOF
	}
	return n, err
}
