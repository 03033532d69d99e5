package remote

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	ggcr "github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
	digest "github.com/opencontainers/go-digest"
	"github.com/sirupsen/logrus"
)

// fetchImage fetches ref's manifest (walking indexes down to the
// configured platform) and lists the layers. Their diff IDs come from the
// config, which is fetched apart (see imageEntry.diffIDs) so that a layer
// can be opened while it is on the way.
func (r *Resolver) fetchImage(ctx context.Context, ref name.Reference) (*imageEntry, error) {
	repo := ref.Context()
	log := r.s.log.WithField("ref", ref.String())

	raw, mt, err := r.getManifest(ctx, ref, log)
	if err != nil {
		return nil, err
	}
	var index []byte // the index ref named, if it named one
	for depth := 0; ; depth++ {
		kind := manifestKind(mt, raw)
		if kind == kindImage {
			break
		}
		if kind != kindIndex {
			return nil, fmt.Errorf("manifest of %s has unsupported media type %q", ref, mt)
		}
		if depth >= maxIndexDepth {
			return nil, fmt.Errorf("manifest of %s: indexes nested deeper than %d", ref, maxIndexDepth)
		}
		idx, err := v1.ParseIndexManifest(bytes.NewReader(raw))
		if err != nil {
			return nil, fmt.Errorf("parse index of %s: %w", ref, err)
		}
		child, ok := pickChild(idx, r.s.platform)
		if !ok {
			return nil, fmt.Errorf("index of %s has no image for platform %s", ref, r.s.platform.String())
		}
		log.WithField("manifest", child.Digest.String()).Debug("index resolved to platform image")
		index = raw
		raw, mt, err = r.getManifest(ctx, repo.Digest(child.Digest.String()), log)
		if err != nil {
			return nil, err
		}
	}

	mf, err := v1.ParseManifest(bytes.NewReader(raw))
	if err != nil {
		return nil, fmt.Errorf("parse manifest of %s: %w", ref, err)
	}
	if err := checkConfig(ref, mf.Config); err != nil {
		return nil, err
	}
	layers := make([]LayerDesc, len(mf.Layers))
	for i, l := range mf.Layers {
		ld := LayerDesc{
			Digest:      digest.Digest(l.Digest.String()),
			Size:        l.Size,
			MediaType:   string(l.MediaType),
			Annotations: l.Annotations,
		}
		layers[i] = ld
	}
	self, err := manifestDescriptor(raw, mt, mf)
	if err != nil {
		return nil, fmt.Errorf("manifest of %s: %w", ref, err)
	}
	for i := range layers {
		layers[i].Manifest = digest.Digest(self.Digest.String())
	}
	return &imageEntry{layers: layers, config: mf.Config, from: ref, subject: self, manifest: raw, mediaType: mt, index: index}, nil
}

// manifestDescriptor describes an image manifest as a subject descriptor:
// the digest of the bytes as served (ggcr has checked a digest reference
// against them), and a manifest media type even when the registry served
// it as application/json.
func manifestDescriptor(raw []byte, mt types.MediaType, mf *v1.Manifest) (v1.Descriptor, error) {
	h, _, err := v1.SHA256(bytes.NewReader(raw))
	if err != nil {
		return v1.Descriptor{}, err
	}
	if mt != types.DockerManifestSchema2 && mt != types.OCIManifestSchema1 {
		mt = mf.MediaType
		if mt == "" {
			mt = types.OCIManifestSchema1
		}
	}
	return v1.Descriptor{MediaType: mt, Size: int64(len(raw)), Digest: h}, nil
}

// getManifest fetches one manifest with ggcr (Accept headers, digest
// verification) over our cached authenticated transport, with our retries.
func (r *Resolver) getManifest(ctx context.Context, ref name.Reference, log *logrus.Entry) ([]byte, types.MediaType, error) {
	repo := ref.Context()
	log = log.WithField("manifest", ref.Identifier())
	var (
		desc *ggcr.Descriptor
		used *authEntry
	)
	err := r.retry(ctx, log, func() { r.dropAuth(repo, used) }, func(actx context.Context) error {
		used = nil
		e, err := r.authFor(actx, repo)
		if err != nil {
			return err
		}
		used = e
		d, err := ggcr.Get(ref,
			ggcr.WithContext(actx),
			ggcr.WithTransport(e.rt),
			ggcr.WithPlatform(r.s.platform))
		if err != nil {
			return fromTransportError(err)
		}
		desc = d
		return nil
	})
	if err != nil {
		return nil, "", fmt.Errorf("fetch manifest %s: %w", ref, err)
	}
	return desc.Manifest, desc.MediaType, nil
}

// diffIDs fetches and parses the image config for rootfs.diff_ids. A config
// that is not an image config (artifacts) yields nil: diff IDs unknown.
func (r *Resolver) diffIDs(ctx context.Context, ref name.Reference, cfg v1.Descriptor, log *logrus.Entry) ([]v1.Hash, error) {
	raw, err := r.configBytes(ctx, ref, cfg, log)
	if err != nil {
		return nil, err
	}
	return parseDiffIDs(raw, digest.Digest(cfg.Digest.String()), log), nil
}

// parseDiffIDs reads rootfs.diff_ids from a config; nil if it is not an
// image config.
func parseDiffIDs(raw []byte, dgst digest.Digest, log *logrus.Entry) []v1.Hash {
	cf, err := v1.ParseConfigFile(bytes.NewReader(raw))
	if err != nil {
		log.WithField("digest", dgst).WithError(err).Warn("config is not an image config; diff IDs unknown")
		return nil
	}
	if cf.RootFS.DiffIDs == nil {
		return []v1.Hash{}
	}
	return cf.RootFS.DiffIDs
}

// configBytes fetches the config blob cfg describes and verifies it.
func (r *Resolver) configBytes(ctx context.Context, ref name.Reference, cfg v1.Descriptor, log *logrus.Entry) ([]byte, error) {
	if err := checkConfig(ref, cfg); err != nil {
		return nil, err
	}
	dgst := digest.Digest(cfg.Digest.String())
	// OCI allows the config to be embedded in the manifest; use it if it
	// checks out, saving a round trip.
	raw := cfg.Data
	if int64(len(raw)) == cfg.Size && verified(dgst, raw) {
		return raw, nil
	}
	b, err := r.newBlob(ref.String(), dgst, cfg.Size, ref.Context())
	if err != nil {
		return nil, err
	}
	raw = make([]byte, cfg.Size)
	// A config spoiled in transit is fetched again: the transport
	// retries only cover errors it can see, not wrong bytes.
	for attempt := 1; ; attempt++ {
		if _, err := b.readFull(ctx, raw, 0, func(int) {}); err != nil {
			return nil, fmt.Errorf("fetch config: %w", err)
		}
		if verified(dgst, raw) {
			return raw, nil
		}
		if attempt >= configAttempts {
			return nil, fmt.Errorf("config %s of %s: content does not match digest (%d attempts)", dgst, ref, attempt)
		}
		log.WithFields(logrus.Fields{"digest": dgst, "attempt": attempt}).Warn("config does not match its digest; fetching it again")
	}
}

// checkConfig refuses a manifest whose config descriptor cannot be
// fetched, before the manifest is cached: such a manifest is junk.
func checkConfig(ref name.Reference, cfg v1.Descriptor) error {
	dgst := digest.Digest(cfg.Digest.String())
	if err := dgst.Validate(); err != nil {
		return fmt.Errorf("config of %s: bad digest %q: %w", ref, dgst, err)
	}
	if cfg.Size <= 0 || cfg.Size > maxConfigSize {
		return fmt.Errorf("config %s of %s: unreasonable size %d", dgst, ref, cfg.Size)
	}
	return nil
}

type manifestType int

const (
	kindUnknown manifestType = iota
	kindImage
	kindIndex
)

// manifestKind decides image vs index from the Content-Type, falling back
// to the body for registries that serve manifests as application/json.
func manifestKind(mt types.MediaType, raw []byte) manifestType {
	switch mt {
	case types.DockerManifestSchema2, types.OCIManifestSchema1:
		return kindImage
	case types.DockerManifestList, types.OCIImageIndex:
		return kindIndex
	case types.DockerManifestSchema1, types.DockerManifestSchema1Signed:
		return kindUnknown
	}
	var probe struct {
		SchemaVersion int             `json:"schemaVersion"`
		MediaType     types.MediaType `json:"mediaType"`
		Manifests     json.RawMessage `json:"manifests"`
		Layers        json.RawMessage `json:"layers"`
	}
	if err := json.Unmarshal(raw, &probe); err != nil || probe.SchemaVersion != 2 {
		return kindUnknown
	}
	if probe.MediaType != "" && probe.MediaType != mt {
		return manifestKind(probe.MediaType, nil)
	}
	switch {
	case probe.Manifests != nil:
		return kindIndex
	case probe.Layers != nil:
		return kindImage
	}
	return kindUnknown
}

func verified(d digest.Digest, data []byte) bool {
	v := d.Verifier()
	_, _ = v.Write(data)
	return v.Verified()
}
