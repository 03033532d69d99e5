package remote

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	digest "github.com/opencontainers/go-digest"
	"github.com/sirupsen/logrus"
)

// ErrNoSuffixRange says the registry does not answer suffix range
// requests (Range: bytes=-N) with the blob's end: it refused them (416) or
// sent the whole blob (200), which Tail does not read.
var ErrNoSuffixRange = errors.New("registry does not serve suffix ranges")

// Tail reads the last n bytes of blob dgst from ref's repository (its
// mirrors first, as Blob does) in one suffix range request, which needs no
// size: a caller that knows a blob only by the digest in a path can read
// its end while the manifest that describes it is still on the way. It
// returns the bytes (all of the blob if it is shorter than n) and the
// blob's size, from Content-Range. progress, if not nil, is called as the
// bytes arrive with the count so far, as in Blob.ReadAtProgress.
//
// Nothing is verified: the digest is the caller's word, and the bytes are
// whatever the registry sent. Before trusting them the caller must check
// them against a manifest that lists the blob (its size) and the bytes
// themselves against digests that manifest gives.
//
// Each endpoint gets one attempt (and one more after a 401 that renews
// credentials): a caller that has this as a head start has the ordinary
// reads, with their retries, to fall back on. A registry that refuses
// suffix ranges gives ErrNoSuffixRange (wrapped), and is not asked again.
func (r *Resolver) Tail(ctx context.Context, ref string, dgst digest.Digest, n int64, progress func(int)) ([]byte, int64, error) {
	if err := dgst.Validate(); err != nil {
		return nil, 0, fmt.Errorf("read the end of blob %q of %s: %w", dgst, ref, err)
	}
	if n <= 0 {
		return nil, 0, fmt.Errorf("read the end of blob %s of %s: %d bytes asked for", dgst, ref, n)
	}
	if progress == nil {
		progress = func(int) {}
	}
	eps, err := r.endpoints(ref)
	if err != nil {
		return nil, 0, fmt.Errorf("read the end of blob %s: %w", dgst, err)
	}
	ctx, cancel := context.WithTimeout(ctx, r.s.fetchTO)
	defer cancel()
	var errs []error
	for _, ep := range eps {
		repo := ep.Context()
		data, size, err := r.tailFrom(ctx, repo, dgst, n, progress)
		if err == nil {
			return data, size, nil
		}
		errs = append(errs, err)
		if ctx.Err() != nil {
			break
		}
	}
	return nil, 0, fmt.Errorf("read the last %d bytes of blob %s of %s: %w", n, dgst, ref, errors.Join(errs...))
}

func (r *Resolver) tailFrom(ctx context.Context, repo name.Repository, dgst digest.Digest, n int64, progress func(int)) ([]byte, int64, error) {
	host := repo.RegistryStr()
	if r.refusesSuffix(host) {
		return nil, 0, fmt.Errorf("%s: %w", host, ErrNoSuffixRange)
	}
	u := registryURL(repo, "blobs", dgst.String()).String()
	var (
		data []byte
		size int64
		used *authEntry
	)
	log := r.s.log.WithFields(logrus.Fields{"repository": repo.String(), "digest": dgst, "range": fmt.Sprintf("bytes=-%d", n)})
	err := r.retryUpTo(ctx, log, 0, func() { r.dropAuth(repo, used) }, func(actx context.Context) error {
		used = nil
		e, err := r.authFor(actx, repo)
		if err != nil {
			return err
		}
		used = e
		began := time.Now()
		data, size, err = r.tailOnce(actx, e.client, u, n, progress)
		r.observeFetch(host, len(data), began, err)
		if errors.Is(err, ErrNoSuffixRange) {
			r.noSuffix.Store(host, true)
		}
		return err
	})
	if err != nil {
		return nil, 0, fmt.Errorf("%s: %w", host, err)
	}
	return data, size, nil
}

func (r *Resolver) refusesSuffix(host string) bool {
	_, ok := r.noSuffix.Load(host)
	return ok
}

// tailOnce is one GET with Range: bytes=-n.
func (r *Resolver) tailOnce(ctx context.Context, c *http.Client, url string, n int64, progress func(int)) ([]byte, int64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, 0, err
	}
	req.Header.Set("Range", fmt.Sprintf("bytes=-%d", n))
	resp, err := c.Do(req)
	if err != nil {
		return nil, 0, err
	}
	switch resp.StatusCode {
	case http.StatusPartialContent:
	case http.StatusOK:
		// The whole blob is coming: not read, the connection is dropped.
		_ = resp.Body.Close()
		return nil, 0, fmt.Errorf("answered 200 with the whole blob: %w", ErrNoSuffixRange)
	case http.StatusRequestedRangeNotSatisfiable:
		drainClose(resp.Body)
		return nil, 0, fmt.Errorf("answered 416: %w", ErrNoSuffixRange)
	default:
		defer drainClose(resp.Body)
		return nil, 0, statusError(resp)
	}
	defer drainClose(resp.Body)
	first, last, size, ok := parseContentRangeTotal(resp.Header.Get("Content-Range"))
	if !ok || last != size-1 || first != size-min(n, size) {
		return nil, 0, fmt.Errorf("asked for the last %d bytes, the answer says it holds %q", n, resp.Header.Get("Content-Range"))
	}
	data := make([]byte, last-first+1)
	got, err := readReporting(resp.Body, data, progress)
	r.stats.blobBytes.Add(int64(got))
	if err != nil {
		return nil, 0, fmt.Errorf("%w after %d of %d bytes: %v", errShortBody, got, len(data), err)
	}
	return data, size, nil
}

// parseContentRangeTotal parses "bytes first-last/total" with a known
// total.
func parseContentRangeTotal(v string) (first, last, total int64, ok bool) {
	first, last, ok = parseContentRange(v)
	if !ok {
		return 0, 0, 0, false
	}
	_, t, found := strings.Cut(v, "/")
	if !found {
		return 0, 0, 0, false
	}
	total, err := strconv.ParseInt(strings.TrimSpace(t), 10, 64)
	if err != nil || total <= last {
		return 0, 0, 0, false
	}
	return first, last, total, true
}
