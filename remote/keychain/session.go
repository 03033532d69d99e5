package keychain

import (
	"context"
	"fmt"
	"sync"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
)

// Session holds credentials handed to the running daemon (by
// `poolfs auth-helper`, which podman runs at each pull) in front of another
// keychain. Credentials given for an image reference are used for that
// reference's registry only; registries nobody gave credentials for are
// resolved by the next keychain.
type Session struct {
	next authn.Keychain

	mu    sync.RWMutex
	creds map[string]authn.AuthConfig // by normalised registry host
}

// NewSession returns an empty Session in front of next.
func NewSession(next authn.Keychain) *Session {
	return &Session{next: next, creds: map[string]authn.AuthConfig{}}
}

// Set records cfg for the registry of image reference ref and returns that
// registry's name. Empty credentials remove what was recorded.
func (k *Session) Set(ref string, cfg authn.AuthConfig) (string, error) {
	parsed, err := name.ParseReference(ref)
	if err != nil {
		return "", fmt.Errorf("credentials for %q: %w", ref, err)
	}
	reg := CanonicalRegistry(parsed.Context().RegistryStr())
	k.mu.Lock()
	defer k.mu.Unlock()
	if cfg.Username == "" && cfg.Password == "" && cfg.IdentityToken == "" && cfg.RegistryToken == "" && cfg.Auth == "" {
		delete(k.creds, reg)
	} else {
		k.creds[reg] = cfg
	}
	return reg, nil
}

// Registries lists the registries credentials were given for (names only).
func (k *Session) Registries() []string {
	k.mu.RLock()
	defer k.mu.RUnlock()
	out := make([]string, 0, len(k.creds))
	for r := range k.creds {
		out = append(out, r)
	}
	return out
}

func (k *Session) Resolve(target authn.Resource) (authn.Authenticator, error) {
	return k.ResolveContext(context.Background(), target)
}

// ResolveContext implements authn.ContextKeychain.
func (k *Session) ResolveContext(ctx context.Context, target authn.Resource) (authn.Authenticator, error) {
	k.mu.RLock()
	cfg, ok := k.creds[CanonicalRegistry(target.RegistryStr())]
	k.mu.RUnlock()
	if ok {
		return authn.FromConfig(cfg), nil
	}
	if k.next == nil {
		return authn.Anonymous, nil
	}
	return authn.Resolve(ctx, k.next, target)
}
