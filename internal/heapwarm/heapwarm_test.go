package heapwarm

import (
	"runtime/metrics"
	"testing"
)

func readMetrics(names ...string) map[string]uint64 {
	s := make([]metrics.Sample, len(names))
	for i, n := range names {
		s[i].Name = n
	}
	metrics.Read(s)
	out := map[string]uint64{}
	for _, m := range s {
		out[m.Name] = m.Value.Uint64()
	}
	return out
}

// After Warm, the heap holds the warmed memory as free pages still backed
// by the kernel (not released), and the GC's heap goal is high enough that
// the scavenger leaves them there.
func TestWarmLeavesBackedFreeHeap(t *testing.T) {
	const mib = 32
	const (
		free = "/memory/classes/heap/free:bytes"
		goal = "/gc/heap/goal:bytes"
	)
	before := readMetrics(free, goal)
	Warm(mib)
	after := readMetrics(free, goal)
	if got := after[free] - min(before[free], after[free]); got < mib<<20*9/10 {
		t.Errorf("free backed heap grew by %d MiB, want about %d", got>>20, mib)
	}
	if after[goal] < 2*mib<<20 {
		t.Errorf("heap goal %d MiB, want at least %d so the scavenger keeps the warmed pages", after[goal]>>20, 2*mib)
	}
	if len(ballast) != mib<<20 {
		t.Errorf("ballast of %d bytes, want %d", len(ballast), mib<<20)
	}
}
