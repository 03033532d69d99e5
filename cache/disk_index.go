package cache

import (
	"errors"
	"fmt"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/sirupsen/logrus"
)

// maxIndexLen makes simplelru's entry-count bound unreachable; Disk bounds
// bytes itself.
const maxIndexLen = math.MaxInt

// scan indexes the entry files left by earlier runs, chunks and whole
// files alike, oldest modification time first (Get and OpenWhole refresh
// mtimes, so that approximates access order), and removes temp files left
// by an Add or AddWhole interrupted by a crash. Unknown files are left
// alone and not counted. Entries are not verified here; Get does that
// lazily for chunks (whole files were verified and synced before they got
// their name), so startup stays cheap on a large cache.
func (d *Disk) scan() error {
	top, err := os.ReadDir(d.dir)
	if err != nil {
		return fmt.Errorf("reading %s: %w", d.dir, err)
	}
	var all []found
	for _, e := range top {
		p := filepath.Join(d.dir, e.Name())
		if strings.HasPrefix(e.Name(), tempPrefix) && e.Type().IsRegular() {
			if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
				d.log.WithField("path", p).WithError(err).Warn("cache: removing leftover temp file failed")
			}
			continue
		}
		if e.IsDir() && e.Name() == wholeSubdir {
			// Whole files: a second kind of entry, in the same index and
			// under the same cap, with <2 hex>/<64 hex> below wholeSubdir.
			subs, err := os.ReadDir(p)
			if err != nil {
				d.log.WithField("path", p).WithError(err).Warn("cache: skipping unreadable whole-file dir")
				continue
			}
			for _, s := range subs {
				if s.IsDir() && len(s.Name()) == 2 {
					all = d.scanSubdir(filepath.Join(p, s.Name()), s.Name(), wholeNamePrefix, all)
				}
			}
			continue
		}
		if !e.IsDir() || len(e.Name()) != 2 {
			continue
		}
		all = d.scanSubdir(p, e.Name(), "", all)
	}
	sort.Slice(all, func(i, j int) bool { return all[i].mtime.Before(all[j].mtime) })

	d.mu.Lock()
	defer d.mu.Unlock()
	for _, f := range all {
		d.accountLocked(f.name, f.size)
	}
	d.log.WithFields(logrus.Fields{"entries": len(all), "bytes": d.size}).Debug("cache: indexed disk cache")
	return nil
}

// found is an entry file scan met.
type found struct {
	name  string
	size  int64
	mtime time.Time
}

// scanSubdir appends the entry files of one <2 hex> subdir to all, their
// index names prefixed with prefix ("" for chunks, wholeNamePrefix for
// whole files).
func (d *Disk) scanSubdir(p, sub, prefix string, all []found) []found {
	ents, err := os.ReadDir(p)
	if err != nil {
		// One unreadable subdir should not cost the whole cache.
		d.log.WithField("path", p).WithError(err).Warn("cache: skipping unreadable cache subdir")
		return all
	}
	for _, f := range ents {
		if !f.Type().IsRegular() || !isEntryName(f.Name()) || f.Name()[:2] != sub {
			continue
		}
		info, err := f.Info()
		if err != nil {
			continue // removed meanwhile
		}
		all = append(all, found{prefix + f.Name(), info.Size(), info.ModTime()})
	}
	return all
}

// accountLocked records name as most recently used with the given file size.
func (d *Disk) accountLocked(name string, size int64) {
	if old, ok := d.index.Peek(name); ok {
		d.uncountLocked(name, old)
	}
	d.index.Add(name, size)
	d.size += size
	if isWholeName(name) {
		d.wholeFiles++
		d.wholeBytes += size
	}
}

// uncountLocked subtracts an entry that has left the index (or is about to
// be re-added) from the totals.
func (d *Disk) uncountLocked(name string, size int64) {
	d.size -= size
	if isWholeName(name) {
		d.wholeFiles--
		d.wholeBytes -= size
	}
}

// evictLocked removes least recently used entries until the cache is under
// its cap.
func (d *Disk) evictLocked() {
	max := d.maxBytes.Load()
	if max <= 0 {
		return
	}
	for d.size > max {
		name, size, ok := d.index.RemoveOldest()
		if !ok {
			return
		}
		d.uncountLocked(name, size)
		d.evictions.Add(1)
		p := d.pathOf(name)
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			// The file stays but is no longer counted; the next NewDisk
			// will count it again.
			d.log.WithField("path", p).WithError(err).Warn("cache: evicting entry failed")
		}
	}
}

func (d *Disk) has(name string) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.index.Contains(name)
}

// touch marks the entry whose file fi was just read and verified as most
// recently used. If it is not indexed (placed by another process, or
// evicted or replaced after it was read) or indexed with another size, it
// is (re)counted only if fi is still the file in place, so that a file
// already deleted is never counted.
func (d *Disk) touch(name string, fi fs.FileInfo) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if size, ok := d.index.Get(name); ok && size == fi.Size() {
		return
	}
	// Unindexed, or the file was changed behind the cache's back (it still
	// verified): count the file that is actually there.
	if st, err := os.Stat(d.pathOf(name)); err == nil && os.SameFile(st, fi) {
		d.accountLocked(name, fi.Size())
		d.evictLocked()
	}
}

// forget drops the entry for name. If bad is not nil it is the file that
// failed verification, and it is removed only if it is still the one in
// place: an Add may have renamed a good file over it since it was read.
// With bad nil the file was found missing, and the index entry is dropped
// only if the file is still missing.
func (d *Disk) forget(name string, bad fs.FileInfo) {
	p := d.pathOf(name)
	d.mu.Lock()
	defer d.mu.Unlock()
	if bad == nil && !d.index.Contains(name) {
		return // a plain miss: nothing to do, and no stat to pay for
	}
	st, err := os.Stat(p)
	switch {
	case err == nil && bad != nil && os.SameFile(st, bad):
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			d.log.WithField("path", p).WithError(err).Warn("cache: removing corrupt entry failed")
			// Keep counting it: it is still there.
			return
		}
	case err == nil:
		return // a different, newer file is in place
	case !errors.Is(err, fs.ErrNotExist):
		return // cannot tell; leave the accounting as it is
	}
	if size, ok := d.index.Peek(name); ok {
		d.index.Remove(name)
		d.uncountLocked(name, size)
	}
}
