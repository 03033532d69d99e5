package profilestore

import (
	"context"
	"maps"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	digest "github.com/opencontainers/go-digest"
	"github.com/sirupsen/logrus"

	"github.com/poolfs/poolfs/profile"
	"github.com/poolfs/poolfs/remote"
)

// The index tag: beside the artifact whose subject is the image manifest,
// a push lists the artifact in an OCI index tagged after the reference
// pushed for (IndexTagSuffix after its tag, or after its digest written as
// the referrers tag schema writes one). A daemon asked for a layer of a
// reference whose manifest it has yet to fetch reads that index beside the
// manifest (Expect): the referrers of the image need the manifest's digest,
// a round trip the profile's requests would otherwise wait for. Each entry
// names the image manifest it was recorded on (SubjectAnnotation); one for
// another manifest (the tag moved, another platform) is not used, and the
// referrers are asked as before.

const (
	// IndexTagSuffix follows the reference's tag in the index tag's name.
	IndexTagSuffix = ".poolfs-profile"
	// SubjectAnnotation names, in an index tag entry, the image manifest
	// the listed artifact refers to.
	SubjectAnnotation = "io.poolfs.profile.subject"
	// maxIndexEntries bounds an index tag: the newest entries, one per
	// image manifest (the platforms of a multi-platform tag, and the
	// manifests the tag named before).
	maxIndexEntries = 8
)

// indexTag is the index tag for ref, and ref's repository; false if ref
// has neither tag nor digest, or the name would be too long for a tag.
func indexTag(ref string) (tag, repo string, byDigest, ok bool) {
	r, err := name.ParseReference(ref)
	if err != nil {
		return "", "", false, false
	}
	key := r.Identifier()
	if d, isDigest := r.(name.Digest); isDigest {
		key, byDigest = strings.Replace(d.DigestStr(), ":", "-", 1), true
	}
	tag = key + IndexTagSuffix
	return tag, r.Context().Name(), byDigest, remote.ValidTag(tag)
}

// tagRead is one reading of a reference's index tag.
type tagRead struct {
	repo    string
	done    chan struct{} // closed when entries and err are set
	entries []remote.Referrer
	err     error
	at      time.Time
}

// Expect starts reading the index tag of ref, unless a reading of it is
// under way or was made less than MissTTL ago. A reference by digest
// whose repository had an index tag read lately is not read: a client
// that resolved a tag (the image store's add) goes on with the layers by
// the digest the tag named, whose profiles that reading has. Lookup uses
// what the readings of the layer's repository find (see fromIndexTag).
func (g *Registry) Expect(ref string) {
	tag, repo, byDigest, ok := indexTag(ref)
	if !ok {
		return
	}
	g.mu.Lock()
	g.pruneTags()
	if g.tags[ref] != nil {
		g.mu.Unlock()
		return
	}
	if byDigest {
		for _, t := range g.tags {
			if t.repo == repo {
				g.mu.Unlock()
				return
			}
		}
	}
	t := &tagRead{repo: repo, done: make(chan struct{}), at: time.Now()}
	g.tags[ref] = t
	g.mu.Unlock()
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), g.timeout)
		defer cancel()
		t.entries, t.err = g.r.TaggedIndex(ctx, ref, tag)
		close(t.done)
	}()
}

// pruneTags drops the readings older than MissTTL (a few index entries
// each, up to 32 KiB per inlined profile); g.mu is held.
func (g *Registry) pruneTags() {
	for r, t := range g.tags {
		if time.Since(t.at) >= g.missTTL {
			delete(g.tags, r)
		}
	}
}

var _ profile.Expecter = (*Registry)(nil)

// fromIndexTag returns the entries of the index tags read for manifest's
// repository (see Expect) that list a profile artifact of manifest, once
// the readings under way are over. None, or no reading, is nil: the
// referrers are asked.
func (g *Registry) fromIndexTag(ctx context.Context, ref string, manifest digest.Digest, log *logrus.Entry) []remote.Referrer {
	_, repo, _, ok := indexTag(ref)
	if !ok {
		return nil
	}
	var reads []*tagRead
	g.mu.Lock()
	g.pruneTags()
	for _, t := range g.tags {
		if t.repo == repo {
			reads = append(reads, t)
		}
	}
	g.mu.Unlock()
	var out []remote.Referrer
	for _, t := range reads {
		select {
		case <-t.done:
		case <-ctx.Done():
			return nil
		}
		if t.err != nil {
			log.WithError(t.err).Debug("reading a profile index tag failed")
			continue
		}
		for _, e := range t.entries {
			if e.ArtifactType == profile.ArtifactType && e.Annotations[SubjectAnnotation] == manifest.String() {
				out = append(out, e)
			}
		}
	}
	return out
}

// updateIndexTag lists the artifact pushed for ref, with annotations, in
// ref's index tag, before the entries already there for other image
// manifests (newest first, maxIndexEntries in all).
func (g *Registry) updateIndexTag(ctx context.Context, ref string, pushed remote.Pushed, annotations map[string]string) error {
	tag, _, _, ok := indexTag(ref)
	if !ok {
		return nil
	}
	a := maps.Clone(annotations)
	a[SubjectAnnotation] = pushed.Subject.String()
	entry := remote.Referrer{Digest: pushed.Digest, Size: pushed.Size, MediaType: pushed.MediaType,
		ArtifactType: profile.ArtifactType, Annotations: a}
	kept := 0
	err := g.r.UpdateTaggedIndex(ctx, ref, tag, func(old []remote.Referrer) []remote.Referrer {
		newestFirst(old)
		out := []remote.Referrer{entry}
		for _, e := range old {
			if len(out) == maxIndexEntries {
				break
			}
			if e.Annotations[SubjectAnnotation] != pushed.Subject.String() && e.Digest != pushed.Digest {
				out = append(out, e)
			}
		}
		kept = len(out) - 1
		return out
	})
	if err != nil && kept > 0 {
		// A registry checks that an index's entries exist: one whose
		// artifact was deleted since fails the whole index.
		err = g.r.UpdateTaggedIndex(ctx, ref, tag, func([]remote.Referrer) []remote.Referrer { return []remote.Referrer{entry} })
	}
	return err
}
