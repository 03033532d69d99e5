package layer

import "sync/atomic"

// verifyFailures counts chunks whose bytes did not match their digest,
// across all layers of the process, for metrics.
var verifyFailures atomic.Int64

// VerifyFailures returns how many chunk verifications failed so far (each
// failed attempt counts; the chunk is refetched).
func VerifyFailures() int64 { return verifyFailures.Load() }
