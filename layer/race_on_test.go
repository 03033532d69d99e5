//go:build race

package layer

// raceDetector: the race detector's own bookkeeping makes heap
// measurements meaningless and each GC slow; the memory tests skip under
// it (make test runs them in a run without it).
const raceDetector = true
