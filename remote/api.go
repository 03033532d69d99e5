// Package remote is poolfs's only door to registries: it resolves an image
// reference to the descriptor of one of its layers and reads byte ranges of
// layer blobs. Everything else in poolfs sees blobs as Blob values.
//
// Which credentials a registry gets (remote/keychain) and where a
// reference is fetched from (registries.conf, remote/regconf) are decided
// in packages of their own, handed in through Options; remote does the
// handshake and the requests.
package remote

import (
	"context"
	"errors"

	digest "github.com/opencontainers/go-digest"
)

// ErrLayerNotFound says the image exists but has no layer with the digest
// asked for (neither as blob digest nor as TOC digest).
var ErrLayerNotFound = errors.New("layer not found in image")

// LayerDesc describes one layer of one image as the registry published it.
type LayerDesc struct {
	Ref       string        // the image reference the layer was resolved through, as given
	Digest    digest.Digest // compressed blob digest (manifest layer digest)
	Size      int64         // compressed blob size from the manifest
	MediaType string
	DiffID    digest.Digest // uncompressed digest from the config's rootfs.diff_ids; "" if unknown
	// TOCDigest is left "" by remote, which knows nothing of layer
	// formats: the pool derives it from Annotations (the eStargz TOC
	// digest or zstd:chunked manifest checksum they publish) and keeps it
	// here.
	TOCDigest   digest.Digest
	Annotations map[string]string // as the manifest gives them
	// Manifest is the digest of the image manifest that lists the layer
	// (for an index, the platform's manifest it was resolved to): the
	// subject that artifacts about the image, such as startup-read
	// profiles, are attached to.
	Manifest digest.Digest
}

// Blob is random access to a registry blob. Implementations are safe for
// concurrent use.
type Blob interface {
	Digest() digest.Digest
	Size() int64
	// ReadAt fills p with the bytes at off (one HTTP range request, with
	// bounded retries). It returns an error rather than a short read unless
	// the range runs past the end of the blob (then io.EOF, like io.ReaderAt).
	ReadAt(ctx context.Context, p []byte, off int64) (int, error)
	// ReadAtProgress is ReadAt that also reports, while the response is
	// still arriving, how many bytes at the start of p are filled: progress
	// is called on the caller's goroutine with non-decreasing counts, so
	// the caller can use p[:n] at once (a layer verifies and hands out the
	// chunks in it). Bytes of p below a reported count are never written
	// again. progress may be nil.
	ReadAtProgress(ctx context.Context, p []byte, off int64, progress func(n int)) (int, error)
}
