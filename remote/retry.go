package remote

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"syscall"
	"time"

	"github.com/sirupsen/logrus"
)

// errShortBody marks a response that ended before the bytes it promised;
// the retry asks again for what is still missing.
var errShortBody = errors.New("response body ended early")

// verdict is what the retry loop should do about one failed attempt.
type verdict struct {
	retry        bool
	unauthorized bool          // 401: credentials or token went stale
	after        time.Duration // server-requested wait (Retry-After)
	status       int           // HTTP status, 0 if none
}

// classify sorts errors into "try again" and "give up". Anything not
// recognised as transient is final: retrying a malformed manifest or a 404
// only delays the error.
func classify(err error) verdict {
	var se *StatusError
	if errors.As(err, &se) {
		v := verdict{status: se.StatusCode, after: se.RetryAfter}
		switch c := se.StatusCode; {
		case c == http.StatusUnauthorized, c == http.StatusForbidden:
			// Registries answer an expired bearer token with either,
			// depending on the implementation: renew it once.
			v.unauthorized = true
		case c == http.StatusRequestTimeout, c == http.StatusTooManyRequests:
			v.retry = true
		case c >= 500 && c != http.StatusNotImplemented && c != http.StatusHTTPVersionNotSupported:
			v.retry = true
		}
		return v
	}
	// Certificate problems will not heal by themselves.
	var (
		unknownCA  x509.UnknownAuthorityError
		hostnameEr x509.HostnameError
		verifyErr  *tls.CertificateVerificationError
	)
	if errors.As(err, &unknownCA) || errors.As(err, &hostnameEr) || errors.As(err, &verifyErr) {
		return verdict{}
	}
	switch {
	case errors.Is(err, errShortBody),
		errors.Is(err, io.ErrUnexpectedEOF),
		errors.Is(err, io.EOF),
		errors.Is(err, context.DeadlineExceeded), // the attempt's own timeout
		errors.Is(err, syscall.ECONNRESET),
		errors.Is(err, syscall.ECONNREFUSED),
		errors.Is(err, syscall.EPIPE),
		errors.Is(err, net.ErrClosed):
		return verdict{retry: true}
	}
	var ne net.Error
	if errors.As(err, &ne) {
		return verdict{retry: true}
	}
	return verdict{}
}

// backoff returns the wait before retry number n (1-based): exponential
// from base, capped, with "equal jitter" (half fixed, half random) so the
// wait never collapses to zero.
func backoff(n int, base, ceiling time.Duration) time.Duration {
	d := base
	for i := 1; i < n && d < ceiling; i++ {
		d *= 2
	}
	d = min(d, ceiling)
	half := d / 2
	return half + rand.N(half+1)
}

// attemptFunc is one try of an operation, bounded by its own timeout.
type attemptFunc func(ctx context.Context) error

// retry runs op until it succeeds, fails for good, or has used
// 1+s.retries attempts. Every attempt gets its own RequestTimeout derived
// from ctx; cancelling ctx stops everything at once. On the first 401,
// reauth (if set) drops cached credentials and the attempt is repeated
// without counting against the budget: tokens expire, and a fresh handshake
// is the cure. The returned error is op's last, annotated with the count.
func (r *Resolver) retry(ctx context.Context, log *logrus.Entry, reauth func(), op attemptFunc) error {
	return r.retryUpTo(ctx, log, r.s.retries, reauth, op)
}

// retryUpTo is retry with a budget of maxRetries retries instead of the
// resolver's: 0 for a request whose caller has the ordinary reads, with
// their retries, to fall back on.
func (r *Resolver) retryUpTo(ctx context.Context, log *logrus.Entry, maxRetries int, reauth func(), op attemptFunc) error {
	reauthed := false
	retries := 0
	for attempt := 1; ; attempt++ {
		if err := ctx.Err(); err != nil {
			return err
		}
		actx, cancel := context.WithTimeout(ctx, r.s.timeout)
		err := op(actx)
		cancel()
		if err == nil {
			return nil
		}
		if cerr := ctx.Err(); cerr != nil {
			// The caller gave up; report that, not a symptom of it.
			return fmt.Errorf("%w (last error: %v)", cerr, err)
		}
		v := classify(err)
		alog := log.WithField("attempt", attempt).WithError(err)
		if v.status != 0 {
			alog = alog.WithField("status", v.status)
		}
		if v.unauthorized && !reauthed && reauth != nil {
			reauthed = true
			alog.Debug("unauthorized; renewing credentials")
			reauth()
			continue
		}
		if !v.retry || retries >= maxRetries {
			if attempt > 1 {
				return fmt.Errorf("giving up after %d attempts: %w", attempt, err)
			}
			return err
		}
		retries++
		r.stats.retries.Add(1)
		wait := backoff(retries, r.s.backoff, r.s.backoffMx)
		if v.after > wait {
			wait = v.after
		}
		alog.WithField("wait", wait).Warn("registry request failed; retrying")
		if serr := sleep(ctx, wait); serr != nil {
			return fmt.Errorf("%w (last error: %v)", serr, err)
		}
	}
}

// sleep waits d or until ctx is done.
func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
