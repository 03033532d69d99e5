package remote

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	ggcr "github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
	digest "github.com/opencontainers/go-digest"
	"github.com/sirupsen/logrus"
)

// Referrers of an image manifest (OCI 1.1): artifacts whose manifest names
// the image manifest as its subject. remote moves their bytes; what the
// blobs mean is the caller's business.

// Referrer is one artifact that refers to a subject, as the registry lists
// it (the referrers API or the referrers tag's index).
type Referrer struct {
	Digest       digest.Digest // the artifact's manifest
	Size         int64
	MediaType    string
	ArtifactType string
	Annotations  map[string]string
}

// ArtifactBlob is one blob of an artifact. Data is set when pushing;
// Digest and Size when reading (ReadArtifact), to fetch it with ReadBlob.
type ArtifactBlob struct {
	MediaType   string
	Annotations map[string]string
	Data        []byte
	Digest      digest.Digest
	Size        int64
}

// Artifact is an OCI artifact manifest's content: its type, annotations and
// blobs (the manifest's layers).
type Artifact struct {
	ArtifactType string
	Annotations  map[string]string
	Blobs        []ArtifactBlob
}

// Pushed says where PushArtifact put an artifact.
type Pushed struct {
	Repository string        // the repository pushed to, e.g. "registry.example/app"
	Subject    digest.Digest // the image manifest the artifact refers to
	Digest     digest.Digest // the artifact's manifest
	Size       int64         // of the artifact's manifest
	MediaType  string        // of the artifact's manifest
}

const (
	// maxArtifactManifest and maxArtifactBlob bound what a hostile or
	// broken registry can make us buffer for an artifact.
	maxArtifactManifest = 4 << 20
	maxArtifactBlob     = 64 << 20

	// emptyJSON is the OCI empty descriptor's content, the config of an
	// artifact that has nothing to configure.
	emptyJSON = "{}"

	// noReferrersAPITTL is how long a registry that answered the
	// referrers API with "no such endpoint" is sent straight to the
	// referrers tag: one request per lookup instead of two.
	noReferrersAPITTL = time.Hour
)

// artifactManifest is an OCI image manifest carrying an artifact (image
// spec 1.1), with its subject.
type artifactManifest struct {
	SchemaVersion int               `json:"schemaVersion"`
	MediaType     types.MediaType   `json:"mediaType"`
	ArtifactType  string            `json:"artifactType,omitempty"`
	Config        v1.Descriptor     `json:"config"`
	Layers        []v1.Descriptor   `json:"layers"`
	Subject       *v1.Descriptor    `json:"subject,omitempty"`
	Annotations   map[string]string `json:"annotations,omitempty"`
}

// servedFrom resolves ref (through the image cache) and returns the
// repository of the endpoint that served its manifest.
func (r *Resolver) servedFrom(ctx context.Context, ref string) (name.Repository, error) {
	img, _, err := r.imageOf(ctx, ref)
	if err != nil {
		return name.Repository{}, err
	}
	return img.from.Context(), nil
}

// PushArtifact attaches a to the image manifest ref resolves to (the
// platform's, for an index, as the daemon resolves it): it uploads a's
// blobs and an artifact manifest whose subject is that image manifest,
// by digest (no tag). A registry without the referrers API gets the
// referrers tag (<alg>-<hex>) updated to list the artifact.
//
// It pushes to the registry ref names (after a registries.conf location
// rewrite; never to a mirror) with credentials for push from the keychain.
func (r *Resolver) PushArtifact(ctx context.Context, ref string, a Artifact) (Pushed, error) {
	img, _, err := r.imageOf(ctx, ref)
	if err != nil {
		return Pushed{}, fmt.Errorf("push artifact: %w", err)
	}
	eps, err := r.endpoints(ref)
	if err != nil {
		return Pushed{}, fmt.Errorf("push artifact: %w", err)
	}
	repo := eps[len(eps)-1].Context()
	log := r.s.log.WithFields(logrus.Fields{"ref": ref, "repository": repo.Name(), "subject": img.subject.Digest.String()})

	subject := img.subject
	raw, blobs, err := a.manifest(subject)
	if err != nil {
		return Pushed{}, fmt.Errorf("push artifact to %s: %w", repo, err)
	}
	rt, err := r.pushTransport(ctx, repo)
	if err != nil {
		return Pushed{}, err
	}
	opts := []ggcr.Option{ggcr.WithContext(ctx), ggcr.WithTransport(rt)}
	for _, b := range blobs {
		// The media type given here is not sent: a blob is just bytes.
		if err := ggcr.WriteLayer(repo, static.NewLayer(b, "application/octet-stream"), opts...); err != nil {
			return Pushed{}, fmt.Errorf("push artifact blob to %s: %w", repo, fromTransportError(err))
		}
	}
	// ggcr's Put also keeps the referrers tag of a registry without the
	// referrers API up to date.
	mdgst := digest.FromBytes(raw)
	if err := ggcr.Put(repo.Digest(mdgst.String()), rawManifest(raw), opts...); err != nil {
		return Pushed{}, fmt.Errorf("push artifact manifest to %s: %w", repo, fromTransportError(err))
	}
	log.WithFields(logrus.Fields{"digest": mdgst, "artifact_type": a.ArtifactType, "blobs": len(a.Blobs)}).Info("artifact pushed")
	return Pushed{Repository: repo.Name(), Subject: digest.Digest(subject.Digest.String()), Digest: mdgst,
		Size: int64(len(raw)), MediaType: string(types.OCIManifestSchema1)}, nil
}

// manifest builds a's manifest referring to subject, and lists the blobs
// to upload (the empty config first).
func (a Artifact) manifest(subject v1.Descriptor) ([]byte, [][]byte, error) {
	if a.ArtifactType == "" {
		return nil, nil, errors.New("artifact has no type")
	}
	// The config is the empty JSON, but typed with the artifact type as
	// well as artifactType: registries that predate image spec 1.1 (and
	// ggcr's own registry) list a referrer's type from config.mediaType.
	uploads := [][]byte{[]byte(emptyJSON)}
	m := artifactManifest{
		SchemaVersion: 2,
		MediaType:     types.OCIManifestSchema1,
		ArtifactType:  a.ArtifactType,
		Config:        v1.Descriptor{MediaType: types.MediaType(a.ArtifactType), Size: int64(len(emptyJSON)), Digest: mustHashOf(digest.FromString(emptyJSON))},
		Layers:        make([]v1.Descriptor, 0, len(a.Blobs)),
		Subject:       &subject,
		Annotations:   a.Annotations,
	}
	for i, b := range a.Blobs {
		if b.MediaType == "" {
			return nil, nil, fmt.Errorf("artifact blob %d has no media type", i)
		}
		d := digest.FromBytes(b.Data)
		m.Layers = append(m.Layers, v1.Descriptor{MediaType: types.MediaType(b.MediaType), Size: int64(len(b.Data)), Digest: mustHashOf(d), Annotations: b.Annotations})
		uploads = append(uploads, b.Data)
	}
	raw, err := json.Marshal(m)
	return raw, uploads, err
}

// rawManifest is an artifact manifest for ggcr's Put.
type rawManifest []byte

func (m rawManifest) RawManifest() ([]byte, error)        { return m, nil }
func (m rawManifest) MediaType() (types.MediaType, error) { return types.OCIManifestSchema1, nil }

// pushTransport authenticates to repo for pushing. Pushes are rare, so the
// handshake is not cached (the pull transports are, in authFor).
func (r *Resolver) pushTransport(ctx context.Context, repo name.Repository) (http.RoundTripper, error) {
	auth, err := authn.Resolve(ctx, r.s.keychain, repo)
	if err != nil {
		return nil, fmt.Errorf("look up credentials for %s: %w", repo, err)
	}
	rt, err := transport.NewWithContext(ctx, repo.Registry, auth, r.base, []string{repo.Scope(transport.PushScope)})
	if err != nil {
		return nil, fmt.Errorf("authenticate to %s for pushing: %w", repo, fromTransportError(err))
	}
	return rt, nil
}

func mustHashOf(d digest.Digest) v1.Hash {
	h, err := v1.NewHash(d.String())
	if err != nil {
		panic(fmt.Sprintf("digest %q from go-digest is not a v1.Hash: %v", d, err))
	}
	return h
}

// Referrers lists the artifacts of type artifactType ("" for any) that
// refer to the image manifest subject in ref's repository, at the endpoint
// that served ref's manifest (so a lookup costs no handshake the layer did
// not already make). It asks the referrers API
// (GET /v2/<name>/referrers/<digest>?artifactType=...) and, on a registry
// without it, reads the referrers tag's index; a registry seen without the
// API goes straight to the tag for an hour. None at all is an empty list,
// not an error.
//
// A lookup is a hint, so it makes one attempt, no retries: the caller
// bounds it with ctx and remembers a failure like a miss.
func (r *Resolver) Referrers(ctx context.Context, ref string, subject digest.Digest, artifactType string) ([]Referrer, error) {
	if err := subject.Validate(); err != nil {
		return nil, fmt.Errorf("referrers of %q: %w", subject, err)
	}
	repo, err := r.servedFrom(ctx, ref)
	if err != nil {
		return nil, fmt.Errorf("referrers of %s: %w", subject, err)
	}
	e, err := r.authFor(ctx, repo)
	if err != nil {
		return nil, fmt.Errorf("referrers of %s in %s: %w", subject, repo, err)
	}
	var idx *v1.IndexManifest
	host := repo.RegistryStr()
	if !r.noReferrersAPI(host) {
		idx, err = r.referrersAPI(ctx, e.client, repo, subject, artifactType)
		if errors.Is(err, errNoReferrersAPI) {
			r.markNoReferrersAPI(host)
		} else if err != nil {
			r.dropAuthOn(err, repo, e)
			return nil, fmt.Errorf("referrers of %s in %s: %w", subject, repo, err)
		}
	}
	if idx == nil {
		if idx, err = r.taggedIndexFrom(ctx, repo, referrersTag(subject)); err != nil {
			return nil, fmt.Errorf("referrers of %s in %s (referrers tag): %w", subject, repo, err)
		}
		if idx == nil {
			idx = &v1.IndexManifest{} // no tag: no referrers
		}
	}
	// Registries need not filter (and ggcr's does not); the tag's index
	// never is.
	out := descriptorsOf(idx)
	if artifactType != "" {
		out = slices.DeleteFunc(out, func(d Referrer) bool { return d.ArtifactType != artifactType })
	}
	return out, nil
}

// dropAuthOn forgets e after a 401 or 403, so that the next request, which
// a single-attempt lookup leaves to its next caller, renews the token.
func (r *Resolver) dropAuthOn(err error, repo name.Repository, e *authEntry) {
	if classify(err).unauthorized {
		r.dropAuth(repo, e)
	}
}

var errNoReferrersAPI = errors.New("registry has no referrers API")

// referrersAPI asks the referrers endpoint. errNoReferrersAPI means the
// registry does not have it (404, 400 or 406, or an answer that is not an
// index, which is how the distribution spec tells clients to fall back).
func (r *Resolver) referrersAPI(ctx context.Context, c *http.Client, repo name.Repository, subject digest.Digest, artifactType string) (*v1.IndexManifest, error) {
	u := registryURL(repo, "referrers", subject.String())
	if artifactType != "" {
		u.RawQuery = url.Values{"artifactType": {artifactType}}.Encode()
	}
	var all *v1.IndexManifest
	// A registry may answer in pages, each naming the next in a Link
	// header (distribution spec); they are followed on the same registry,
	// up to maxReferrersPages.
	for page := 0; u != nil && page < maxReferrersPages; page++ {
		body, ct, status, next, err := getPage(ctx, c, u, string(types.OCIImageIndex), maxArtifactManifest)
		if err != nil {
			return nil, err
		}
		switch {
		case page > 0 && status != http.StatusOK:
			return nil, fmt.Errorf("referrers page %d: %w", page+1, &StatusError{StatusCode: status})
		case status == http.StatusNotFound, status == http.StatusBadRequest, status == http.StatusNotAcceptable:
			return nil, errNoReferrersAPI
		case status != http.StatusOK:
			return nil, &StatusError{StatusCode: status}
		case ct != string(types.OCIImageIndex):
			if page > 0 {
				return nil, fmt.Errorf("referrers page %d is %q, not an index", page+1, ct)
			}
			return nil, errNoReferrersAPI
		}
		idx, err := parseIndex(body)
		if err != nil {
			return nil, err
		}
		if all == nil {
			all = idx
		} else {
			all.Manifests = append(all.Manifests, idx.Manifests...)
		}
		u = next
	}
	return all, nil
}

// maxReferrersPages bounds the pages of one referrers answer followed.
const maxReferrersPages = 16

// nextPage is the rel="next" target of a Link header of the answer to u,
// resolved against u; nil if there is none, or it leads to another host
// (the registry's credentials are not sent elsewhere).
func nextPage(h http.Header, u *url.URL) *url.URL {
	for _, link := range h.Values("Link") {
		for _, part := range strings.Split(link, ",") {
			target, params, ok := strings.Cut(strings.TrimSpace(part), ";")
			if !ok || !strings.HasPrefix(target, "<") || !strings.HasSuffix(target, ">") {
				continue
			}
			isNext := false
			for _, p := range strings.Split(params, ";") {
				k, v, _ := strings.Cut(strings.TrimSpace(p), "=")
				if strings.EqualFold(k, "rel") && slices.Contains(strings.Fields(strings.Trim(v, `"`)), "next") {
					isNext = true
				}
			}
			if !isNext {
				continue
			}
			next, err := u.Parse(target[1 : len(target)-1])
			if err != nil || next.Host != u.Host {
				return nil
			}
			if next.Scheme != u.Scheme {
				next.Scheme = u.Scheme
			}
			return next
		}
	}
	return nil
}

// referrersTag is the tag the referrers tag schema keeps a subject's
// referrers under: the digest with ':' replaced by '-'.
func referrersTag(subject digest.Digest) string {
	return strings.Replace(subject.String(), ":", "-", 1)
}

func parseIndex(body []byte) (*v1.IndexManifest, error) {
	idx, err := v1.ParseIndexManifest(bytes.NewReader(body))
	if err != nil {
		return nil, fmt.Errorf("parse referrers index: %w", err)
	}
	return idx, nil
}

func (r *Resolver) noReferrersAPI(host string) bool {
	r.refMu.Lock()
	defer r.refMu.Unlock()
	at, ok := r.noRefAPI[host]
	if ok && time.Since(at) > noReferrersAPITTL {
		delete(r.noRefAPI, host)
		return false
	}
	return ok
}

func (r *Resolver) markNoReferrersAPI(host string) {
	r.refMu.Lock()
	defer r.refMu.Unlock()
	if r.noRefAPI == nil {
		r.noRefAPI = map[string]time.Time{}
	}
	r.noRefAPI[host] = time.Now()
}

// ReadArtifact fetches the artifact manifest d from ref's repository (the
// endpoint that served ref's manifest) and returns its blobs' descriptors
// (no data: fetch the ones wanted with ReadBlob).
func (r *Resolver) ReadArtifact(ctx context.Context, ref string, d digest.Digest) (Artifact, error) {
	if err := d.Validate(); err != nil {
		return Artifact{}, fmt.Errorf("read artifact %q: %w", d, err)
	}
	repo, err := r.servedFrom(ctx, ref)
	if err != nil {
		return Artifact{}, fmt.Errorf("read artifact %s: %w", d, err)
	}
	e, err := r.authFor(ctx, repo)
	if err != nil {
		return Artifact{}, fmt.Errorf("read artifact %s in %s: %w", d, repo, err)
	}
	u := registryURL(repo, "manifests", d.String())
	body, _, status, err := getSmall(ctx, e.client, u.String(), string(types.OCIManifestSchema1), maxArtifactManifest)
	if err == nil && status != http.StatusOK {
		err = &StatusError{StatusCode: status}
		r.dropAuthOn(err, repo, e)
	}
	if err != nil {
		return Artifact{}, fmt.Errorf("read artifact %s in %s: %w", d, repo, err)
	}
	if !verified(d, body) {
		return Artifact{}, fmt.Errorf("read artifact %s in %s: manifest does not match its digest", d, repo)
	}
	var m artifactManifest
	if err := json.Unmarshal(body, &m); err != nil {
		return Artifact{}, fmt.Errorf("read artifact %s in %s: %w", d, repo, err)
	}
	a := Artifact{ArtifactType: m.ArtifactType, Annotations: m.Annotations}
	if a.ArtifactType == "" {
		a.ArtifactType = string(m.Config.MediaType)
	}
	for _, l := range m.Layers {
		a.Blobs = append(a.Blobs, ArtifactBlob{MediaType: string(l.MediaType), Annotations: l.Annotations,
			Digest: digest.Digest(l.Digest.String()), Size: l.Size})
	}
	return a, nil
}

// ReadBlob fetches a small blob of ref's repository whole and checks it
// against its digest (e.g. an artifact's blob, after ReadArtifact). Blobs
// larger than 64 MiB are refused.
func (r *Resolver) ReadBlob(ctx context.Context, ref string, d digest.Digest, size int64) ([]byte, error) {
	if size > maxArtifactBlob {
		return nil, fmt.Errorf("read blob %s of %s: %d bytes is more than the %d allowed", d, ref, size, maxArtifactBlob)
	}
	repo, err := r.servedFrom(ctx, ref)
	if err != nil {
		return nil, fmt.Errorf("read blob %s: %w", d, err)
	}
	b, err := r.newBlob(ref, d, size, repo)
	if err != nil {
		return nil, err
	}
	data := make([]byte, size)
	if _, err := b.readFull(ctx, data, 0, func(int) {}); err != nil {
		return nil, fmt.Errorf("read blob %s of %s: %w", d, ref, err)
	}
	if !verified(d, data) {
		return nil, fmt.Errorf("read blob %s of %s: content does not match its digest", d, ref)
	}
	return data, nil
}

// registryURL is https(s)://host/v2/<repo>/<kind>/<ref>.
func registryURL(repo name.Repository, kind, ref string) *url.URL {
	return &url.URL{
		Scheme: repo.Scheme(), // ggcr's transport corrects it to what the ping found
		Host:   repo.RegistryStr(),
		Path:   fmt.Sprintf("/v2/%s/%s/%s", repo.RepositoryStr(), kind, ref),
	}
}

// getSmall GETs a small document (at most limit bytes) once, returning its
// body, media type and status. Bodies of non-200 answers are discarded.
func getSmall(ctx context.Context, c *http.Client, u, accept string, limit int64) ([]byte, string, int, error) {
	pu, err := url.Parse(u)
	if err != nil {
		return nil, "", 0, err
	}
	body, ct, status, _, err := getPage(ctx, c, pu, accept, limit)
	return body, ct, status, err
}

// getPage is getSmall that also returns the next page its answer names
// (see nextPage).
func getPage(ctx context.Context, c *http.Client, u *url.URL, accept string, limit int64) ([]byte, string, int, *url.URL, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return nil, "", 0, nil, err
	}
	req.Header.Set("Accept", accept)
	resp, err := c.Do(req)
	if err != nil {
		return nil, "", 0, nil, err
	}
	defer drainClose(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return nil, "", resp.StatusCode, nil, nil
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, limit+1))
	if err != nil {
		return nil, "", 0, nil, err
	}
	if int64(len(body)) > limit {
		return nil, "", 0, nil, fmt.Errorf("%s: answer larger than %d bytes", u, limit)
	}
	ct, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type"))
	return body, ct, resp.StatusCode, nextPage(resp.Header, u), nil
}
