package remote

import (
	"fmt"
	"net"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
)

// parseRef parses an image reference, marking its registry insecure (plain
// HTTP) when Options.Insecure lists it or it is a loopback host. ggcr only
// recognises 127.0.0.1 and localhost itself; the rest of 127/8 and ::1 are
// added here.
func (r *Resolver) parseRef(ref string) (name.Reference, error) {
	parsed, err := name.ParseReference(ref)
	if err != nil {
		return nil, fmt.Errorf("parse image reference %q: %w", ref, err)
	}
	if !r.insecureHost(parsed.Context().RegistryStr()) {
		return parsed, nil
	}
	parsed, err = name.ParseReference(ref, name.Insecure)
	if err != nil {
		return nil, fmt.Errorf("parse image reference %q: %w", ref, err)
	}
	return parsed, nil
}

// insecureHost reports whether registry "host[:port]" is to be reached
// over plain HTTP.
func (r *Resolver) insecureHost(registry string) bool {
	host := registry
	if h, _, err := net.SplitHostPort(registry); err == nil {
		host = h
	}
	host = strings.Trim(host, "[]")
	if isLoopback(host) {
		return true
	}
	for _, e := range r.s.insecure {
		if e == registry || e == host {
			return true
		}
	}
	return false
}

func isLoopback(host string) bool {
	if strings.EqualFold(host, "localhost") || strings.HasSuffix(strings.ToLower(host), ".localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
