package cache

import (
	"errors"
	"io/fs"
	"os"
)

// MaxBytes returns the cap set by SetMaxBytes (0: none).
func (d *Disk) MaxBytes() int64 { return max(d.maxBytes.Load(), 0) }

// TrimTo evicts least recently used entries until the cache holds at most
// keep bytes, and returns how many bytes it freed. It is `poolfs gc`: the
// cap stays as it was, so the cache grows again with use. Entries of layers
// in use may go; they are fetched again when read.
func (d *Disk) TrimTo(keep int64) int64 {
	keep = max(keep, 0)
	d.mu.Lock()
	defer d.mu.Unlock()
	var freed int64
	for d.size > keep {
		name, size, ok := d.index.RemoveOldest()
		if !ok {
			break
		}
		d.uncountLocked(name, size)
		freed += size
		d.evictions.Add(1)
		p := d.pathOf(name)
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			d.log.WithField("path", p).WithError(err).Warn("cache: trimming entry failed")
		}
	}
	return freed
}
