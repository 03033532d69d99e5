package remote

import (
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// RegistryStats are running totals for one registry host (or a host it
// redirected to, such as a CDN).
type RegistryStats struct {
	Requests  int64 // HTTP requests sent to the host
	BlobBytes int64 // blob bytes received from it for readers
	Fetches   int64 // blob range reads it served (retries inside one read not counted)
	Failures  int64 // blob range reads that failed there for good
}

// FetchEvent is one blob range read against one endpoint, for metrics.
type FetchEvent struct {
	Registry string
	Bytes    int
	Duration time.Duration
	Err      error
}

type regCounters struct {
	requests, blobBytes, fetches, failures atomic.Int64
}

// regStats holds a Resolver's per-host counters.
type regStats struct {
	m sync.Map // host -> *regCounters
}

func (s *regStats) of(host string) *regCounters {
	if c, ok := s.m.Load(host); ok {
		return c.(*regCounters)
	}
	c, _ := s.m.LoadOrStore(host, &regCounters{})
	return c.(*regCounters)
}

// RegistryStats returns a snapshot of the counters per registry host.
func (r *Resolver) RegistryStats() map[string]RegistryStats {
	out := map[string]RegistryStats{}
	r.perReg.m.Range(func(k, v any) bool {
		c := v.(*regCounters)
		out[k.(string)] = RegistryStats{
			Requests:  c.requests.Load(),
			BlobBytes: c.blobBytes.Load(),
			Fetches:   c.fetches.Load(),
			Failures:  c.failures.Load(),
		}
		return true
	})
	return out
}

// observeFetch records one range read against one endpoint.
func (r *Resolver) observeFetch(host string, n int, start time.Time, err error) {
	c := r.perReg.of(host)
	if err != nil {
		c.failures.Add(1)
	} else {
		c.fetches.Add(1)
		c.blobBytes.Add(int64(n))
	}
	if r.s.onFetch != nil {
		r.s.onFetch(FetchEvent{Registry: host, Bytes: n, Duration: time.Since(start), Err: err})
	}
}

// hostCounter counts requests per host below the auth layers.
type hostCounter struct {
	inner http.RoundTripper
	s     *regStats
}

func (t *hostCounter) RoundTrip(req *http.Request) (*http.Response, error) {
	t.s.of(req.URL.Host).requests.Add(1)
	return t.inner.RoundTrip(req)
}
