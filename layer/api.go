// Package layer turns one eStargz or zstd:chunked blob (format.go) into the
// layer view poolfs shows:
// a tree of entries exactly as the layer tar holds them (whiteouts in
// overlay form, landmarks hidden) and verified reads of file contents.
package layer

import (
	"context"
	"errors"
	"time"
)

// ErrNoFormat says the blob ends in the footer of no format served lazily
// (eStargz, zstd:chunked): the caller should answer ENOENT so podman
// pulls the layer.
var ErrNoFormat = errors.New("blob is in no lazily served format")

// ErrVerify says bytes from the registry did not match their digest.
var ErrVerify = errors.New("digest verification failed")

// BlobReader is the random access to the compressed blob a Layer needs;
// remote.Blob satisfies it.
type BlobReader interface {
	Size() int64
	ReadAt(ctx context.Context, p []byte, off int64) (int, error)
}

// ProgressReader is a BlobReader that can say, while one read is still
// arriving, how many bytes at the start of p are filled; progress runs on
// the caller's goroutine with non-decreasing counts, and bytes below a
// reported count are final. A Layer verifies and hands out each chunk as
// soon as its bytes are in, so a reader waiting on the first file of a
// large prefetch range does not wait for the whole range. remote.Blob
// satisfies it.
type ProgressReader interface {
	ReadAtProgress(ctx context.Context, p []byte, off int64, progress func(n int)) (int, error)
}

// TailNotifier is a BlobReader that wants to know when Open has all the
// bytes of the TOC and starts decoding it: from then on Open reads nothing
// more, so a stream of the blob's start (remote.Head) has the link to
// itself instead of slowing the TOC down. remote.Head satisfies it.
type TailNotifier interface {
	TailRead()
}

// Cache keeps verified, uncompressed chunk contents keyed by their digest
// string ("sha256:..."); cache.Cache satisfies it.
type Cache interface {
	Get(key string) ([]byte, bool)
	Add(key string, b []byte)
}

// EntryType is the kind of a view entry (hard links are not a type: the
// same *Entry appears under each of its names).
type EntryType int

const (
	TypeDir EntryType = iota
	TypeReg
	TypeSymlink
	TypeChar
	TypeBlock
	TypeFIFO
)

// Entry is one inode of the layer view.
type Entry struct {
	Name     string // base name under its first parent ("" for the root)
	Path     string // cleaned path in the layer of the first name ("" for root), no leading "/"
	Type     EntryType
	Mode     uint32 // permission bits plus setuid/setgid/sticky (07777), no type bits
	UID, GID uint32
	Size     int64 // regular files: content size; symlinks: len(LinkName); else 0
	ModTime  time.Time
	LinkName string // symlink target
	DevMajor uint32
	DevMinor uint32
	Xattrs   map[string][]byte // includes trusted.overlay.opaque / user.overlay.opaque = "y" for opaque dirs
	NLink    uint32            // regular files etc.: number of names; dirs: 2 + subdirectories
	Children map[string]*Entry // dirs only; hard links share the *Entry
	Names    []string          // dirs only: child names sorted, for readdir

	// file says where a regular file's content lives in the blob; nil for
	// other types and for empty files. Unexported so the view stays a plain
	// value for callers while ReadAt can go straight to the chunks.
	file *fileChunks
}
