package remote

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// ErrFetchTimeout says a blob read used up Options.FetchTimeout (all its
// attempts and backoff) without getting its bytes. It deliberately does not
// match context.DeadlineExceeded: callers treat a context error as "my
// caller gave up" and may retry on behalf of other waiters, while this one
// means "the registry did not deliver in time" and should become EIO.
var ErrFetchTimeout = errors.New("registry did not deliver within the fetch timeout")

// withFetchDeadline runs read under a deadline of d from now. If read fails
// because that deadline passed (and not because ctx itself ended), the
// error is rewritten to wrap ErrFetchTimeout, keeping the last attempt's
// error in the text.
func withFetchDeadline(ctx context.Context, d time.Duration, read func(ctx context.Context) (int, error)) (int, error) {
	dctx, cancel := context.WithTimeoutCause(ctx, d, ErrFetchTimeout)
	defer cancel()
	n, err := read(dctx)
	if err != nil && ctx.Err() == nil && errors.Is(context.Cause(dctx), ErrFetchTimeout) {
		return n, fmt.Errorf("%w (%s): %v", ErrFetchTimeout, d, err)
	}
	return n, err
}

// configAttempts is how often an image config that does not match its
// digest is fetched before that is final (like layer chunks: a flipped bit
// in transit should not fail a pull, a corrupt registry should not be asked
// forever).
const configAttempts = 3
