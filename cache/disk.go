package cache

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/golang-lru/v2/simplelru"
	"github.com/sirupsen/logrus"
)

// Disk keeps entries as files under one directory, one file per key, each
// holding the bytes followed by their sha256 (see entryPath and encode). It
// also keeps whole files (see whole.go), exact copies of file contents
// without a trailer, in the same index and under the same cap. It is meant
// to be the only user of its directory while open.
//
// File contents are only trusted after verification on every Get, so a
// torn write, bit rot or an edited file turns into a miss, never bad data.
type Disk struct {
	dir string
	log *logrus.Entry

	// mu guards the index and size, and is held across renames into place
	// and removals so that the index and the files change together.
	mu sync.Mutex
	// index maps file names (hex of sha256(key)) to file sizes in access
	// order; its oldest entry is the next to evict.
	index *simplelru.LRU[string, int64]
	size  int64
	// wholeFiles and wholeBytes are the part of the index and of size that
	// whole files (see whole.go) take.
	wholeFiles, wholeBytes int64

	maxBytes atomic.Int64

	hits, misses, adds, evictions atomic.Int64
	wholeAdds                     atomic.Int64

	// warned records which kinds of write failure have been logged at
	// warning level, so that a full disk does not log once per chunk.
	warned sync.Map

	// createTemp is os.CreateTemp, replaceable by tests to simulate write
	// failures that cannot be produced on demand (ENOSPC, EIO).
	createTemp func(dir, pattern string) (tempFile, error)
}

// tempFile is the part of *os.File that Add uses.
type tempFile interface {
	io.Writer
	Close() error
	Name() string
}

var (
	_ Cache  = (*Disk)(nil)
	_ Peeker = (*Disk)(nil)
)

// NewDisk opens the cache in dir, creating it (0700) if missing, and indexes
// what earlier runs left there, oldest modification time first as the least
// recently used. There is no byte cap until SetMaxBytes is called.
func NewDisk(dir string, log *logrus.Entry) (*Disk, error) {
	if log == nil {
		log = logrus.NewEntry(logrus.StandardLogger())
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("creating cache dir %s: %w", dir, err)
	}
	index, err := simplelru.NewLRU[string, int64](maxIndexLen, nil)
	if err != nil {
		return nil, fmt.Errorf("creating cache index: %w", err)
	}
	d := &Disk{
		dir:   dir,
		log:   log.WithField("dir", dir),
		index: index,
		createTemp: func(dir, pattern string) (tempFile, error) {
			return os.CreateTemp(dir, pattern)
		},
	}
	if err := d.scan(); err != nil {
		return nil, fmt.Errorf("scanning cache dir %s: %w", dir, err)
	}
	return d, nil
}

// SetMaxBytes caps the bytes on disk (trailers included) and evicts least
// recently used entries at once if the cache is already over it. n <= 0
// removes the cap.
func (d *Disk) SetMaxBytes(n int64) {
	d.maxBytes.Store(n)
	d.mu.Lock()
	defer d.mu.Unlock()
	d.evictLocked()
}

// Size returns the bytes the cache's entry files take on disk.
func (d *Disk) Size() int64 {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.size
}

// Stats returns a snapshot of the counters; Bytes is Size().
func (d *Disk) Stats() Stats {
	return Stats{
		Hits:      d.hits.Load(),
		Misses:    d.misses.Load(),
		Adds:      d.adds.Load(),
		Evictions: d.evictions.Load(),
		Bytes:     d.Size(),
	}
}

// Get returns the verified bytes stored for key. A file that fails
// verification is removed so that the caller's refetch and Add replace it.
// The returned slice is the caller's own.
func (d *Disk) Get(key string) ([]byte, bool) {
	name, path := d.entryPath(key)
	b, fi, err := readEntry(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			// A plain miss, or someone else removed it: stop counting it.
			d.forget(name, nil)
		} else {
			d.warnOnce(readErrorKind(err), d.log.WithFields(logrus.Fields{"key": key, "path": path}).WithError(err),
				"cache: reading entry failed")
		}
		d.misses.Add(1)
		return nil, false
	}
	body, err := decode(key, b)
	if err != nil {
		d.log.WithFields(logrus.Fields{"key": key, "path": path}).WithError(err).
			Warn("cache: removing corrupt entry")
		d.forget(name, fi)
		d.misses.Add(1)
		return nil, false
	}
	d.touch(name, fi)
	// Keep the modification time in step with use so that the order rebuilt
	// by the next NewDisk is access order; failing (read-only dir) only
	// makes that order less exact.
	now := time.Now()
	_ = os.Chtimes(path, now, now)
	d.hits.Add(1)
	return body, true
}

// Has reports whether the index holds an entry for key, without reading
// or verifying it and without counting it as a use.
func (d *Disk) Has(key string) bool {
	name, _ := d.entryPath(key)
	return d.has(name)
}

// Add stores b under key. It never fails from the caller's point of view:
// a disk that is full, read-only or otherwise failing leaves the entry
// unstored (logged once per kind of failure) and no partial file behind.
func (d *Disk) Add(key string, b []byte) {
	name, path := d.entryPath(key)
	if max := d.maxBytes.Load(); max > 0 && int64(len(b))+trailerLen > max {
		// Storing it would evict everything else and then itself.
		return
	}
	sum := checksum(b)
	if err := checkKey(key, sum); err != nil {
		// Storing it would only have it rejected on every Get.
		d.log.WithFields(logrus.Fields{"key": key, "path": path}).WithError(err).
			Warn("cache: not storing entry")
		return
	}
	if isDigestKey(key) && d.has(name) {
		// Same key, same verified content: rewriting would only cost I/O.
		return
	}
	if err := d.write(name, path, b, sum); err != nil {
		d.writeFailed(key, path, err)
		return
	}
	d.adds.Add(1)
}
