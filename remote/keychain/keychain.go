// Package keychain says which credentials poolfs presents to a registry:
// those podman and docker keep in their files (auth.json, config.json,
// docker-credential-* helpers), and those handed to the running daemon by
// `poolfs auth-helper`, in front of the files. It is an authn.Keychain for
// go-containerregistry; the handshake that uses it is remote's. Secrets are
// never put in an error or a log line.
package keychain

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/google/go-containerregistry/pkg/authn"
)

// defaultRootAuthFile is where podman keeps root's credentials when
// XDG_RUNTIME_DIR is unset.
const defaultRootAuthFile = "/run/containers/0/auth.json"

// New returns the keychain poolfs uses by default. Credentials come
// from the first of these files that has an entry for the registry:
// $REGISTRY_AUTH_FILE, ${XDG_RUNTIME_DIR}/containers/auth.json,
// /run/containers/0/auth.json (or the file WithRootAuthFile names), and
// $DOCKER_CONFIG/config.json or else ~/.docker/config.json. Missing files
// are skipped; with no entry anywhere access is anonymous. Files are read at each Resolve, which happens once
// per repository handshake, so credentials written by a later "podman
// login" are picked up when a token is renewed.
//
// Entry lookup follows podman (containers/image): the most specific of
// "host/ns/repo", "host/ns", "host" wins by exact key; failing that, a key
// that is a URL ("https://host/v1/", the legacy docker style) matches by
// its host. Docker Hub is found under "docker.io" and "index.docker.io".
//
// A file's credHelpers entry for the registry host, or else its credsStore,
// names a docker-credential-<name> program that is asked first; an entry in
// "auths" is used if the helper knows nothing of the registry.
func New(opts ...Option) authn.Keychain {
	k := fileKeychain{rootAuthFile: defaultRootAuthFile}
	for _, o := range opts {
		o(&k)
	}
	return k
}

// Option tunes the keychain New returns.
type Option func(*fileKeychain)

// WithRootAuthFile reads path where podman's /run/containers/0/auth.json
// would be: tests point it at a file of their own, as the other locations
// are pointed by environment variables.
func WithRootAuthFile(path string) Option {
	return func(k *fileKeychain) { k.rootAuthFile = path }
}

type fileKeychain struct {
	rootAuthFile string
}

// authFiles lists candidate files in priority order.
func (k fileKeychain) authFiles() []string {
	var files []string
	if f := os.Getenv("REGISTRY_AUTH_FILE"); f != "" {
		files = append(files, f)
	}
	if d := os.Getenv("XDG_RUNTIME_DIR"); d != "" {
		files = append(files, filepath.Join(d, "containers", "auth.json"))
	}
	files = append(files, k.rootAuthFile)
	if d := os.Getenv("DOCKER_CONFIG"); d != "" {
		files = append(files, filepath.Join(d, "config.json"))
	} else if home, err := os.UserHomeDir(); err == nil {
		files = append(files, filepath.Join(home, ".docker", "config.json"))
	}
	return files
}

// authFile is the shared format of auth.json and docker's config.json.
type authFile struct {
	Auths map[string]authEntryJSON `json:"auths"`
	// docker-credential-* helpers: per registry host, and for the rest.
	CredHelpers map[string]string `json:"credHelpers"`
	CredsStore  string            `json:"credsStore"`
}

type authEntryJSON struct {
	Auth          string `json:"auth"`
	IdentityToken string `json:"identitytoken"`
	// Not written by docker or podman, but accepted by docker's parser.
	Username string `json:"username"`
	Password string `json:"password"`
}

func (k fileKeychain) Resolve(target authn.Resource) (authn.Authenticator, error) {
	return k.ResolveContext(context.Background(), target)
}

// ResolveContext implements authn.ContextKeychain so that a credential
// helper run stops with the handshake that needed it.
func (k fileKeychain) ResolveContext(ctx context.Context, target authn.Resource) (authn.Authenticator, error) {
	keys, registry := lookupKeys(target)
	for _, path := range k.authFiles() {
		data, err := os.ReadFile(path)
		if errors.Is(err, fs.ErrNotExist) || errors.Is(err, fs.ErrPermission) {
			// Not ours to read (e.g. another user's runtime dir): skip like
			// a missing file rather than breaking every pull.
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("read credentials file %s: %w", path, err)
		}
		var f authFile
		if err := json.Unmarshal(data, &f); err != nil {
			return nil, fmt.Errorf("parse credentials file %s: %w", path, err)
		}
		if helper, server := f.helperFor(target.RegistryStr()); helper != "" {
			cfg, err := helperGet(ctx, helper, server)
			switch {
			case err == nil:
				return authn.FromConfig(cfg), nil
			case !errors.Is(err, errHelperNotFound):
				return nil, fmt.Errorf("credentials for %s (helper named in %s): %w", server, path, err)
			}
		}
		key, e, ok := findEntry(f.Auths, keys, registry)
		if !ok {
			continue
		}
		cfg, err := e.config()
		if err != nil {
			// The key is named, never the secret.
			return nil, fmt.Errorf("credentials for %q in %s: %w", key, path, err)
		}
		return authn.FromConfig(cfg), nil
	}
	return authn.Anonymous, nil
}

// lookupKeys returns the exact keys to try, most specific first, and the
// normalised registry name for the URL-key fallback.
func lookupKeys(target authn.Resource) ([]string, string) {
	reg := target.RegistryStr()
	rest := strings.TrimPrefix(target.String(), reg) // "" or "/ns/repo"
	host := reg
	if reg == "index.docker.io" {
		// ggcr's name for Docker Hub; podman and docker log in as docker.io.
		host = "docker.io"
	}
	key := host + rest
	var keys []string
	for {
		keys = append(keys, key)
		i := strings.LastIndexByte(key, '/')
		if i < 0 {
			break
		}
		key = key[:i]
	}
	if host == "docker.io" {
		keys = append(keys, "index.docker.io")
	}
	return keys, CanonicalRegistry(reg)
}

func findEntry(auths map[string]authEntryJSON, keys []string, registry string) (string, authEntryJSON, bool) {
	for _, k := range keys {
		if e, ok := auths[k]; ok {
			return k, e, true
		}
	}
	// Sorted so that several keys naming one host give a stable answer.
	names := make([]string, 0, len(auths))
	for k := range auths {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, k := range names {
		if normAuthKey(k) == registry {
			return k, auths[k], true
		}
	}
	return "", authEntryJSON{}, false
}

// normAuthKey reduces a URL-style key ("https://host/v1/") to its host.
// Plain "host/repo" keys are left whole: they only match exactly.
func normAuthKey(k string) string {
	s := strings.TrimPrefix(k, "http://")
	s = strings.TrimPrefix(s, "https://")
	if s != k {
		s, _, _ = strings.Cut(s, "/")
	}
	return CanonicalRegistry(s)
}

// CanonicalRegistry names Docker Hub by one name whatever alias a
// reference or a file uses (docker.io, registry-1.docker.io), and leaves
// other registry names alone: credentials are kept and compared under it.
func CanonicalRegistry(r string) string {
	switch r {
	case "docker.io", "registry-1.docker.io":
		return "index.docker.io"
	}
	return r
}

func (e authEntryJSON) config() (authn.AuthConfig, error) {
	cfg := authn.AuthConfig{
		Username:      e.Username,
		Password:      e.Password,
		IdentityToken: e.IdentityToken,
	}
	if e.Auth != "" {
		dec, err := base64.StdEncoding.DecodeString(e.Auth)
		if err != nil {
			return cfg, fmt.Errorf("malformed auth: %w", err)
		}
		user, pass, ok := strings.Cut(string(dec), ":")
		if !ok {
			return cfg, errors.New(`malformed auth: not "user:password"`)
		}
		cfg.Username, cfg.Password = user, strings.Trim(pass, "\x00")
	}
	if cfg.IdentityToken != "" {
		// An identity token is a refresh token; a password next to it would
		// be the "<token>" placeholder, not a real secret.
		cfg.Password = ""
	}
	return cfg, nil
}
