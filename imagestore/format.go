package imagestore

import (
	"crypto/sha256"
	"encoding/base32"
	"encoding/base64"
	"strings"
	"time"

	digest "github.com/opencontainers/go-digest"

	"github.com/poolfs/poolfs/layer"
)

// The layout below is what containers/storage 1.43 (podman 4.3.1) reads
// from an additional image store <dir> with the overlay driver, and what
// later versions still read:
//
//	<dir>/overlay-images/images.json            image records (imageRecord)
//	<dir>/overlay-images/images.lock            fcntl lock + last-writer ID
//	<dir>/overlay-images/<image ID>/<key>       big-data items (bigDataFile)
//	<dir>/overlay-layers/layers.json            layer records (layerRecord)
//	<dir>/overlay-layers/layers.lock
//	<dir>/overlay/<layer ID>/diff               the layer's tree (here: a link into the pool)
//	<dir>/overlay/<layer ID>/link               the layer's short name in l/
//	<dir>/overlay/<layer ID>/lower              l/<parent's short name>:... (not for a base layer)
//	<dir>/overlay/l/<short name>                -> ../<layer ID>/diff
//
// store.go opens "<dir>/<driver>-images" and "<dir>/<driver>-layers" as
// read-only stores; the overlay driver's dir2() finds a layer in
// "<dir>/overlay/<ID>" when the graph root has none, and a container whose
// image lives here gets "l/<short name>" entries in its own lower file,
// which get() resolves under "<dir>/overlay" too.
const (
	driver     = "overlay"
	imagesDir  = driver + "-images"
	layersDir  = driver + "-layers"
	imagesJSON = "images.json"
	layersJSON = "layers.json"
	imagesLock = "images.lock"
	layersLock = "layers.lock"
	linkDir    = "l"
)

// imageRecord is containers/storage's Image as it marshals it.
type imageRecord struct {
	ID             string                   `json:"id"`
	Digest         digest.Digest            `json:"digest,omitempty"`
	Names          []string                 `json:"names,omitempty"`
	NamesHistory   []string                 `json:"names-history,omitempty"`
	TopLayer       string                   `json:"layer,omitempty"`
	Metadata       string                   `json:"metadata,omitempty"`
	BigDataNames   []string                 `json:"big-data-names,omitempty"`
	BigDataSizes   map[string]int64         `json:"big-data-sizes,omitempty"`
	BigDataDigests map[string]digest.Digest `json:"big-data-digests,omitempty"`
	Created        time.Time                `json:"created,omitempty"`
	Flags          map[string]any           `json:"flags,omitempty"`
}

// layerRecord is containers/storage's Layer as it marshals it.
type layerRecord struct {
	ID                 string         `json:"id"`
	Parent             string         `json:"parent,omitempty"`
	Created            time.Time      `json:"created,omitempty"`
	CompressedDigest   digest.Digest  `json:"compressed-diff-digest,omitempty"`
	CompressedSize     int64          `json:"compressed-size,omitempty"`
	UncompressedDigest digest.Digest  `json:"diff-digest,omitempty"`
	UncompressedSize   int64          `json:"diff-size,omitempty"`
	CompressionType    int            `json:"compression,omitempty"`
	Flags              map[string]any `json:"flags,omitempty"`
}

// Flags poolfs keeps in the records (containers/storage keeps and ignores
// flags it does not know).
const (
	// flagRef on a layer: the digested image reference the pool opens it
	// by; its diff link names the same.
	flagRef = "poolfs.ref"
	// flagDigested on an image: its repository at its manifest digest.
	flagDigested = "poolfs.digested"
)

// compressionGzip and compressionZstd are containers/storage's
// archive.Gzip and archive.Zstd.
const (
	compressionGzip = 2
	compressionZstd = 4
)

// compressionOf is the compression a layer of format (layer.Layer.Format)
// is recorded with.
func compressionOf(format string) int {
	if format == layer.FormatZstdChunked {
		return compressionZstd
	}
	return compressionGzip
}

// Big-data keys containers/image (5.23) writes on commit and reads back.
const manifestKey = "manifest"

func manifestKeyFor(d digest.Digest) string { return manifestKey + "-" + d.String() }

// bigDataFile is containers/storage's makeBigDataBaseName: a key of
// anything but [.0-9a-z] is stored base64-encoded after "=".
func bigDataFile(key string) string {
	for _, c := range key {
		if c != '.' && (c < '0' || c > '9') && (c < 'a' || c > 'z') {
			return "=" + base64.StdEncoding.EncodeToString([]byte(key))
		}
	}
	return key
}

// layerID is containers/image's layer ID: the first layer's diff ID hex,
// then sha256(parent ID + "+" + diff ID hex). The same image pulled by
// podman gets the same IDs, so podman finds its layers here rather than
// pulling them.
func layerID(parent string, diffID digest.Digest) string {
	if parent == "" {
		return diffID.Encoded()
	}
	return digest.Canonical.FromString(parent + "+" + diffID.Encoded()).Encoded()
}

// shortName is a layer's name in l/: 26 characters as the overlay driver
// makes them (it keeps a container's lower list under a page), derived from
// the ID rather than random so that rewriting a layer keeps its name.
func shortName(id string) string {
	sum := sha256.Sum256([]byte("poolfs l/ " + id))
	return base32.StdEncoding.EncodeToString(sum[:])[:26]
}

// diffTarget is where a layer's diff links: the pool's grammar-2 path of
// the layer (relative, from <dir>/overlay/<ID>), which opens the layer on
// lookup, from the daemon's metadata store after a restart. The reference
// is URL-safe base64: standard base64 may contain '/'.
func diffTarget(poolDir, ref string, blob digest.Digest) string {
	return strings.Join([]string{"..", "..", "..", poolDir, base64.URLEncoding.EncodeToString([]byte(ref)), blob.String(), "diff"}, "/")
}
