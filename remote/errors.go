package remote

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
)

// StatusError is an HTTP status a registry answered with that poolfs could
// not use. It comes wrapped in an error saying what was being done; use
// errors.As to look at StatusCode (e.g. 404: the blob or image is gone).
type StatusError struct {
	StatusCode int
	// Detail is the registry's error text (its JSON "errors" or a body
	// snippet), if any.
	Detail string
	// RetryAfter is the server's Retry-After, 0 if absent.
	RetryAfter time.Duration
}

func (e *StatusError) Error() string {
	s := fmt.Sprintf("registry answered %d %s", e.StatusCode, http.StatusText(e.StatusCode))
	if e.Detail != "" {
		s += ": " + e.Detail
	}
	return s
}

// statusError builds a StatusError from a response, reading a little of
// the body for the registry's explanation.
func statusError(resp *http.Response) *StatusError {
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
	detail := strings.TrimSpace(string(body))
	if len(detail) > 256 {
		detail = detail[:256] + "..."
	}
	return &StatusError{
		StatusCode: resp.StatusCode,
		Detail:     detail,
		RetryAfter: parseRetryAfter(resp.Header.Get("Retry-After"), time.Now()),
	}
}

// fromTransportError turns ggcr's *transport.Error (manifest fetches, the
// /v2/ ping, token exchange) into a StatusError so callers and the retry
// logic see one error type for "the registry said no".
func fromTransportError(err error) error {
	var te *transport.Error
	if err == nil || !errors.As(err, &te) {
		return err
	}
	return &statusWrap{se: &StatusError{StatusCode: te.StatusCode}, err: err}
}

// statusWrap keeps ggcr's message (it names the request and the registry's
// error codes) while still matching errors.As(*StatusError).
type statusWrap struct {
	se  *StatusError
	err error
}

func (w *statusWrap) Error() string { return w.err.Error() }
func (w *statusWrap) Unwrap() []error {
	return []error{w.se, w.err}
}

// parseRetryAfter understands both forms of Retry-After (delta seconds and
// HTTP date). Garbage or past dates give 0.
func parseRetryAfter(v string, now time.Time) time.Duration {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0
	}
	if secs, err := strconv.ParseInt(v, 10, 64); err == nil {
		if secs <= 0 {
			return 0
		}
		if secs > int64(maxRetryAfter/time.Second) {
			return maxRetryAfter
		}
		return time.Duration(secs) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil {
		if d := t.Sub(now); d > 0 {
			return min(d, maxRetryAfter)
		}
	}
	return 0
}
