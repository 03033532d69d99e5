// Package layer turns one eStargz or zstd:chunked blob (format.go) into the
// layer view poolfs shows:
// a tree of entries exactly as the layer tar holds them (whiteouts in
// overlay form, landmarks hidden) and verified reads of file contents.
package layer

import (
	"context"
	"errors"
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
type EntryType uint8

const (
	TypeDir EntryType = iota
	TypeReg
	TypeSymlink
	TypeChar
	TypeBlock
	TypeFIFO
)
