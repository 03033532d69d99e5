package cache

// Stats are counters for metrics and tests. Hits and Misses count Get
// results, Adds counts entries actually stored (not ones dropped for being
// too large or failing to write), Evictions counts entries pushed out to
// stay under the byte cap, and Bytes is the current size of what is held.
type Stats struct {
	Hits, Misses, Adds, Evictions, Bytes int64
}
