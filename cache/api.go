// Package cache keeps verified chunk contents in memory and on disk, keyed
// by content digest; layers are immutable, so an entry never goes stale.
package cache

// Cache maps a key to bytes. Keys of the form "sha256:<hex>" are content
// digests and are verified against the bytes wherever they are loaded from
// disk. Implementations are safe for concurrent use; Add may drop the entry
// (e.g. disk full) without error, since the caller can always refetch.
type Cache interface {
	Get(key string) ([]byte, bool)
	Add(key string, b []byte)
}

// Peeker is a Cache that can tell whether it holds a key without reading
// the entry or changing its place in the LRU order. The answer is a hint:
// a Disk entry may still fail verification (or vanish) when it is read.
type Peeker interface {
	Has(key string) bool
}

// Keeper is a Cache that can keep b itself instead of a copy, for callers
// handing over a buffer they never write to again (a chunk just decoded
// and verified): the copy Add takes costs as much fresh memory as the
// entry, which on a cold start is page faults on the path to the first
// read.
type Keeper interface {
	Keep(key string, b []byte)
}
