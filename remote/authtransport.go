package remote

import (
	"context"
	"fmt"
	"net/http"
	"strings"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/poolfs/poolfs/remote/keychain"
)

// authEntry is an authenticated transport for one repository. rt is the
// *transport.Wrapper ggcr returns, which ggcr's remote package accepts as
// "already authenticated" (no second handshake, no extra retry layer: our
// own retry loop is the only one).
type authEntry struct {
	rt     http.RoundTripper
	client *http.Client
}

// authFor returns the cached authenticated transport for repo, doing the
// /v2/ ping and token exchange once for all concurrent callers. The
// handshake runs detached from the caller's cancellation (other callers may
// be waiting on it) but bounded by RequestTimeout; the caller itself stops
// waiting as soon as ctx is done.
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
	rt, err := transport.NewWithContext(ctx, repo.Registry, auth, r.base, []string{repo.Scope(transport.PullScope)})
	if err != nil {
		return nil, fmt.Errorf("authenticate to %s: %w", repo, fromTransportError(err))
	}
	r.s.log.WithField("repository", repo.Name()).Debug("registry handshake done")
	return &authEntry{
		rt: rt,
		// http.Client follows redirects (blob storage, CDNs) and keeps the
		// Range header on them; ggcr's auth layer only sends Authorization
		// to the registry host itself.
		client: &http.Client{Transport: rt},
	}, nil
}

// dropAuth forgets repo's transport so the next request handshakes again.
// Only the entry that failed is dropped, so a 401 seen late by one reader
// does not throw away a transport another reader just rebuilt. A nil entry
// (the 401 came from the handshake itself, nothing cached) drops nothing.
func (r *Resolver) dropAuth(repo name.Repository, failed *authEntry) {
	if failed == nil {
		return
	}
	key := repo.Name()
	r.authMu.Lock()
	defer r.authMu.Unlock()
	if r.auths[key] == failed {
		delete(r.auths, key)
	}
}

// ForgetRegistry drops the cached authenticated transports of every
// repository of registry, so that the next request authenticates with
// credentials that changed (e.g. new ones from the auth helper) instead of
// a token obtained with the old ones.
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
