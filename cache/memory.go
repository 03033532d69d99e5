package cache

import (
	"math"
	"sync"

	"github.com/hashicorp/golang-lru/v2/simplelru"
)

// Memory is an in-memory LRU bounded by the total length of the values it
// holds rather than by entry count, because chunk sizes vary widely and the
// memory they take is what needs bounding.
//
// Slices returned by Get are shared with the cache and with other callers:
// the cache never mutates them, and callers must not either.
type Memory struct {
	mu       sync.Mutex
	lru      *simplelru.LRU[string, []byte]
	maxBytes int64
	bytes    int64
	stats    Stats
}

var (
	_ Cache  = (*Memory)(nil)
	_ Peeker = (*Memory)(nil)
)

// NewMemory returns a Memory holding at most maxBytes bytes of values (keys
// and bookkeeping are not counted). A maxBytes <= 0 keeps nothing.
func NewMemory(maxBytes int64) *Memory {
	// simplelru only bounds the entry count; make that bound unreachable and
	// do the byte accounting here. NewLRU fails only for a size <= 0.
	lru, _ := simplelru.NewLRU[string, []byte](math.MaxInt, nil)
	return &Memory{lru: lru, maxBytes: maxBytes}
}

// Get returns the value for key and marks it most recently used. The slice
// has its capacity clipped to its length so that an append by the caller
// reallocates instead of writing into memory the cache still references.
func (m *Memory) Get(key string) ([]byte, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	b, ok := m.lru.Get(key)
	if !ok {
		m.stats.Misses++
		return nil, false
	}
	m.stats.Hits++
	return b[:len(b):len(b)], true
}

// Has reports whether key is held, without marking it used or counting a
// hit or miss.
func (m *Memory) Has(key string) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.lru.Contains(key)
}

// Add stores a copy of b under key, evicting least recently used entries
// until the total is within the bound. The copy is taken because callers
// commonly reuse their read buffers, and a cache entry that changes under
// its key would be served as if it were verified. An entry larger than the
// whole bound is dropped rather than flushing everything else for it.
func (m *Memory) Add(key string, b []byte) {
	if int64(len(b)) > m.maxBytes {
		m.remove(key) // without copying b for nothing
		return
	}
	m.Keep(key, append(make([]byte, 0, len(b)), b...))
}

// Keep is Add without the copy, for a caller that hands b over and never
// writes to it again (see Keeper).
func (m *Memory) Keep(key string, b []byte) {
	n := int64(len(b))
	if n > m.maxBytes {
		m.remove(key)
		return
	}

	m.mu.Lock()
	defer m.mu.Unlock()
	m.removeLocked(key)
	m.lru.Add(key, b)
	m.bytes += n
	m.stats.Adds++
	for m.bytes > m.maxBytes {
		_, old, ok := m.lru.RemoveOldest()
		if !ok {
			break
		}
		m.bytes -= int64(len(old))
		m.stats.Evictions++
	}
}

// remove drops key: an older value under it must not outlive a
// replacement that could not be kept.
func (m *Memory) remove(key string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.removeLocked(key)
}

func (m *Memory) removeLocked(key string) {
	if old, ok := m.lru.Peek(key); ok {
		m.lru.Remove(key)
		m.bytes -= int64(len(old))
	}
}

// Len returns the number of entries held.
func (m *Memory) Len() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.lru.Len()
}

// Stats returns a snapshot of the counters; Bytes is the total value length.
func (m *Memory) Stats() Stats {
	m.mu.Lock()
	defer m.mu.Unlock()
	s := m.stats
	s.Bytes = m.bytes
	return s
}
