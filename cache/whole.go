package cache

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/sirupsen/logrus"
)

// Whole files are exact copies of regular files' uncompressed contents,
// one file per content digest, for FUSE passthrough: the kernel reads them
// directly, so unlike chunk entries they carry no trailer and cannot be
// checked on each read. Their integrity rests on how they are written:
// the bytes come from chunks verified against the TOC, are hashed while
// written and must match the digest before the file is renamed into place,
// and the data is synced first, so that a crash cannot leave a file under
// its final name with contents that never reached the disk.
//
// They are a second kind of entry of the same index: the cap, the LRU
// order, eviction, TrimTo and the scan at startup cover both kinds, so a
// whole file competes for space with the chunks, not beside them.
const (
	// wholeSubdir holds the whole files, as <2 hex>/<64 hex> of the
	// content digest. Its name is not two characters long, so the chunk
	// layout (and older versions of scan) never mistake it for a chunk
	// subdir.
	wholeSubdir = "whole"
	// wholeNamePrefix starts the index names of whole files; chunk names
	// are bare 64-hex strings.
	wholeNamePrefix = wholeSubdir + "/"
	// wholeMaxShare: a whole file may take at most 1/wholeMaxShare of the
	// cap. It is stored beside its own chunks (the same bytes again), so
	// a file larger than half the cap could only be kept by evicting its
	// own chunks and nearly everything else.
	wholeMaxShare = 2
	// wholeTouchEvery is how stale a whole file's mtime may get before an
	// open refreshes it.
	wholeTouchEvery = time.Minute
)

var (
	// ErrWholeDigest says the contents given to AddWhole did not hash to
	// the digest they were offered under; nothing was stored.
	ErrWholeDigest = errors.New("contents do not hash to the whole-file digest")
	// ErrWholeTooLarge says a whole file would take too large a share of
	// the cache's cap to be worth keeping; nothing was read or stored.
	ErrWholeTooLarge = errors.New("whole file too large for the cache cap")
	// ErrWholeSize says the contents given to AddWhole were not of the
	// announced size; nothing was stored.
	ErrWholeSize = errors.New("contents are not of the whole file's size")
)

// WholeStats counts whole files: Files and Bytes are what the index holds
// now (part of Stats().Bytes), Written how many were stored by this
// process.
type WholeStats struct {
	Files, Bytes, Written int64
}

// WholeStats returns a snapshot of the whole-file counters.
func (d *Disk) WholeStats() WholeStats {
	d.mu.Lock()
	defer d.mu.Unlock()
	return WholeStats{Files: d.wholeFiles, Bytes: d.wholeBytes, Written: d.wholeAdds.Load()}
}

func isWholeName(name string) bool { return strings.HasPrefix(name, wholeNamePrefix) }

// wholeName checks that dgst is a sha256 digest ("sha256:" and 64 lowercase
// hex digits) and returns its index name and hex. Nothing else may name a
// whole file: the hex becomes a file name.
func wholeName(dgst string) (name, hexDigest string, err error) {
	h, ok := strings.CutPrefix(dgst, digestPrefix)
	if !ok || !isEntryName(h) {
		return "", "", fmt.Errorf("whole file digest %q: not sha256:<64 lowercase hex>", dgst)
	}
	return wholeNamePrefix + h, h, nil
}

func (d *Disk) wholePath(hexDigest string) string {
	return filepath.Join(d.dir, wholeSubdir, hexDigest[:2], hexDigest)
}

// HasWhole reports whether the index holds a whole file for dgst. It does
// no I/O and does not count as a use.
func (d *Disk) HasWhole(dgst string) bool {
	name, _, err := wholeName(dgst)
	return err == nil && d.has(name)
}

// OpenWhole opens the whole file stored for dgst read-only, if there is one
// of exactly size bytes, and marks it most recently used. A file of another
// size (truncated, or edited behind the cache's back) is removed. The
// caller closes the file; eviction may unlink it meanwhile, which leaves
// the open file readable.
func (d *Disk) OpenWhole(dgst string, size int64) (*os.File, bool) {
	name, h, err := wholeName(dgst)
	if err != nil || !d.has(name) {
		return nil, false
	}
	p := d.wholePath(h)
	f, err := os.Open(p)
	if err != nil {
		d.forget(name, nil)
		return nil, false
	}
	fi, err := f.Stat()
	if err != nil || !fi.Mode().IsRegular() || fi.Size() != size {
		f.Close()
		l := d.log.WithFields(logrus.Fields{"digest": dgst, "path": p, "want_size": size})
		if fi != nil {
			l = l.WithField("size", fi.Size())
			d.forget(name, fi)
		}
		l.WithError(err).Warn("cache: removing whole file of the wrong size or type")
		return nil, false
	}
	d.touch(name, fi)
	// Keep the mtime in step with use, as Get does for chunks, so that the
	// order the next NewDisk rebuilds is access order; but at most once a
	// minute: this runs on open(2), where the update (a journal write)
	// measured about 100 µs, a third of a small passthrough open.
	if now := time.Now(); now.Sub(fi.ModTime()) > wholeTouchEvery {
		_ = os.Chtimes(p, now, now)
	}
	return f, true
}

// AddWhole stores the size bytes read from src as the whole file for dgst.
// The bytes are hashed while written to a temp file and renamed into place
// only if they hash to dgst and are exactly size bytes; otherwise nothing
// is stored and the error wraps ErrWholeDigest or ErrWholeSize. A file
// larger than the cap allows (ErrWholeTooLarge) is refused before src is
// read. A whole file already stored for dgst is kept, and src is not read.
// ctx is checked between reads, so a cancelled AddWhole leaves no temp file.
func (d *Disk) AddWhole(ctx context.Context, dgst string, size int64, src io.Reader) (err error) {
	name, h, err := wholeName(dgst)
	if err != nil {
		return err
	}
	if size <= 0 {
		return fmt.Errorf("storing whole file %s of %d bytes: %w", dgst, size, ErrWholeSize)
	}
	if max := d.maxBytes.Load(); max > 0 && size > max/wholeMaxShare {
		return fmt.Errorf("storing whole file %s of %d bytes under a cap of %d: %w", dgst, size, max, ErrWholeTooLarge)
	}
	if d.has(name) {
		return nil
	}
	p := d.wholePath(h)
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		return fmt.Errorf("storing whole file %s: %w", dgst, &writeError{op: "creating whole-file dir", err: err})
	}
	f, err := d.createTemp(d.dir, tempPrefix+"*")
	if err != nil {
		return fmt.Errorf("storing whole file %s: %w", dgst, &writeError{op: "creating temp file", err: err})
	}
	tmp := f.Name()
	closed := false
	defer func() {
		if err != nil {
			if !closed {
				_ = f.Close()
			}
			// Nothing partial may stay behind; if even this fails, the
			// next NewDisk removes leftover temp files.
			_ = os.Remove(tmp)
		}
	}()

	hash := sha256.New()
	// One more byte than announced is asked for, to tell a source that
	// runs long from one of the right size.
	n, err := io.CopyBuffer(io.MultiWriter(f, hash), &ctxReader{ctx: ctx, r: io.LimitReader(src, size+1)}, make([]byte, 1<<20))
	if err != nil {
		return fmt.Errorf("storing whole file %s: copying its contents: %w", dgst, err)
	}
	if n != size {
		return fmt.Errorf("storing whole file %s: got %d bytes, want %d: %w", dgst, n, size, ErrWholeSize)
	}
	if got := hex.EncodeToString(hash.Sum(nil)); got != h {
		return fmt.Errorf("storing whole file %s: contents hash to %s%s: %w", dgst, digestPrefix, got, ErrWholeDigest)
	}
	// Sync before the rename: a whole file is never verified again once in
	// place (the kernel reads it directly), so the name must not appear
	// before the data is on disk. It costs the background writer, never a
	// reader.
	if s, ok := f.(interface{ Sync() error }); ok {
		if err = s.Sync(); err != nil {
			return fmt.Errorf("storing whole file %s: %w", dgst, &writeError{op: "syncing temp file", err: err})
		}
	}
	closed = true
	if err = f.Close(); err != nil {
		return fmt.Errorf("storing whole file %s: %w", dgst, &writeError{op: "closing temp file", err: err})
	}
	// Read-only: nothing ever writes a whole file in place.
	if err = os.Chmod(tmp, 0o400); err != nil {
		return fmt.Errorf("storing whole file %s: %w", dgst, &writeError{op: "making temp file read-only", err: err})
	}

	d.mu.Lock()
	defer d.mu.Unlock()
	if err = os.Rename(tmp, p); err != nil {
		return fmt.Errorf("storing whole file %s: %w", dgst, &writeError{op: "renaming temp file into place", err: err})
	}
	d.accountLocked(name, size)
	d.wholeAdds.Add(1)
	d.evictLocked()
	return nil
}

// ctxReader ends a copy when ctx is done.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c *ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}
