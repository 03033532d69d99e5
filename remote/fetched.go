package remote

import (
	"sort"
	"sync"
)

// FetchedBytes reports how many distinct bytes of the blob have been
// received from the registry so far (bytes fetched twice, e.g. after a
// cache eviction, count once). Status reports divide it by Size for the
// layer's fetched fraction.
func (b *blob) FetchedBytes() int64 { return b.fetched.total() }

// rangeSet is a set of byte offsets kept as sorted, disjoint, non-adjacent
// half-open intervals. Lazy reads touch few, mostly contiguous regions, so
// the list stays short.
type rangeSet struct {
	mu  sync.Mutex
	ivs [][2]int64
	sum int64
}

func (s *rangeSet) add(start, end int64) {
	if end <= start {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	// First interval that ends at or after start: it may touch the new one.
	i := sort.Search(len(s.ivs), func(i int) bool { return s.ivs[i][1] >= start })
	j := i
	for j < len(s.ivs) && s.ivs[j][0] <= end {
		start = min(start, s.ivs[j][0])
		end = max(end, s.ivs[j][1])
		s.sum -= s.ivs[j][1] - s.ivs[j][0]
		j++
	}
	s.ivs = append(s.ivs[:i], append([][2]int64{{start, end}}, s.ivs[j:]...)...)
	s.sum += end - start
}

func (s *rangeSet) total() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.sum
}

// Received counts the blob's bytes [start, end) as fetched when they came
// from the registry by another read than the blob's own: the pool reads a
// blob's end by its digest (Resolver.Tail) before the manifest has
// resolved the blob.
func (b *blob) Received(start, end int64) { b.fetched.add(start, end) }
