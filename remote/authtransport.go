package remote

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync/atomic"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/poolfs/poolfs/remote/keychain"
)

// How a repository's requests are authenticated. Every request of a
// layer lookup that waits on the /v2/ ping and a token exchange pays their
// round trips before the first blob byte moves, so:
//
//   - A repository with no credentials, on a registry not known to want
//     any, gets an anonymous transport (anonTransport): its first request
//     goes out at once, and only if the registry answers it with a 401
//     challenge is the handshake done, with that challenge standing in for
//     the ping. A registry that needs no auth is never pinged.
//   - Otherwise the handshake is ggcr's (transport.NewWithContext: ping,
//     then basic or bearer, token exchange and renewal), with the ping's
//     answer kept per registry (pingCache): the second repository of a
//     registry costs no ping.
//
// Either way credentials only ever go out through ggcr's transports, which
// send them to the registry host alone (never to the blob storage or CDN
// a blob request is redirected to); the anonymous transport sends none.

// authEntry is the transport of one repository. rt is a *transport.Wrapper,
// which ggcr's remote package accepts as "already authenticated" (no second
// handshake, no extra retry layer: our own retry loop is the only one).
type authEntry struct {
	rt     http.RoundTripper
	client *http.Client
	// anon is set for an anonymous entry (see anonTransport).
	anon *anonTransport
}

// pingAnswer is what a registry answered to a request without
// credentials: the ping's answer (200: no auth needed; 401 and its
// challenge), or the 401 challenge of any other request, which names the
// same realm and service. scheme is the one it answered on.
type pingAnswer struct {
	scheme    string
	status    int
	challenge []string // WWW-Authenticate values
}

// authFor returns the cached transport for repo, doing the handshake once
// for all concurrent callers. The handshake runs detached from the
// caller's cancellation (other callers may be waiting on it) but bounded
// by RequestTimeout; the caller itself stops waiting as soon as ctx is
// done.
func (r *Resolver) authFor(ctx context.Context, repo name.Repository) (*authEntry, error) {
	key := repo.Name()
	r.authMu.Lock()
	e := r.auths[key]
	r.authMu.Unlock()
	if e != nil {
		return e, nil
	}
	ch := r.authSF.DoChan(key, func() (any, error) {
		r.authMu.Lock()
		e := r.auths[key]
		r.authMu.Unlock()
		if e != nil {
			return e, nil
		}
		hctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), r.s.timeout)
		defer cancel()
		e, err := r.handshake(hctx, repo)
		if err != nil {
			return nil, err
		}
		r.authMu.Lock()
		r.auths[key] = e
		r.authMu.Unlock()
		return e, nil
	})
	select {
	case res := <-ch:
		if res.Err != nil {
			return nil, res.Err
		}
		return res.Val.(*authEntry), nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (r *Resolver) handshake(ctx context.Context, repo name.Repository) (*authEntry, error) {
	auth, err := authn.Resolve(ctx, r.s.keychain, repo)
	if err != nil {
		return nil, fmt.Errorf("look up credentials for %s: %w", repo, err)
	}
	reg := repo.RegistryStr()
	log := r.s.log.WithField("repository", repo.Name())
	if auth == authn.Anonymous && r.anonymousFirst(reg) {
		log.Debug("no credentials: requests go out anonymously until the registry asks for auth")
		return r.anonymousEntry(repo), nil
	}
	newTransport := func() (http.RoundTripper, error) {
		return transport.NewWithContext(ctx, repo.Registry, auth, &pingCache{r: r, reg: reg, inner: r.base}, []string{repo.Scope(transport.PullScope)})
	}
	_, cached := r.cachedPing(reg)
	rt, err := newTransport()
	if err != nil && cached {
		// The challenge kept from before may be stale (a new realm):
		// ask the registry itself once.
		log.WithError(err).Debug("handshake with the registry's earlier challenge failed; pinging it")
		r.forgetPing(reg)
		rt, err = newTransport()
	}
	if err != nil {
		return nil, fmt.Errorf("authenticate to %s: %w", repo, fromTransportError(err))
	}
	log.Debug("registry handshake done")
	return &authEntry{
		rt: rt,
		// http.Client follows redirects (blob storage, CDNs) and keeps the
		// Range header on them; ggcr's auth layer only sends Authorization
		// to the registry host itself.
		client: &http.Client{Transport: rt},
	}, nil
}

// anonymousFirst says whether a repository of reg with no credentials may
// start with anonymous requests: the registry is not known to want auth
// (its answer kept is a 200, or none), and anonymous requests did not fail
// there before in a way only a handshake sorts out.
func (r *Resolver) anonymousFirst(reg string) bool {
	r.authMu.Lock()
	defer r.authMu.Unlock()
	if r.pingFirst[reg] {
		return false
	}
	a, ok := r.pings[reg]
	return !ok || a.status == http.StatusOK
}

func (r *Resolver) anonymousEntry(repo name.Repository) *authEntry {
	t := &anonTransport{r: r, repo: repo, inner: transport.NewUserAgent(r.base, "")}
	// A Wrapper around t with no credentials (FromToken's basic transport
	// adds none for authn.Anonymous), for ggcr's remote package.
	rt, err := transport.FromToken(repo.Registry, authn.Anonymous, t, &transport.Challenge{}, &transport.Token{})
	if err != nil {
		rt = t // not reached: FromToken fails only for bearer challenges
	}
	e := &authEntry{rt: rt, client: &http.Client{Transport: rt}, anon: t}
	t.self = e
	return e
}

// anonTransport sends a repository's requests without credentials until
// the registry answers one with a 401 challenge (or, on a host reached
// over plain HTTP, with 400, which is what a TLS port says to plain HTTP:
// ggcr's ping tries https first on such hosts). Then it does the handshake
// (upgrade), sends that request again through the repository's new
// transport, and from then on forwards every request there.
type anonTransport struct {
	r     *Resolver
	repo  name.Repository
	inner http.RoundTripper
	self  *authEntry
	up    atomic.Pointer[authEntry] // the entry that replaced self
}

func (t *anonTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	if up := t.up.Load(); up != nil {
		return up.rt.RoundTrip(req)
	}
	resp, err := t.inner.RoundTrip(req)
	if err != nil || req.URL.Host != t.repo.RegistryStr() {
		// Blob storage or a CDN a blob request was sent on to says
		// nothing of the registry's auth.
		return resp, err
	}
	var ans *pingAnswer
	switch {
	case resp.StatusCode == http.StatusUnauthorized && len(resp.Header.Values("WWW-Authenticate")) > 0:
		ans = &pingAnswer{scheme: req.URL.Scheme, status: resp.StatusCode, challenge: resp.Header.Values("WWW-Authenticate")}
	case resp.StatusCode == http.StatusBadRequest && req.URL.Scheme == "http":
		// ans nil: the handshake pings, as ggcr does, and learns the scheme.
	default:
		return resp, nil
	}
	up, uerr := t.r.upgrade(req.Context(), t.repo, t.self, ans)
	if uerr != nil {
		t.r.s.log.WithField("repository", t.repo.Name()).WithError(uerr).Debug("registry asked for auth; handshake failed")
		return resp, nil
	}
	if req.Body != nil && req.Body != http.NoBody {
		// Cannot be sent again; the caller's retry goes through up.
		return resp, nil
	}
	drainClose(resp.Body)
	return up.rt.RoundTrip(req.Clone(req.Context()))
}

// upgrade replaces old, repo's anonymous entry, with the handshake's entry
// after the registry answered an anonymous request with ans (nil: answered
// in a way only a ping explains), and returns it.
func (r *Resolver) upgrade(ctx context.Context, repo name.Repository, old *authEntry, ans *pingAnswer) (*authEntry, error) {
	reg := repo.RegistryStr()
	r.authMu.Lock()
	if ans != nil {
		r.pings[reg] = *ans
	} else {
		r.pingFirst[reg] = true
	}
	if r.auths[repo.Name()] == old {
		delete(r.auths, repo.Name())
	}
	r.authMu.Unlock()
	e, err := r.authFor(ctx, repo)
	if err != nil {
		return nil, err
	}
	if e.anon != nil {
		return nil, errors.New("the registry's answers changed while authenticating")
	}
	old.anon.up.Store(e)
	return e, nil
}

// pingCache is the transport ggcr's handshake pings through: it answers
// the registry's /v2/ ping with the answer kept for the registry, if any,
// and keeps the registry's real answer otherwise.
type pingCache struct {
	r     *Resolver
	reg   string
	inner http.RoundTripper
}

func (p *pingCache) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.Method != http.MethodGet || req.URL.Path != "/v2/" || req.URL.Host != p.reg {
		return p.inner.RoundTrip(req)
	}
	if a, ok := p.r.cachedPing(p.reg); ok {
		if req.URL.Scheme != a.scheme {
			// ggcr tries https first on hosts that may be plain HTTP; this
			// one answered over the other scheme.
			return nil, fmt.Errorf("registry %s answers over %s", p.reg, a.scheme)
		}
		h := http.Header{}
		for _, v := range a.challenge {
			h.Add("WWW-Authenticate", v)
		}
		return &http.Response{
			Status: fmt.Sprintf("%d %s", a.status, http.StatusText(a.status)), StatusCode: a.status,
			Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
			Header: h, Body: http.NoBody, Request: req,
		}, nil
	}
	resp, err := p.inner.RoundTrip(req)
	if err == nil && (resp.StatusCode == http.StatusOK || resp.StatusCode == http.StatusUnauthorized) {
		p.r.authMu.Lock()
		p.r.pings[p.reg] = pingAnswer{scheme: req.URL.Scheme, status: resp.StatusCode, challenge: resp.Header.Values("WWW-Authenticate")}
		p.r.authMu.Unlock()
	}
	return resp, err
}

func (r *Resolver) cachedPing(reg string) (pingAnswer, bool) {
	r.authMu.Lock()
	defer r.authMu.Unlock()
	a, ok := r.pings[reg]
	return a, ok
}

func (r *Resolver) forgetPing(reg string) {
	r.authMu.Lock()
	defer r.authMu.Unlock()
	delete(r.pings, reg)
}

// dropAuth forgets repo's transport so the next request handshakes again,
// pinging the registry as the first handshake did. Only the entry that
// failed is dropped, so a 401 seen late by one reader does not throw away
// a transport another reader just rebuilt. A nil entry (the 401 came from
// the handshake itself, nothing cached) drops nothing. An anonymous entry
// that failed this way (a 401 with no challenge, a 403) is not tried again
// on the registry: its repositories handshake first, as before.
func (r *Resolver) dropAuth(repo name.Repository, failed *authEntry) {
	if failed == nil {
		return
	}
	key, reg := repo.Name(), repo.RegistryStr()
	r.authMu.Lock()
	defer r.authMu.Unlock()
	if r.auths[key] != failed {
		return
	}
	delete(r.auths, key)
	delete(r.pings, reg)
	if failed.anon != nil {
		r.pingFirst[reg] = true
	}
}

// ForgetRegistry drops the cached transports of every repository of
// registry, so that the next request authenticates with credentials that
// changed (e.g. new ones from the auth helper) instead of a token obtained
// with the old ones (or none).
func (r *Resolver) ForgetRegistry(registry string) {
	registry = keychain.CanonicalRegistry(registry)
	r.authMu.Lock()
	defer r.authMu.Unlock()
	for key := range r.auths {
		reg, _, _ := strings.Cut(key, "/")
		if keychain.CanonicalRegistry(reg) == registry {
			delete(r.auths, key)
		}
	}
}
