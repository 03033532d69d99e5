package remote

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"sync/atomic"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	digest "github.com/opencontainers/go-digest"
	"github.com/sirupsen/logrus"
)

// blob reads one registry blob by HTTP range requests.
type blob struct {
	r      *Resolver
	ref    string
	eps    []blobEndpoint // mirrors first, then the registry (registries.conf)
	digest digest.Digest
	size   int64
	log    *logrus.Entry

	// pref is the endpoint that served the last read: reads start there so
	// that a mirror that is down costs its retries once, not on every read.
	pref atomic.Int32
	// fetched records which bytes have been received, for status reports.
	fetched rangeSet
}

// blobEndpoint is one repository the blob can be read from.
type blobEndpoint struct {
	repo name.Repository
	url  string
}

var _ Blob = (*blob)(nil)

// Blob returns random access to the layer's blob over HTTP range requests.
// It does not touch the network until ReadAt.
func (r *Resolver) Blob(ctx context.Context, ld LayerDesc) (Blob, error) {
	eps, err := r.endpoints(ld.Ref)
	if err != nil {
		return nil, fmt.Errorf("open blob %s: %w", ld.Digest, err)
	}
	repos := make([]name.Repository, len(eps))
	for i, ep := range eps {
		repos[i] = ep.Context()
	}
	return r.newBlob(ld.Ref, ld.Digest, ld.Size, repos...)
}

func (r *Resolver) newBlob(ref string, dgst digest.Digest, size int64, repos ...name.Repository) (*blob, error) {
	if err := dgst.Validate(); err != nil {
		return nil, fmt.Errorf("open blob %q of %s: %w", dgst, ref, err)
	}
	if size < 0 {
		return nil, fmt.Errorf("open blob %s of %s: negative size %d", dgst, ref, size)
	}
	if len(repos) == 0 {
		return nil, fmt.Errorf("open blob %s of %s: no repository to read from", dgst, ref)
	}
	eps := make([]blobEndpoint, len(repos))
	for i, repo := range repos {
		u := url.URL{
			Scheme: repo.Scheme(), // ggcr's transport corrects it to what the ping found
			Host:   repo.RegistryStr(),
			Path:   fmt.Sprintf("/v2/%s/blobs/%s", repo.RepositoryStr(), dgst),
		}
		eps[i] = blobEndpoint{repo: repo, url: u.String()}
	}
	return &blob{
		r:      r,
		ref:    ref,
		eps:    eps,
		digest: dgst,
		size:   size,
		log:    r.s.log.WithFields(logrus.Fields{"ref": ref, "digest": dgst}),
	}, nil
}

func (b *blob) Digest() digest.Digest { return b.digest }
func (b *blob) Size() int64           { return b.size }

// ReadAt fills p from off with one range request (plus retries). Reads
// that run past the end are clipped and return io.EOF, like io.ReaderAt.
func (b *blob) ReadAt(ctx context.Context, p []byte, off int64) (int, error) {
	return b.ReadAtProgress(ctx, p, off, nil)
}

// ReadAtProgress is ReadAt reporting the bytes filled so far as they
// arrive (see Blob).
func (b *blob) ReadAtProgress(ctx context.Context, p []byte, off int64, progress func(n int)) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("read blob %s of %s: negative offset %d", b.digest, b.ref, off)
	}
	if off >= b.size {
		return 0, io.EOF
	}
	want, tail := p, error(nil)
	if rest := b.size - off; int64(len(p)) > rest {
		want, tail = p[:rest], io.EOF
	}
	if len(want) == 0 {
		return 0, nil
	}
	if progress == nil {
		progress = func(int) {}
	}
	n, err := withFetchDeadline(ctx, b.r.s.fetchTO, func(ctx context.Context) (int, error) {
		return b.readFull(ctx, want, off, progress)
	})
	if err != nil {
		return n, err
	}
	return n, tail
}

// readFull fills dst with the blob bytes at off from the first endpoint
// that serves them, starting with the one that served the last read and
// wrapping around, so a failing mirror falls through to the next. Every
// endpoint serves the same content-addressed bytes, so the next one picks
// up where the last one stopped.
func (b *blob) readFull(ctx context.Context, dst []byte, off int64, progress func(int)) (int, error) {
	n := len(b.eps)
	start := int(b.pref.Load())
	filled := 0
	var err error
	for i := range n {
		k := (start + i) % n
		var got int
		began := time.Now()
		got, err = b.readFrom(ctx, b.eps[k], dst[filled:], off+int64(filled), func(m int) { progress(filled + m) })
		b.r.observeFetch(b.eps[k].repo.RegistryStr(), got, began, err)
		filled += got
		if err == nil {
			b.pref.Store(int32(k))
			b.fetched.add(off, off+int64(filled))
			return filled, nil
		}
		if ctx.Err() != nil || n == 1 {
			return filled, err
		}
		b.log.WithField("endpoint", b.eps[k].repo.String()).WithError(err).Warn("endpoint failed; trying the next one")
	}
	return filled, err
}

// readFrom fills dst with the blob bytes at off from one endpoint. A body
// cut short is not wasted: the next attempt asks only for the part still
// missing.
func (b *blob) readFrom(ctx context.Context, ep blobEndpoint, dst []byte, off int64, progress func(int)) (int, error) {
	rng := fmt.Sprintf("bytes=%d-%d", off, off+int64(len(dst))-1)
	log := b.log.WithField("range", rng)
	filled := 0
	var used *authEntry
	op := func(actx context.Context) error {
		used = nil
		e, err := b.r.authFor(actx, ep.repo)
		if err != nil {
			return err
		}
		used = e
		base := filled
		n, err := b.rangeOnce(actx, e.client, ep.url, dst[filled:], off+int64(filled), func(m int) { progress(base + m) })
		filled += n
		if errors.Is(err, errPartialRange) {
			// Not a failure: the server caps its answers. Ask for the
			// rest with a fresh retry budget.
			return nil
		}
		return err
	}
	for filled < len(dst) {
		if err := b.r.retry(ctx, log, func() { b.r.dropAuth(ep.repo, used) }, op); err != nil {
			return filled, fmt.Errorf("read %s of blob %s (%s): %w", rng, b.digest, b.ref, err)
		}
	}
	log.Trace("blob range read")
	return filled, nil
}

// errPartialRange: a complete 206 answer covering less than was asked.
var errPartialRange = errors.New("server sent part of the range")

// rangeOnce is one GET with Range: bytes=off-(off+len(dst)-1). It returns
// how many bytes of dst it filled, which may be fewer on error.
func (b *blob) rangeOnce(ctx context.Context, c *http.Client, url string, dst []byte, off int64, progress func(int)) (int, error) {
	end := off + int64(len(dst)) - 1
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, err
	}
	// Always an explicit first-last range: some registries refuse suffix
	// ranges, and the size is known from the manifest anyway.
	req.Header.Set("Range", fmt.Sprintf("bytes=%d-%d", off, end))
	resp, err := c.Do(req)
	if err != nil {
		return 0, err
	}
	defer drainClose(resp.Body)

	switch resp.StatusCode {
	case http.StatusPartialContent:
		first, last, ok := parseContentRange(resp.Header.Get("Content-Range"))
		if ok && first != off {
			return 0, fmt.Errorf("server sent range starting at %d, asked for %d", first, off)
		}
		want := dst
		if ok && last < end {
			// Servers may send less than asked; take it and ask again.
			want = dst[:last-first+1]
		}
		n, err := readReporting(resp.Body, want, progress)
		b.r.stats.blobBytes.Add(int64(n))
		if err != nil {
			return n, fmt.Errorf("%w after %d of %d bytes: %v", errShortBody, n, len(want), err)
		}
		if len(want) < len(dst) {
			return n, fmt.Errorf("%w: bytes %d-%d", errPartialRange, first, last)
		}
		return n, nil

	case http.StatusOK:
		// The server ignored Range. Usable only if it is sending the whole
		// blob; then skip to off and take our slice.
		if resp.ContentLength >= 0 && resp.ContentLength != b.size {
			return 0, fmt.Errorf("server ignored Range and sent %d bytes, not the %d-byte blob", resp.ContentLength, b.size)
		}
		if skipped, err := io.CopyN(io.Discard, resp.Body, off); err != nil {
			return 0, fmt.Errorf("%w while skipping to %d (at %d): %v", errShortBody, off, skipped, err)
		}
		if resp.ContentLength < 0 {
			// Unknown length: the rest is checked below so a
			// different-sized body is not mistaken for our blob, so
			// nothing is reported before that.
			progress = func(int) {}
		}
		n, err := readReporting(resp.Body, dst, progress)
		b.r.stats.blobBytes.Add(int64(n))
		if err != nil {
			return n, fmt.Errorf("%w after %d of %d bytes: %v", errShortBody, n, len(dst), err)
		}
		if resp.ContentLength < 0 {
			// Unknown length: check the rest so a different-sized body is
			// not mistaken for our blob.
			rest, _ := io.Copy(io.Discard, io.LimitReader(resp.Body, b.size-end))
			if got := end + 1 + rest; got != b.size {
				return 0, fmt.Errorf("server ignored Range and sent %d bytes, not the %d-byte blob", got, b.size)
			}
		}
		return n, nil

	default:
		return 0, statusError(resp)
	}
}

// readReporting is io.ReadFull calling progress after each read that
// added bytes, so a caller can use the start of dst while the rest is on
// the wire.
func readReporting(r io.Reader, dst []byte, progress func(int)) (int, error) {
	n := 0
	for n < len(dst) {
		m, err := r.Read(dst[n:])
		if m > 0 {
			n += m
			progress(n)
		}
		if err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
				if n == len(dst) {
					err = nil
				}
			}
			return n, err
		}
	}
	return n, nil
}

// parseContentRange parses "bytes first-last/total" (total may be "*").
func parseContentRange(v string) (first, last int64, ok bool) {
	var total string
	if _, err := fmt.Sscanf(v, "bytes %d-%d/%s", &first, &last, &total); err != nil {
		return 0, 0, false
	}
	if first < 0 || last < first {
		return 0, 0, false
	}
	return first, last, true
}

// drainClose reads a little of what is left so the connection can go back
// to the idle pool (net/http only reuses it once the body hit EOF), then
// closes.
func drainClose(body io.ReadCloser) {
	_, _ = io.CopyN(io.Discard, body, 4<<10)
	_ = body.Close()
}
