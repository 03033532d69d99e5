package keychain

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os/exec"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
)

// helperTimeout bounds one run of a docker-credential-* helper: a helper
// waiting on a locked desktop keyring must not hang a registry handshake.
const helperTimeout = 10 * time.Second

// errHelperNotFound is a helper's "no credentials for this server" answer.
var errHelperNotFound = errors.New("credentials not found by helper")

// helperGet runs `docker-credential-<helper> get` with serverURL on stdin,
// the protocol of github.com/docker/docker-credential-helpers, and returns
// the credentials it prints. A helper that knows nothing of the server
// yields errHelperNotFound. The helper's output is never put in an error:
// it may hold the secret.
func helperGet(ctx context.Context, helper, serverURL string) (authn.AuthConfig, error) {
	ctx, cancel := context.WithTimeout(ctx, helperTimeout)
	defer cancel()
	prog := "docker-credential-" + helper
	cmd := exec.CommandContext(ctx, prog, "get")
	cmd.Stdin = strings.NewReader(serverURL)
	var out, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &stderr
	if err := cmd.Run(); err != nil {
		// Helpers print this exact text (credentials.errCredentialsNotFound)
		// for an unknown server.
		if strings.Contains(out.String(), "credentials not found") || strings.Contains(stderr.String(), "credentials not found") {
			return authn.AuthConfig{}, errHelperNotFound
		}
		return authn.AuthConfig{}, fmt.Errorf("running %s get for %s: %w", prog, serverURL, err)
	}
	var resp struct {
		ServerURL string
		Username  string
		Secret    string
	}
	if err := json.Unmarshal(out.Bytes(), &resp); err != nil {
		return authn.AuthConfig{}, fmt.Errorf("%s get for %s: output is not credentials JSON", prog, serverURL)
	}
	if resp.Username == "" && resp.Secret == "" {
		return authn.AuthConfig{}, errHelperNotFound
	}
	if resp.Username == "<token>" {
		// Docker's convention for an identity (refresh) token.
		return authn.AuthConfig{IdentityToken: resp.Secret}, nil
	}
	return authn.AuthConfig{Username: resp.Username, Password: resp.Secret}, nil
}

// helperFor returns the credential helper a config file names for registry
// (credHelpers by host, else the catch-all credsStore) and the server name
// to ask it for. Docker Hub is known to helpers by its legacy URL.
func (f authFile) helperFor(registry string) (helper, server string) {
	host := registry
	if CanonicalRegistry(registry) == "index.docker.io" {
		host = "docker.io"
	}
	server = host
	if host == "docker.io" {
		server = "https://index.docker.io/v1/"
	}
	for _, k := range []string{host, registry, server} {
		if h := f.CredHelpers[k]; h != "" {
			return h, server
		}
	}
	return f.CredsStore, server
}
