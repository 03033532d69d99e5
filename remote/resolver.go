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

	// Transports per registry/repository: the handshake happens once, not
	// per request (see authFor). pings keeps each registry's answer to
	// requests without credentials (by host), pingFirst the registries
	// whose repositories handshake before their first request.
	authMu    sync.Mutex
	auths     map[string]*authEntry
	authSF    singleflight.Group
	pings     map[string]pingAnswer
	pingFirst map[string]bool

	// Resolved images per normalised reference.
	imgMu sync.Mutex
	imgs  map[string]*imageEntry
	imgSF singleflight.Group
	cfgSF singleflight.Group // config fetches, by config digest

	// Registry hosts that refused a suffix range (see Tail).
	noSuffix sync.Map

	// Registry hosts that answered the referrers API with "no such
	// endpoint", and when (see Referrers).
	refMu    sync.Mutex
	noRefAPI map[string]time.Time
}

// New returns a Resolver. It does no I/O.
func New(opts Options) *Resolver {
	r := &Resolver{
		s:         opts.settings(),
		auths:     make(map[string]*authEntry),
		pings:     make(map[string]pingAnswer),
		pingFirst: make(map[string]bool),
		imgs:      make(map[string]*imageEntry),
	}
	r.base = &countingTransport{inner: &hostCounter{inner: r.s.base, s: &r.perReg}, n: &r.stats.requests}
	return r
}
