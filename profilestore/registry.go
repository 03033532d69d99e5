// Package profilestore shares startup profiles through registries: it
// publishes the profiles of an image's layers as an OCI artifact whose
// subject is the image manifest, and finds the one published for a layer
// (the pool's profile.Source) through the referrers of the image manifest
// the layer was resolved through.
package profilestore

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"slices"
	"sort"
	"strconv"
	"sync"
	"time"

	digest "github.com/opencontainers/go-digest"
	"github.com/sirupsen/logrus"
	"golang.org/x/sync/singleflight"

	"github.com/poolfs/poolfs/layer"
	"github.com/poolfs/poolfs/profile"
	"github.com/poolfs/poolfs/remote"
)

// Resolver is the registry side the store needs; *remote.Resolver is one.
type Resolver interface {
	ResolveBlob(ctx context.Context, ref string, dgst digest.Digest) (remote.LayerDesc, error)
	Referrers(ctx context.Context, ref string, subject digest.Digest, artifactType string) ([]remote.Referrer, error)
	ReadArtifact(ctx context.Context, ref string, d digest.Digest) (remote.Artifact, error)
	ReadBlob(ctx context.Context, ref string, d digest.Digest, size int64) ([]byte, error)
	PushArtifact(ctx context.Context, ref string, a remote.Artifact) (remote.Pushed, error)
	TaggedIndex(ctx context.Context, ref, tag string) ([]remote.Referrer, error)
	UpdateTaggedIndex(ctx context.Context, ref, tag string, update func([]remote.Referrer) []remote.Referrer) error
}

// Options tune a Registry; the zero value works.
type Options struct {
	// Timeout bounds one lookup (referrers, artifact manifest and blob);
	// 0 means 5s. A lookup is never waited for by a layer open; the bound
	// only keeps a stuck registry from holding connections.
	Timeout time.Duration
	// MissTTL is how long "no profile published for this image" (or a
	// lookup that failed) is believed; 0 means 10 minutes.
	MissTTL time.Duration
	Log     *logrus.Entry // nil: logrus.StandardLogger()
}

const (
	defaultTimeout = 5 * time.Second
	defaultMissTTL = 10 * time.Minute

	// hitTTL bounds how long a found Set is kept in memory: long enough
	// for every layer of the image to be opened, after which the pool has
	// the profiles it took.
	hitTTL = time.Hour

	// CreatedAnnotation orders an image's profile artifacts: the newest
	// is used.
	CreatedAnnotation = "org.opencontainers.image.created"
	// BlobAnnotation and BlobSizeAnnotation name the artifact's profile
	// blob in its manifest's annotations, which the referrers API (and
	// the referrers tag's index) repeat in the artifact's descriptor: a
	// lookup reads the blob right after the referrers, without the
	// artifact manifest's round trip. Artifacts without them (pushed by an
	// older poolfs) are read through their manifest.
	BlobAnnotation     = "io.poolfs.profile.blob"
	BlobSizeAnnotation = "io.poolfs.profile.blob.size"
	// InlineAnnotation carries the profile blob itself, gzip-compressed
	// and base64-encoded, when that is at most maxInline bytes: the
	// referrers answer then holds the profile, and the lookup, which a
	// layer's first reads wait on, takes no blob round trip. The blob is
	// pushed too, for readers that ignore the annotation; what is inlined
	// must match BlobAnnotation's digest, or the blob is read instead.
	InlineAnnotation = "io.poolfs.profile.inline"
	// maxInline bounds the annotation: every artifact of an image repeats
	// it in the image's referrers answer.
	maxInline = 32 << 10
	// createdFormat is RFC 3339 in UTC with fixed-width fractions, so that
	// the annotations sort as strings.
	createdFormat = "2006-01-02T15:04:05.000000000Z07:00"
)

// Registry finds and publishes profiles; safe for concurrent use.
type Registry struct {
	r       Resolver
	timeout time.Duration
	missTTL time.Duration
	log     *logrus.Entry

	mu     sync.Mutex
	images map[digest.Digest]found // by image manifest digest
	tags   map[string]*tagRead     // index tag readings by reference (see Expect)
	sf     singleflight.Group
}

// found is what one image's lookup found, a Set or nothing (miss), until
// expires.
type found struct {
	set     *profile.Set // nil: miss
	expires time.Time
}

// New returns a Registry that reaches registries through r.
func New(r Resolver, o Options) *Registry {
	if o.Timeout <= 0 {
		o.Timeout = defaultTimeout
	}
	if o.MissTTL <= 0 {
		o.MissTTL = defaultMissTTL
	}
	if o.Log == nil {
		o.Log = logrus.NewEntry(logrus.StandardLogger())
	}
	return &Registry{r: r, timeout: o.Timeout, missTTL: o.MissTTL, log: o.Log, images: map[digest.Digest]found{}, tags: map[string]*tagRead{}}
}

var _ profile.Source = (*Registry)(nil)

// Lookup returns the profile published for the layer blob of ref (through
// the referrers of the image manifest the layer is listed in), or nil if
// there is none. The image's lookup is made once and remembered (hits for an
// hour, misses and failures for MissTTL), so the other layers of the image
// and later opens cost no request. A profile whose TOC digest
// is not the layer's is foreign: ignored with a warning.
//
// The lookup itself runs detached from ctx (other layers of the image may
// wait for it) and is bounded by Options.Timeout; Lookup returns when ctx
// is done, and the lookup still fills the cache.
func (g *Registry) Lookup(ctx context.Context, ref string, blob, toc digest.Digest) (*profile.Profile, error) {
	ld, err := g.r.ResolveBlob(ctx, ref, blob)
	if err != nil {
		return nil, fmt.Errorf("profile lookup for %s of %s: %w", blob, ref, err)
	}
	if ld.Manifest == "" {
		return nil, nil
	}
	set, ok := g.cached(ld.Manifest)
	if !ok {
		ch := g.sf.DoChan(ld.Manifest.String(), func() (any, error) {
			if set, ok := g.cached(ld.Manifest); ok {
				return set, nil
			}
			lctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), g.timeout)
			defer cancel()
			set, err := g.fetch(lctx, ref, ld.Manifest)
			g.remember(ld.Manifest, set)
			return set, err
		})
		select {
		case res := <-ch:
			if res.Err != nil {
				return nil, res.Err
			}
			set = res.Val.(*profile.Set)
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	if set == nil {
		return nil, nil
	}
	p := set.Find(ld.Digest)
	if p == nil {
		return nil, nil
	}
	want := toc
	if want == "" {
		want, _ = layer.TOCDigestFromAnnotations(ld.Annotations)
	}
	if want != "" && p.TOC != want {
		g.log.WithFields(logrus.Fields{"ref": ref, "digest": blob, "toc_digest": want, "profile_toc": p.TOC}).
			Warn("published profile is for another TOC of this layer; ignoring it")
		return nil, nil
	}
	// The Set is cached and shared; the caller gets its own copy.
	cp := *p
	cp.Chunks = slices.Clone(p.Chunks)
	return &cp, nil
}

func (g *Registry) cached(manifest digest.Digest) (*profile.Set, bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	f, ok := g.images[manifest]
	if !ok {
		return nil, false
	}
	if time.Now().After(f.expires) {
		delete(g.images, manifest)
		return nil, false
	}
	return f.set, true
}

func (g *Registry) remember(manifest digest.Digest, set *profile.Set) {
	f := found{set: set, expires: time.Now().Add(hitTTL)}
	if set == nil {
		f.expires = time.Now().Add(g.missTTL)
	}
	now := time.Now()
	g.mu.Lock()
	defer g.mu.Unlock()
	// Entries are only looked at when their image is opened again, so
	// the expired ones (a Set can be megabytes) are dropped here.
	for m, e := range g.images {
		if now.After(e.expires) {
			delete(g.images, m)
		}
	}
	g.images[manifest] = f
}

// fetch finds the newest profile artifact attached to manifest and reads
// its Set. No artifact is (nil, nil); so is one that is malformed (with a
// warning): it is remembered as a miss either way.
func (g *Registry) fetch(ctx context.Context, ref string, manifest digest.Digest) (*profile.Set, error) {
	log := g.log.WithFields(logrus.Fields{"ref": ref, "manifest": manifest})
	start := time.Now()
	refs, via := g.fromIndexTag(ctx, ref, manifest, log), "index tag"
	if len(refs) == 0 {
		var err error
		if refs, err = g.r.Referrers(ctx, ref, manifest, profile.ArtifactType); err != nil {
			return nil, fmt.Errorf("profile lookup for %s: %w", ref, err)
		}
		via = "referrers"
	}
	log = log.WithField("via", via)
	if len(refs) == 0 {
		log.WithField("elapsed", time.Since(start).Round(time.Millisecond)).Debug("no profile published for the image")
		return nil, nil
	}
	newestFirst(refs)
	blob := announcedBlob(refs[0].Annotations)
	if blob == nil {
		art, err := g.r.ReadArtifact(ctx, ref, refs[0].Digest)
		if err != nil {
			return nil, fmt.Errorf("profile lookup for %s: %w", ref, err)
		}
		for i := range art.Blobs {
			if art.Blobs[i].MediaType == profile.MediaType {
				blob = &art.Blobs[i]
				break
			}
		}
	}
	if blob == nil || blob.Size > profile.MaxEncoded {
		log.WithField("artifact", refs[0].Digest).Warn("published profile artifact has no profile blob of a sane size; ignoring it")
		return nil, nil
	}
	data, err := inlined(refs[0].Annotations, *blob)
	if err != nil {
		if refs[0].Annotations[InlineAnnotation] != "" {
			log.WithField("artifact", refs[0].Digest).WithError(err).Warn("inlined profile unusable; reading its blob")
		}
		data, err = g.r.ReadBlob(ctx, ref, blob.Digest, blob.Size)
		if err != nil {
			return nil, fmt.Errorf("profile lookup for %s: %w", ref, err)
		}
	}
	set, err := profile.UnmarshalSet(data)
	if err != nil {
		log.WithField("artifact", refs[0].Digest).WithError(err).Warn("published profile is malformed; ignoring it")
		return nil, nil
	}
	log.WithFields(logrus.Fields{"artifact": refs[0].Digest, "layers": len(set.Profiles),
		"elapsed": time.Since(start).Round(time.Millisecond)}).Info("published profile found")
	return &set, nil
}

// newestFirst sorts profile artifacts by their created annotation, the
// newest first (RFC 3339 times in UTC sort as strings).
func newestFirst(refs []remote.Referrer) {
	sort.SliceStable(refs, func(i, j int) bool {
		return refs[i].Annotations[CreatedAnnotation] > refs[j].Annotations[CreatedAnnotation]
	})
}

// announcedBlob is the profile blob an artifact's annotations name (see
// BlobAnnotation), or nil if they name none or name it badly.
func announcedBlob(a map[string]string) *remote.ArtifactBlob {
	d, err := digest.Parse(a[BlobAnnotation])
	if err != nil {
		return nil
	}
	size, err := strconv.ParseInt(a[BlobSizeAnnotation], 10, 64)
	if err != nil || size <= 0 {
		return nil
	}
	return &remote.ArtifactBlob{MediaType: profile.MediaType, Digest: d, Size: size}
}

// inline encodes a profile blob for InlineAnnotation, or returns "" when
// it would be over maxInline.
func inline(data []byte) string {
	var b bytes.Buffer
	zw := gzip.NewWriter(&b)
	if _, err := zw.Write(data); err != nil || zw.Close() != nil {
		return ""
	}
	if base64.StdEncoding.EncodedLen(b.Len()) > maxInline {
		return ""
	}
	return base64.StdEncoding.EncodeToString(b.Bytes())
}

// inlined decodes the profile blob an artifact's annotations carry (see
// InlineAnnotation), checked against blob, the digest and size they
// announce. The annotation comes from the registry's referrers answer,
// unverified, so nothing in it is trusted before the digest matches.
func inlined(a map[string]string, blob remote.ArtifactBlob) ([]byte, error) {
	enc := a[InlineAnnotation]
	if enc == "" {
		return nil, errors.New("no inlined profile")
	}
	if len(enc) > maxInline {
		return nil, fmt.Errorf("inlined profile of %d bytes, more than %d", len(enc), maxInline)
	}
	gz, err := base64.StdEncoding.DecodeString(enc)
	if err != nil {
		return nil, fmt.Errorf("decoding the inlined profile: %w", err)
	}
	zr, err := gzip.NewReader(bytes.NewReader(gz))
	if err != nil {
		return nil, fmt.Errorf("decompressing the inlined profile: %w", err)
	}
	data, err := io.ReadAll(io.LimitReader(zr, blob.Size+1))
	if err != nil {
		return nil, fmt.Errorf("decompressing the inlined profile: %w", err)
	}
	if int64(len(data)) != blob.Size || digest.FromBytes(data) != blob.Digest {
		return nil, fmt.Errorf("inlined profile is not blob %s (%d bytes)", blob.Digest, blob.Size)
	}
	return data, nil
}

// Push publishes set as a profile artifact of the image manifest ref
// resolves to (the platform's, for an index), in ref's registry, and
// remembers it as that image's profile. An empty set is refused.
func (g *Registry) Push(ctx context.Context, ref string, set profile.Set) (remote.Pushed, error) {
	if len(set.Profiles) == 0 {
		return remote.Pushed{}, errors.New("push profiles: no profile to push")
	}
	// Every profile must be of a layer of the image the artifact will
	// refer to: a tag that moved since the layers were served would
	// otherwise get profiles of another image.
	var subject digest.Digest
	for _, p := range set.Profiles {
		ld, err := g.r.ResolveBlob(ctx, ref, p.Blob)
		if err != nil {
			return remote.Pushed{}, fmt.Errorf("push profiles: %w", err)
		}
		if d, _ := layer.TOCDigestFromAnnotations(ld.Annotations); d != "" && d != p.TOC {
			return remote.Pushed{}, fmt.Errorf("push profiles: layer %s of %s: profile for TOC %s, the manifest says %s", p.Blob, ref, p.TOC, d)
		}
		subject = ld.Manifest
	}
	data, err := profile.MarshalSet(set)
	if err != nil {
		return remote.Pushed{}, fmt.Errorf("push profiles: %w", err)
	}
	annotations := map[string]string{
		CreatedAnnotation:  time.Now().UTC().Format(createdFormat),
		BlobAnnotation:     digest.FromBytes(data).String(),
		BlobSizeAnnotation: strconv.Itoa(len(data)),
	}
	if enc := inline(data); enc != "" {
		annotations[InlineAnnotation] = enc
	}
	pushed, err := g.r.PushArtifact(ctx, ref, remote.Artifact{
		ArtifactType: profile.ArtifactType,
		Annotations:  annotations,
		Blobs:        []remote.ArtifactBlob{{MediaType: profile.MediaType, Data: data}},
	})
	if err != nil {
		return remote.Pushed{}, fmt.Errorf("push profiles: %w", err)
	}
	if pushed.Subject != subject {
		// ref moved between the checks and the push (a tag, 30 s TTL).
		g.log.WithFields(logrus.Fields{"ref": ref, "subject": pushed.Subject, "checked": subject}).
			Warn("image changed while its profiles were pushed; the artifact may list layers it does not have")
	}
	if err := g.updateIndexTag(ctx, ref, pushed, annotations); err != nil {
		// The artifact is published: daemons find it through the
		// referrers, a round trip later than through the tag.
		g.log.WithFields(logrus.Fields{"ref": ref, "artifact": pushed.Digest}).WithError(err).
			Warn("profile pushed, but its index tag could not be written")
	}
	g.remember(pushed.Subject, &set)
	return pushed, nil
}
