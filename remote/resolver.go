package remote

import (
	"net/http"
	"sync"
	"time"

	"golang.org/x/sync/singleflight"
)

// Resolver turns image references into layer descriptors and layer
// descriptors into Blobs. It is safe for concurrent use; share one per
// process so connections, tokens and manifests are reused.
type Resolver struct {
	s     settings
	base  http.RoundTripper // s.base wrapped with request counting
	stats counters
	// perReg counts per registry host, for metrics.
	perReg regStats

	// Authenticated transports per registry/repository: the /v2/ ping and
	// token exchange happen once, not per request.
	authMu sync.Mutex
	auths  map[string]*authEntry
	authSF singleflight.Group

	// Resolved images per normalised reference.
	imgMu sync.Mutex
	imgs  map[string]*imageEntry
	imgSF singleflight.Group
	cfgSF singleflight.Group // config fetches, by config digest

	// Registry hosts that answered the referrers API with "no such
	// endpoint", and when (see Referrers).
	refMu    sync.Mutex
	noRefAPI map[string]time.Time
}

// New returns a Resolver. It does no I/O.
func New(opts Options) *Resolver {
	r := &Resolver{
		s:     opts.settings(),
		auths: make(map[string]*authEntry),
		imgs:  make(map[string]*imageEntry),
	}
	r.base = &countingTransport{inner: &hostCounter{inner: r.s.base, s: &r.perReg}, n: &r.stats.requests}
	return r
}
