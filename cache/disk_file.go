package cache

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/sirupsen/logrus"

	"github.com/poolfs/poolfs/internal/sha256hex"
)

const (
	// trailerLen is the size of the sha256 that ends every entry file.
	trailerLen = sha256.Size
	// tempPrefix names files being written; they live directly in the
	// cache dir (same filesystem as their target, so rename is atomic)
	// and are never mistaken for entries, which live in subdirs.
	tempPrefix   = ".tmp-"
	digestPrefix = "sha256:"
)

var (
	errTruncated = errors.New("entry file shorter than its checksum trailer")
	errChecksum  = errors.New("entry checksum trailer does not match its contents")
	errDigest    = errors.New("contents do not hash to the digest key")
)

// entryPath maps any key to dir/<2 hex>/<64 hex> of sha256(key). Hashing
// rather than escaping the key means nothing in a key (slashes, "..", NULs,
// length) can reach the filesystem: every path is inside dir by
// construction. The two-hex subdirs keep directories small.
func (d *Disk) entryPath(key string) (name, path string) {
	h := sha256.Sum256([]byte(key))
	name = hex.EncodeToString(h[:])
	return name, filepath.Join(d.dir, name[:2], name)
}

// pathOf maps an index name back to its file: a chunk entry's name is the
// file name, a whole file's is wholeNamePrefix and its content digest's hex.
func (d *Disk) pathOf(name string) string {
	if hex, ok := strings.CutPrefix(name, wholeNamePrefix); ok {
		return d.wholePath(hex)
	}
	return filepath.Join(d.dir, name[:2], name)
}

// isEntryName reports whether a file name could have come from entryPath.
func isEntryName(s string) bool { return sha256hex.Valid(s) }

func isDigestKey(key string) bool { return strings.HasPrefix(key, digestPrefix) }

func checksum(b []byte) [sha256.Size]byte { return sha256.Sum256(b) }

// checkKey verifies that a digest key names the bytes whose sha256 is sum.
// Other keys carry no claim about their contents and always pass.
func checkKey(key string, sum [sha256.Size]byte) error {
	if !isDigestKey(key) {
		return nil
	}
	if key[len(digestPrefix):] != hex.EncodeToString(sum[:]) {
		return fmt.Errorf("checking %s: %w (content hashes to %s%x)", key, errDigest, digestPrefix, sum)
	}
	return nil
}

// decode checks an entry file's trailer and, for digest keys, the digest,
// and returns the stored bytes.
func decode(key string, file []byte) ([]byte, error) {
	if len(file) < trailerLen {
		return nil, fmt.Errorf("decoding entry of %d bytes: %w", len(file), errTruncated)
	}
	body, trailer := file[:len(file)-trailerLen], file[len(file)-trailerLen:]
	sum := checksum(body)
	if !bytes.Equal(sum[:], trailer) {
		return nil, fmt.Errorf("decoding entry of %d bytes: %w", len(file), errChecksum)
	}
	if err := checkKey(key, sum); err != nil {
		return nil, err
	}
	// Clip so that an append by the caller cannot overwrite the trailer
	// bytes in place; harmless here, but cheaper than a surprise.
	return body[:len(body):len(body)], nil
}

// readEntry reads a whole entry file and returns it with the FileInfo of the
// file actually read, which stays valid for identifying that file even if
// another one is renamed over its path meanwhile.
func readEntry(path string) ([]byte, fs.FileInfo, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, fmt.Errorf("opening cache entry: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, nil, fmt.Errorf("stat of cache entry: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fi, fmt.Errorf("reading cache entry: not a regular file (%s)", fi.Mode())
	}
	b := make([]byte, fi.Size())
	if _, err := io.ReadFull(f, b); err != nil {
		// A file that shrank under us reads short; treat it like any
		// other unreadable entry rather than trusting a prefix.
		return nil, fi, fmt.Errorf("reading cache entry: %w", err)
	}
	return b, fi, nil
}

// writeError says which step of storing an entry failed, so failures can be
// logged once per kind (step and errno) instead of once per chunk.
type writeError struct {
	op  string
	err error
}

func (e *writeError) Error() string { return e.op + ": " + e.err.Error() }
func (e *writeError) Unwrap() error { return e.err }

// kind is the step plus the errno when there is one: "write: no space left
// on device", "create: read-only file system".
func (e *writeError) kind() string {
	var errno syscall.Errno
	if errors.As(e.err, &errno) {
		return e.op + ": " + errno.Error()
	}
	return e.op
}

// write stores b and its trailer at path via a temp file and a rename, so
// readers see either no file or a complete one. It skips fsync: a crash
// can leave a renamed file with missing data, but the trailer check turns
// that into a miss, and a cache is not worth an fsync per chunk.
func (d *Disk) write(name, path string, b []byte, sum [sha256.Size]byte) (err error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return &writeError{op: "creating entry dir", err: err}
	}
	f, err := d.createTemp(d.dir, tempPrefix+"*")
	if err != nil {
		return &writeError{op: "creating temp file", err: err}
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			// Nothing partial may stay behind; if even this fails, the
			// next NewDisk removes leftover temp files.
			_ = os.Remove(tmp)
		}
	}()
	_, err = f.Write(b)
	if err == nil {
		_, err = f.Write(sum[:])
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return &writeError{op: "writing temp file", err: err}
	}

	// Rename under mu so the file and its index entry appear together with
	// respect to eviction and to removal of corrupt files.
	d.mu.Lock()
	defer d.mu.Unlock()
	if err = os.Rename(tmp, path); err != nil {
		return &writeError{op: "renaming temp file into place", err: err}
	}
	d.accountLocked(name, int64(len(b))+trailerLen)
	d.evictLocked()
	return nil
}

// writeFailed logs a failed Add once per kind of failure.
func (d *Disk) writeFailed(key, path string, err error) {
	kind := "write"
	var we *writeError
	if errors.As(err, &we) {
		kind = we.kind()
	}
	d.warnOnce(kind, d.log.WithFields(logrus.Fields{"key": key, "path": path}).WithError(err),
		"cache: not storing entry")
}

// readErrorKind classifies a failed read of an entry file for warnOnce.
func readErrorKind(err error) string {
	var errno syscall.Errno
	if errors.As(err, &errno) {
		return "read: " + errno.Error()
	}
	return "read"
}

// warnOnce logs the first failure of each kind as a warning and repeats at
// debug level: a full, read-only or vanished disk would otherwise log once
// per chunk read.
func (d *Disk) warnOnce(kind string, l *logrus.Entry, msg string) {
	l = l.WithField("kind", kind)
	if _, seen := d.warned.LoadOrStore(kind, true); seen {
		l.Debug(msg)
		return
	}
	l.Warn(msg + "; further failures of this kind are logged at debug level")
}
