package remote

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"regexp"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	ggcr "github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
	digest "github.com/opencontainers/go-digest"
)

// An index under a tag of the caller's choosing, beside an image: a list
// of descriptors (artifacts of the repository) that can be read knowing
// only the reference, before its manifest is fetched. The referrers of an
// image need its manifest's digest, which for a tag costs a round trip
// first; a caller that names such an index after the reference's tag
// finds what it lists in parallel with the manifest.

// TaggedIndex reads the OCI index tagged tag in ref's repository, asking
// ref's endpoints in order (mirrors first, as Tail) until one has it. No
// index there is an empty list, not an error. It needs no manifest of ref,
// so it can run beside the manifest's fetch; like Referrers it makes one
// attempt per endpoint, for a hint.
//
// The descriptors are the registry's word: nothing they point at is
// verified here.
func (r *Resolver) TaggedIndex(ctx context.Context, ref, tag string) ([]Referrer, error) {
	if !ValidTag(tag) {
		return nil, fmt.Errorf("index tag %q of %s: not a valid tag", tag, ref)
	}
	eps, err := r.endpoints(ref)
	if err != nil {
		return nil, fmt.Errorf("index tag %s of %s: %w", tag, ref, err)
	}
	var errs []error
	for _, ep := range eps {
		idx, err := r.taggedIndexFrom(ctx, ep.Context(), tag)
		switch {
		case err != nil:
			errs = append(errs, fmt.Errorf("%s: %w", ep.Context(), err))
			if ctx.Err() != nil {
				return nil, fmt.Errorf("index tag %s of %s: %w", tag, ref, errors.Join(errs...))
			}
		case idx != nil:
			return descriptorsOf(idx), nil
		}
	}
	if len(errs) == len(eps) {
		return nil, fmt.Errorf("index tag %s of %s: %w", tag, ref, errors.Join(errs...))
	}
	return nil, nil
}

// tagPattern is a tag as the distribution spec allows it.
var tagPattern = regexp.MustCompile(`^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}$`)

// ValidTag says tag can name a manifest in a registry.
func ValidTag(tag string) bool { return tagPattern.MatchString(tag) }

// taggedIndexFrom reads the OCI index tagged tag in repo, in one attempt;
// nil (no error) if repo has no such tag. A 401 or 403 drops repo's
// credentials, so that the next request renews them.
func (r *Resolver) taggedIndexFrom(ctx context.Context, repo name.Repository, tag string) (*v1.IndexManifest, error) {
	e, err := r.authFor(ctx, repo)
	if err != nil {
		return nil, err
	}
	u := registryURL(repo, "manifests", tag)
	body, ct, status, err := getSmall(ctx, e.client, u.String(), string(types.OCIImageIndex), maxArtifactManifest)
	switch {
	case err != nil:
		return nil, err
	case status == http.StatusNotFound:
		return nil, nil
	case status != http.StatusOK:
		err := &StatusError{StatusCode: status}
		r.dropAuthOn(err, repo, e)
		return nil, err
	case ct != string(types.OCIImageIndex):
		return nil, fmt.Errorf("tag %s is %q, not an index", tag, ct)
	}
	return parseIndex(body)
}

// descriptorsOf lists idx's entries with a valid digest.
func descriptorsOf(idx *v1.IndexManifest) []Referrer {
	var out []Referrer
	for _, d := range idx.Manifests {
		dg := digest.Digest(d.Digest.String())
		if dg.Validate() != nil {
			continue
		}
		out = append(out, Referrer{Digest: dg, Size: d.Size, MediaType: string(d.MediaType), ArtifactType: d.ArtifactType, Annotations: d.Annotations})
	}
	return out
}

// UpdateTaggedIndex rewrites the index tagged tag in the repository ref's
// artifacts are pushed to (see PushArtifact): update gets what the index
// lists now (nothing if there is none) and returns what it is to list.
// The entries must be manifests of that repository: registries check.
// Concurrent updates of one tag race; the last one wins.
func (r *Resolver) UpdateTaggedIndex(ctx context.Context, ref, tag string, update func([]Referrer) []Referrer) error {
	eps, err := r.endpoints(ref)
	if err != nil {
		return fmt.Errorf("update index tag %s of %s: %w", tag, ref, err)
	}
	repo := eps[len(eps)-1].Context()
	t, err := name.NewTag(repo.Name()+":"+tag, name.StrictValidation)
	if err != nil {
		return fmt.Errorf("update index tag %q of %s: %w", tag, ref, err)
	}
	old, err := r.taggedIndexFrom(ctx, repo, tag)
	if err != nil {
		return fmt.Errorf("update index tag %s of %s: reading it from %s: %w", tag, ref, repo, err)
	}
	var was []Referrer
	if old != nil {
		was = descriptorsOf(old)
	}
	idx := v1.IndexManifest{SchemaVersion: 2, MediaType: types.OCIImageIndex, Manifests: []v1.Descriptor{}}
	for _, e := range update(was) {
		h, err := v1.NewHash(e.Digest.String())
		if err != nil {
			return fmt.Errorf("update index tag %s of %s: entry %q: %w", tag, ref, e.Digest, err)
		}
		idx.Manifests = append(idx.Manifests, v1.Descriptor{MediaType: types.MediaType(e.MediaType), Size: e.Size,
			Digest: h, ArtifactType: e.ArtifactType, Annotations: e.Annotations})
	}
	raw, err := json.Marshal(idx)
	if err != nil {
		return fmt.Errorf("update index tag %s of %s: %w", tag, ref, err)
	}
	rt, err := r.pushTransport(ctx, repo)
	if err != nil {
		return err
	}
	if err := ggcr.Put(t, rawIndex(raw), ggcr.WithContext(ctx), ggcr.WithTransport(rt)); err != nil {
		return fmt.Errorf("update index tag %s of %s: %w", tag, ref, fromTransportError(err))
	}
	return nil
}

// rawIndex is an OCI index for ggcr's Put.
type rawIndex []byte

func (m rawIndex) RawManifest() ([]byte, error)        { return m, nil }
func (m rawIndex) MediaType() (types.MediaType, error) { return types.OCIImageIndex, nil }
