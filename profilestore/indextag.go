package profilestore

import (
	"context"
	"sort"
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

// indexTag is the index tag for ref; false if ref has neither tag nor
// digest, or the name would be too long for a tag.
func indexTag(ref string) (string, bool) {
	r, err := name.ParseReference(ref)
	if err != nil {
		return "", false
	}
	key := r.Identifier()
	if d, ok := r.(name.Digest); ok {
		key = strings.Replace(d.DigestStr(), ":", "-", 1)
	}
	tag := key + IndexTagSuffix
	return tag, remote.ValidTag(tag)
}

// tagRead is one reading of a reference's index tag.
type tagRead struct {
	done    chan struct{} // closed when entries and err are set
	entries []remote.Referrer
	err     error
	at      time.Time
}

// Expect starts reading the index tag of ref, unless a reading of it is
// under way or was made less than MissTTL ago. Lookup uses what it finds
// (see fromIndexTag).
func (g *Registry) Expect(ref string) {
	tag, ok := indexTag(ref)
	if !ok {
		return
	}
	now := time.Now()
	g.mu.Lock()
	if t := g.tags[ref]; t != nil && now.Sub(t.at) < g.missTTL {
		g.mu.Unlock()
		return
	}
	for r, t := range g.tags {
		if now.Sub(t.at) >= g.missTTL {
			delete(g.tags, r)
		}
	}
	t := &tagRead{done: make(chan struct{}), at: now}
	g.tags[ref] = t
	g.mu.Unlock()
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), g.timeout)
		defer cancel()
		t.entries, t.err = g.r.TaggedIndex(ctx, ref, tag)
		close(t.done)
	}()
}

var _ profile.Expecter = (*Registry)(nil)

// fromIndexTag returns the entries of ref's index tag that list a profile
// artifact of manifest, newest first, if Expect read it (waiting for the
// reading under way). None, or no reading, is nil: the referrers are
// asked.
func (g *Registry) fromIndexTag(ctx context.Context, ref string, manifest digest.Digest, log *logrus.Entry) []remote.Referrer {
	g.mu.Lock()
	t := g.tags[ref]
	g.mu.Unlock()
	if t == nil {
		return nil
	}
	select {
	case <-t.done:
	case <-ctx.Done():
		return nil
	}
	if t.err != nil {
		log.WithError(t.err).Debug("reading the profile index tag failed; asking the referrers")
		return nil
	}
	var out []remote.Referrer
	for _, e := range t.entries {
		if e.ArtifactType == profile.ArtifactType && e.Annotations[SubjectAnnotation] == manifest.String() {
			out = append(out, e)
		}
	}
	return out
}

// updateIndexTag lists the artifact pushed for ref, with annotations, in
// ref's index tag, before the entries already there for other image
// manifests (newest first, maxIndexEntries in all).
func (g *Registry) updateIndexTag(ctx context.Context, ref string, pushed remote.Pushed, annotations map[string]string) error {
	tag, ok := indexTag(ref)
	if !ok {
		return nil
	}
	a := make(map[string]string, len(annotations)+1)
	for k, v := range annotations {
		a[k] = v
	}
	a[SubjectAnnotation] = pushed.Subject.String()
	entry := remote.Referrer{Digest: pushed.Digest, Size: pushed.Size, MediaType: pushed.MediaType,
		ArtifactType: profile.ArtifactType, Annotations: a}
	kept := 0
	err := g.r.UpdateTaggedIndex(ctx, ref, tag, func(old []remote.Referrer) []remote.Referrer {
		sort.SliceStable(old, func(i, j int) bool {
			return old[i].Annotations[CreatedAnnotation] > old[j].Annotations[CreatedAnnotation]
		})
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
