package layer

import (
	"context"
	"errors"

	digest "github.com/opencontainers/go-digest"
	"github.com/sirupsen/logrus"
)

// fetchError marks a TOC read that failed in transport: the BlobReader has
// already spent its own retries on it, so fetching again here would only
// multiply the wait.
type fetchError struct{ err error }

func (e *fetchError) Error() string { return e.err.Error() }
func (e *fetchError) Unwrap() error { return e.err }

// noFooterError marks a blob whose tail ends in no footer of any format.
// With no TOC digest expected it is final at once: a gzip layer is told
// apart with one small read, not verifyAttempts of them.
type noFooterError struct{ err error }

func (e *noFooterError) Error() string { return e.err.Error() }
func (e *noFooterError) Unwrap() error { return e.err }

// readTOCVerified is readTOC, fetched again (up to verifyAttempts in all)
// when the bytes that arrived do not make a valid TOC: a footer, gzip
// stream, JSON or TOC digest spoiled in transit must not fail the layer, and
// above all must not make the pool remember it as in no format it serves forever.
// A blob with no footer of any format costs one small tail read when no
// TOC digest is expected (nothing claimed it is served lazily), and
// verifyAttempts tail reads when one is.
func readTOCVerified(ctx context.Context, blob BlobReader, want digest.Digest, o options) (*rawTOC, error) {
	log := o.log
	for attempt := 1; ; attempt++ {
		raw, err := readTOC(ctx, blob, want, o)
		var fe *fetchError
		var nf *noFooterError
		if err == nil || errors.As(err, &fe) || errors.Is(err, ErrLimit) || (want == "" && errors.As(err, &nf)) || attempt >= verifyAttempts || ctx.Err() != nil {
			return raw, err
		}
		if blob.Size() < legacyFooterSize {
			return raw, err // decided without fetching: nothing to gain
		}
		log.WithFields(logrus.Fields{"attempt": attempt, "size": blob.Size()}).WithError(err).
			Warn("TOC failed its checks; fetching it again")
	}
}
