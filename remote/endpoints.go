package remote

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/poolfs/poolfs/remote/regconf"
	"github.com/sirupsen/logrus"
)

// endpoints returns the physical references to fetch the logical reference
// ref from, in order (mirrors first, then the registry or its rewritten
// location), each parsed with plain HTTP where registries.conf, the
// Insecure option or a loopback host say so.
func (r *Resolver) endpoints(ref string) ([]name.Reference, error) {
	eps, err := r.s.regs.Endpoints(ref)
	if err != nil {
		return nil, err
	}
	out := make([]name.Reference, 0, len(eps))
	for _, ep := range eps {
		parsed, err := name.ParseReference(ep.Ref)
		if err == nil && (ep.Insecure || r.insecureHost(parsed.Context().RegistryStr())) {
			parsed, err = name.ParseReference(ep.Ref, name.Insecure)
		}
		if err != nil {
			return nil, fmt.Errorf("parse reference %q (registries.conf rewrite of %s): %w", ep.Ref, ref, err)
		}
		out = append(out, parsed)
	}
	return out, nil
}

// fetchImageFrom tries each endpoint in turn until one serves the image, as
// podman does with mirrors: a mirror that is down or lacks the image falls
// through to the next one and finally to the registry itself.
func (r *Resolver) fetchImageFrom(ctx context.Context, eps []name.Reference) (*imageEntry, error) {
	var failed []string
	var last error
	for i, ep := range eps {
		img, err := r.fetchImage(ctx, ep)
		if err == nil {
			return img, nil
		}
		if ctx.Err() != nil {
			return nil, err
		}
		last = err
		failed = append(failed, ep.Context().RegistryStr())
		if i < len(eps)-1 {
			r.s.log.WithFields(logrus.Fields{"endpoint": ep.String(), "next": eps[i+1].String()}).WithError(err).
				Warn("endpoint failed; trying the next one")
		}
	}
	if len(eps) > 1 {
		return nil, fmt.Errorf("every endpoint failed (%s), last: %w", strings.Join(failed, ", "), last)
	}
	return nil, last
}

// CheckRef reports whether ref may be served at all: it returns an error
// wrapping regconf.ErrBlocked if registries.conf blocks its registry. It does no
// I/O, so the pool can ask before serving an already open layer under a
// new name.
func (r *Resolver) CheckRef(ref string) error {
	// Only a block is this check's business: a reference that does not
	// parse fails where it is resolved, with that error.
	if _, err := r.s.regs.Endpoints(ref); errors.Is(err, regconf.ErrBlocked) {
		return err
	}
	return nil
}
