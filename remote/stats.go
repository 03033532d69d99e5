package remote

import (
	"net/http"
	"sync/atomic"
)

// Stats are running totals of a Resolver's traffic, for metrics and
// benchmarks.
type Stats struct {
	Requests  int64 // HTTP requests sent (pings, token exchanges, manifests, blobs, redirects)
	BlobBytes int64 // blob bytes received for readers and configs
	Retries   int64 // attempts repeated after a transient failure
}

type counters struct {
	requests  atomic.Int64
	blobBytes atomic.Int64
	retries   atomic.Int64
}

// Stats returns a snapshot of the counters.
func (r *Resolver) Stats() Stats {
	return Stats{
		Requests:  r.stats.requests.Load(),
		BlobBytes: r.stats.blobBytes.Load(),
		Retries:   r.stats.retries.Load(),
	}
}

// countingTransport counts every request that reaches the wire, below the
// auth layers, so handshakes and redirects are included.
type countingTransport struct {
	inner http.RoundTripper
	n     *atomic.Int64
}

func (t *countingTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	t.n.Add(1)
	return t.inner.RoundTrip(req)
}
