package remote

import (
	"net"
	"net/http"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/poolfs/poolfs/remote/keychain"
	"github.com/poolfs/poolfs/remote/regconf"
	"github.com/sirupsen/logrus"
)

// Options tune a Resolver; the zero value works.
type Options struct {
	// Insecure lists registry hosts "host[:port]" reached over plain HTTP.
	// An entry without a port matches the host on any port. Loopback hosts
	// (127.0.0.0/8, localhost, ::1) always are.
	Insecure []string
	// Keychain supplies credentials; nil means keychain.New().
	Keychain authn.Keychain
	// Registries maps references to mirrors and locations and blocks
	// registries (registries.conf); nil fetches every reference from the
	// registry it names.
	Registries *regconf.Config
	// Transport is the base transport; nil means a clone of
	// http.DefaultTransport tuned for many parallel range reads per host.
	Transport http.RoundTripper
	// Platform selects the image of a multi-arch index; nil means the host.
	Platform *v1.Platform
	// Retries is the number of attempts after the first for a failing
	// request; 0 means 4. Use a negative value for no retries at all.
	Retries int
	// RequestTimeout bounds each attempt; 0 means 30s.
	RequestTimeout time.Duration
	// FetchTimeout bounds one Blob.ReadAt, all attempts and backoff
	// included; 0 means 20s. A FUSE read of uncached data waits at most
	// this long before failing with EIO, so a registry that is down or
	// black-holed cannot park readers for minutes.
	FetchTimeout time.Duration
	// Log receives poolfs's remote log lines; nil means logrus.StandardLogger().
	Log *logrus.Entry
	// OnFetch, if set, is called after every blob range read against one
	// endpoint (for latency metrics); it must not block.
	OnFetch func(FetchEvent)
}

const (
	defaultRetries        = 4
	defaultRequestTimeout = 30 * time.Second
	defaultFetchTimeout   = 20 * time.Second

	// tagTTL is how long a tag's resolution is trusted. Tags move; digests
	// do not, so digest references are cached for the Resolver's lifetime.
	tagTTL = 30 * time.Second

	// Backoff between attempts: exponential from backoffBase, capped, with
	// jitter so that many readers failing together do not retry in lockstep.
	backoffBase = 50 * time.Millisecond
	backoffCap  = 2 * time.Second
	// maxRetryAfter caps how long a 429/503 Retry-After may park a reader:
	// a FUSE read blocked for a minute is worse than an error.
	maxRetryAfter = 10 * time.Second

	// maxConfigSize guards against a hostile or broken manifest making us
	// buffer a huge "config" blob.
	maxConfigSize = 64 << 20
	// maxIndexDepth bounds index-in-index nesting.
	maxIndexDepth = 4
)

// settings are Options with defaults filled in.
type settings struct {
	insecure  []string
	keychain  authn.Keychain
	regs      *regconf.Config
	onFetch   func(FetchEvent)
	base      http.RoundTripper
	platform  v1.Platform
	retries   int
	timeout   time.Duration
	fetchTO   time.Duration // per Blob.ReadAt, all attempts included
	log       *logrus.Entry
	backoff   time.Duration // first backoff; tests shrink it
	backoffMx time.Duration
	tagTTL    time.Duration
}

func (o Options) settings() settings {
	s := settings{
		insecure:  o.Insecure,
		keychain:  o.Keychain,
		regs:      o.Registries,
		onFetch:   o.OnFetch,
		base:      o.Transport,
		retries:   o.Retries,
		timeout:   o.RequestTimeout,
		fetchTO:   o.FetchTimeout,
		log:       o.Log,
		backoff:   backoffBase,
		backoffMx: backoffCap,
		tagTTL:    tagTTL,
	}
	if s.keychain == nil {
		s.keychain = keychain.New()
	}
	if s.base == nil {
		s.base = defaultTransport()
	}
	if o.Platform != nil {
		s.platform = *o.Platform
	} else {
		s.platform = hostPlatform()
	}
	switch {
	case s.retries == 0:
		s.retries = defaultRetries
	case s.retries < 0:
		s.retries = 0
	}
	if s.timeout <= 0 {
		s.timeout = defaultRequestTimeout
	}
	if s.fetchTO <= 0 {
		s.fetchTO = defaultFetchTimeout
	}
	if s.log == nil {
		s.log = logrus.NewEntry(logrus.StandardLogger())
	}
	return s
}

// defaultTransport clones http.DefaultTransport (proxy from environment,
// HTTP/2, dial timeouts) and raises the idle pool: the lazy reader issues
// many concurrent range requests to one registry or CDN host, and the
// default of 2 idle connections per host would make most of them redial.
func defaultTransport() http.RoundTripper {
	base, ok := http.DefaultTransport.(*http.Transport)
	if !ok {
		// Someone replaced the global; build an equivalent from scratch.
		base = &http.Transport{
			Proxy:                 http.ProxyFromEnvironment,
			DialContext:           (&net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
			ForceAttemptHTTP2:     true,
			IdleConnTimeout:       90 * time.Second,
			TLSHandshakeTimeout:   10 * time.Second,
			ExpectContinueTimeout: time.Second,
		}
	}
	t := base.Clone()
	t.MaxIdleConns = 256
	t.MaxIdleConnsPerHost = 64
	return t
}
