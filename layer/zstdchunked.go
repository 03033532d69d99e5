package layer

import (
	"bytes"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/containerd/stargz-snapshotter/estargz"
	jsonv2 "github.com/go-json-experiment/json"
	jsonv1 "github.com/go-json-experiment/json/v1"
	"github.com/klauspost/compress/zstd"
	digest "github.com/opencontainers/go-digest"
)

// zstd:chunked is containers/storage's lazily pullable layer format: a zstd
// stream in which every file's content (every chunk of it, for large
// files) starts its own frame, followed by skippable frames holding the
// manifest (the TOC, zstd-compressed JSON), since containers/storage 1.48
// the tar-split, and a footer that locates the manifest. The manifest
// checksum, the sha256 of the compressed manifest bytes, is what the image
// manifest's annotation publishes and what containers/storage >= 1.54
// looks the layer up by in an additional layer store.
//
// Two generations of the format exist and both are read here:
//   - containers/storage < 1.48 (podman 4.x): annotations
//     io.containers.zstd-chunked.*, a 40-byte footer ending in "GnUlInUx";
//   - later versions: annotations io.github.containers.zstd-chunked.*, a
//     64-byte footer (adding the tar-split position) ending in "GNUlInUx".
const (
	ZstdChunkedChecksumAnnotation       = "io.github.containers.zstd-chunked.manifest-checksum"
	ZstdChunkedPositionAnnotation       = "io.github.containers.zstd-chunked.manifest-position"
	LegacyZstdChunkedChecksumAnnotation = "io.containers.zstd-chunked.manifest-checksum"
	LegacyZstdChunkedPositionAnnotation = "io.containers.zstd-chunked.manifest-position"
)

const (
	// zstdSkippableMagic opens the skippable frame (RFC 8878 3.1.2) that
	// the manifest, tar-split and footer each sit in, followed by the
	// frame's little-endian uint32 length.
	zstdSkippableMagic  = 0x184D2A50
	zstdSkippableHeader = 8

	zstdFooterSize       = 64 // data of the current footer
	zstdLegacyFooterSize = 40 // data of containers/storage < 1.48's footer
	zstdManifestTypeCRFS = 1

	// maxZstdRatio bounds how much a zstd frame can expand: a block of at
	// most 128 KiB takes at least 4 bytes (an RLE block). Chunks of zeros
	// come close to it, so deflate's bound would reject real layers.
	maxZstdRatio = 128 << 10 / 4
)

var (
	// zstdFrameMagic starts every zstd frame, so every zstd:chunked blob.
	zstdFrameMagic = []byte{0x28, 0xb5, 0x2f, 0xfd}

	zstdFooterMagic       = []byte("GNUlInUx")
	zstdLegacyFooterMagic = []byte("GnUlInUx")
)

// zstdDecoder decompresses manifests and chunks. DecodeAll is safe for
// concurrent use, and with the cap limit never writes past cap(dst), so a
// frame cannot expand beyond what the TOC lets its caller allocate.
var zstdDecoder = func() *zstd.Decoder {
	d, err := zstd.NewReader(nil, zstd.WithDecodeAllCapLimit(true), zstd.WithDecoderMaxMemory(maxTOCJSON))
	if err != nil {
		panic(fmt.Sprintf("zstd decoder with constant options: %v", err))
	}
	return d
}()

// ManifestPosition says where a zstd:chunked blob holds its compressed
// manifest, as the manifest-position annotation or the footer gives it.
type ManifestPosition struct {
	Offset             int64 // of the compressed manifest (after its skippable frame header)
	Length             int64 // compressed
	LengthUncompressed int64
}

// ZstdChunkedAnnotations returns the manifest checksum and position a
// layer's annotations publish, under either generation's keys; ok is false
// when the layer carries no zstd:chunked checksum. A position that does not
// parse is left out (the footer gives it), a checksum that does not parse
// is an error.
func ZstdChunkedAnnotations(ann map[string]string) (checksum digest.Digest, pos *ManifestPosition, ok bool, err error) {
	for _, keys := range [][2]string{
		{ZstdChunkedChecksumAnnotation, ZstdChunkedPositionAnnotation},
		{LegacyZstdChunkedChecksumAnnotation, LegacyZstdChunkedPositionAnnotation},
	} {
		s, found := ann[keys[0]]
		if !found {
			continue
		}
		d, err := digest.Parse(s)
		if err != nil {
			return "", nil, true, fmt.Errorf("annotation %s: %w", keys[0], err)
		}
		if p, err := ParseManifestPosition(ann[keys[1]]); err == nil {
			pos = &p
		}
		return d, pos, true, nil
	}
	return "", nil, false, nil
}

// ParseManifestPosition parses the manifest-position annotation,
// "offset:length:lengthUncompressed:type" in decimal, type 1 (CRFS).
func ParseManifestPosition(s string) (ManifestPosition, error) {
	f := strings.Split(s, ":")
	if len(f) != 4 {
		return ManifestPosition{}, fmt.Errorf("manifest position %q: want offset:length:lengthUncompressed:type", s)
	}
	var n [4]int64
	for i, v := range f {
		x, err := strconv.ParseInt(v, 10, 64)
		if err != nil || x < 0 {
			return ManifestPosition{}, fmt.Errorf("manifest position %q: field %d is not a non-negative integer", s, i+1)
		}
		n[i] = x
	}
	if n[3] != zstdManifestTypeCRFS {
		return ManifestPosition{}, fmt.Errorf("manifest position %q: manifest type %d, want %d", s, n[3], zstdManifestTypeCRFS)
	}
	return ManifestPosition{Offset: n[0], Length: n[1], LengthUncompressed: n[2]}, nil
}

// parseZstdFooter reads the manifest position out of the footer ending
// tail.
func parseZstdFooter(tail []byte) (ManifestPosition, error) {
	size := zstdFooterSize
	if bytes.HasSuffix(tail, zstdLegacyFooterMagic) {
		size = zstdLegacyFooterSize
	} else if !bytes.HasSuffix(tail, zstdFooterMagic) {
		return ManifestPosition{}, errors.New("no zstd:chunked footer magic")
	}
	if len(tail) < zstdSkippableHeader+size {
		return ManifestPosition{}, fmt.Errorf("%d bytes are too few for a %d byte zstd:chunked footer", len(tail), size)
	}
	frame := tail[len(tail)-zstdSkippableHeader-size:]
	if binary.LittleEndian.Uint32(frame) != zstdSkippableMagic || binary.LittleEndian.Uint32(frame[4:]) != uint32(size) {
		return ManifestPosition{}, errors.New("zstd:chunked footer is not a skippable frame of its size")
	}
	data := frame[zstdSkippableHeader:]
	var v [4]uint64
	for i := range v {
		v[i] = binary.LittleEndian.Uint64(data[8*i:])
		if v[i] > 1<<62 {
			return ManifestPosition{}, fmt.Errorf("zstd:chunked footer field %d is %d, out of range", i+1, v[i])
		}
	}
	if v[3] != zstdManifestTypeCRFS {
		return ManifestPosition{}, fmt.Errorf("zstd:chunked footer names manifest type %d, want %d", v[3], zstdManifestTypeCRFS)
	}
	return ManifestPosition{Offset: int64(v[0]), Length: int64(v[1]), LengthUncompressed: int64(v[2])}, nil
}

// tocRange is where p puts the compressed manifest in a blob of size
// bytes: after its skippable frame's header, which must fit before it.
func (p ManifestPosition) tocRange(size int64) (tocRange, error) {
	if p.Offset < zstdSkippableHeader || p.Length > size-p.Offset {
		return tocRange{}, fmt.Errorf("zstd:chunked manifest at [%d, +%d) is outside the %d byte blob", p.Offset, p.Length, size)
	}
	return tocRange{start: p.Offset, end: p.Offset + p.Length, uncompressed: p.LengthUncompressed}, nil
}

// locateTOC finds the manifest from the footer of either generation.
func (zstdChunked) locateTOC(tail []byte, size int64) (tocRange, bool, error) {
	if !bytes.HasSuffix(tail, zstdFooterMagic) && !bytes.HasSuffix(tail, zstdLegacyFooterMagic) {
		return tocRange{}, false, errors.New("zstd:chunked: no footer magic")
	}
	p, err := parseZstdFooter(tail)
	if err != nil {
		return tocRange{}, true, err
	}
	r, err := p.tocRange(size)
	return r, true, err
}

// decodeTOC checks the compressed manifest against want (the manifest
// checksum covers the compressed bytes) and decodes it.
func (zstdChunked) decodeTOC(compressed []byte, r tocRange, want digest.Digest, o options) (*rawTOC, error) {
	got := digest.FromBytes(compressed)
	if want != "" && got != want {
		return nil, fmt.Errorf("zstd:chunked manifest checksum is %s, want %s: %w", got, want, ErrVerify)
	}
	return decodeZstdTOC(compressed, got, r.start-zstdSkippableHeader, r.uncompressed, o)
}

// decodeStored decodes a stored compressed manifest; tocOffset is where
// its skippable frame starts.
func (zstdChunked) decodeStored(compressed []byte, d digest.Digest, tocOffset int64, o options) (*rawTOC, error) {
	if got := digest.FromBytes(compressed); got != d {
		return nil, fmt.Errorf("stored zstd:chunked manifest hashes to %s, want %s: %w", got, d, ErrVerify)
	}
	return decodeZstdTOC(compressed, d, tocOffset, -1, o)
}

// zstdTOC is the zstd:chunked manifest (containers/storage's minimal.TOC).
type zstdTOC struct {
	Version int         `json:"version"`
	Entries []zstdEntry `json:"entries"`
}

// zstdEntry is one manifest entry (minimal.FileMetadata). It is eStargz's
// TOCEntry but for RFC 3339 nanosecond times, base64 xattr values and the
// end offset of a file's data, which eStargz leaves to the next entry.
type zstdEntry struct {
	Type        string            `json:"type"`
	Name        string            `json:"name"`
	Linkname    string            `json:"linkName,omitempty"`
	Mode        int64             `json:"mode,omitempty"`
	Size        int64             `json:"size,omitempty"`
	UID         int               `json:"uid,omitempty"`
	GID         int               `json:"gid,omitempty"`
	ModTime     *time.Time        `json:"modtime,omitempty"`
	Devmajor    int64             `json:"devMajor,omitempty"`
	Devminor    int64             `json:"devMinor,omitempty"`
	Xattrs      map[string]string `json:"xattrs,omitempty"`
	Digest      string            `json:"digest,omitempty"`
	Offset      int64             `json:"offset,omitempty"`
	EndOffset   int64             `json:"endOffset,omitempty"`
	ChunkSize   int64             `json:"chunkSize,omitempty"`
	ChunkOffset int64             `json:"chunkOffset,omitempty"`
	ChunkDigest string            `json:"chunkDigest,omitempty"`
	ChunkType   string            `json:"chunkType,omitempty"`
}

// decodeZstdTOC decompresses and decodes a manifest already checked
// against its checksum d, and builds the tree from it; frameStart is where
// the manifest's skippable frame starts, the end of the layer's data.
// lengthUncompressed is what the position says the JSON takes (-1: not
// known, as for a stored manifest; then up to maxTOCJSON). It is where a
// manifest of any bytes goes (FuzzZstdChunkedTOC).
//
// Unlike eStargz's, the JSON is decoded whole before the tree is built:
// maxTOCJSON bounds it, and it counts against o's memory limit while held
// (the entries limit applies as the entries go to the builder).
func decodeZstdTOC(compressed []byte, d digest.Digest, frameStart, lengthUncompressed int64, o options) (*rawTOC, error) {
	if lengthUncompressed > maxTOCJSON || lengthUncompressed > int64(len(compressed))*maxZstdRatio+1024 {
		return nil, fmt.Errorf("zstd:chunked manifest claims %d bytes from %d compressed bytes", lengthUncompressed, len(compressed))
	}
	var js []byte
	var err error
	if lengthUncompressed < 0 {
		js, err = decodeZstdStream(compressed, maxTOCJSON)
	} else {
		js, err = zstdDecoder.DecodeAll(compressed, make([]byte, 0, lengthUncompressed))
	}
	if err != nil {
		return nil, fmt.Errorf("decompressing zstd:chunked manifest %s: %w", d, err)
	}
	if lengthUncompressed >= 0 && int64(len(js)) != lengthUncompressed {
		return nil, fmt.Errorf("zstd:chunked manifest %s decompresses to %d bytes, its position says %d", d, len(js), lengthUncompressed)
	}
	// The JSON and the entries decoded from it are held whole while the
	// tree is built: they count against the memory limit meanwhile (the
	// entries take about twice the JSON).
	if hold := 3 * int64(len(js)); o.limits.Reserve != nil {
		if err := o.limits.Reserve(hold); err != nil {
			return nil, fmt.Errorf("zstd:chunked manifest %s of %d bytes: %w", d, len(js), err)
		}
		defer func() { _ = o.limits.Reserve(-hold) }()
	}
	var toc zstdTOC
	if err := jsonv2.Unmarshal(js, &toc, jsonv1.DefaultOptionsV1()); err != nil {
		return nil, fmt.Errorf("decoding zstd:chunked manifest %s: %w", d, err)
	}
	if toc.Version != 1 {
		return nil, fmt.Errorf("zstd:chunked manifest %s has version %d, want 1", d, toc.Version)
	}
	js = nil
	b := newBuilder(frameStart, maxZstdRatio, o.limits, o.log)
	b.chunks.exactEnds = true
	defer b.release(0)
	for i := range toc.Entries {
		te, end, err := zstdToTOCEntry(i, &toc.Entries[i])
		if err == nil {
			err = b.addEnding(te, end)
		}
		if err != nil {
			if errors.Is(err, ErrLimit) {
				return nil, err
			}
			return nil, fmt.Errorf("zstd:chunked manifest %s: %w", d, err)
		}
		toc.Entries[i] = zstdEntry{} // the builder keeps what it needs
	}
	t, err := b.build()
	if err != nil {
		return nil, fmt.Errorf("zstd:chunked manifest %s: %w", d, err)
	}
	return &rawTOC{tree: t, format: zstdChunked{}, digest: d, tocOffset: frameStart}, nil
}

// decodeZstdStream decompresses b of unknown decompressed size, growing
// the result as it comes rather than reserving the most it could be, and
// failing past limit bytes.
func decodeZstdStream(b []byte, limit int64) ([]byte, error) {
	zr, err := zstd.NewReader(bytes.NewReader(b), zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxMemory(uint64(limit)))
	if err != nil {
		return nil, err
	}
	defer zr.Close()
	out, err := io.ReadAll(io.LimitReader(zr, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(out)) > limit {
		return nil, fmt.Errorf("decompresses to more than %d bytes", limit)
	}
	return out, nil
}

// zstdToTOCEntry gives manifest entry i in the form the tree builder
// reads, with the end offset of its data beside it.
func zstdToTOCEntry(i int, z *zstdEntry) (*estargz.TOCEntry, int64, error) {
	te := &estargz.TOCEntry{
		Name:        z.Name,
		Type:        z.Type,
		Size:        z.Size,
		LinkName:    z.Linkname,
		Mode:        z.Mode,
		UID:         z.UID,
		GID:         z.GID,
		Offset:      z.Offset,
		Digest:      z.Digest,
		ChunkOffset: z.ChunkOffset,
		ChunkSize:   z.ChunkSize,
		ChunkDigest: z.ChunkDigest,
	}
	if z.Devmajor < 0 || z.Devminor < 0 || z.Devmajor > 1<<31-1 || z.Devminor > 1<<31-1 {
		return nil, 0, fmt.Errorf("entry %d (%q): device %d:%d out of range", i, z.Name, z.Devmajor, z.Devminor)
	}
	te.DevMajor, te.DevMinor = int(z.Devmajor), int(z.Devminor)
	if z.ModTime != nil && !z.ModTime.IsZero() {
		// Seconds, as eStargz keeps them and tar's ustar field holds.
		te.ModTime3339 = z.ModTime.UTC().Truncate(time.Second).Format(time.RFC3339)
	}
	switch z.ChunkType {
	case "", "zeros":
		// A run of zeros is its own chunk, still stored as a frame
		// (of a few bytes) and verified like any other.
	default:
		return nil, 0, fmt.Errorf("entry %d (%q): unknown chunk type %q", i, z.Name, z.ChunkType)
	}
	if len(z.Xattrs) > 0 {
		te.Xattrs = make(map[string][]byte, len(z.Xattrs))
		for k, v := range z.Xattrs {
			b, err := base64.StdEncoding.DecodeString(v)
			if err != nil {
				return nil, 0, fmt.Errorf("entry %d (%q): xattr %q: %w", i, z.Name, k, err)
			}
			te.Xattrs[k] = b
		}
	}
	return te, z.EndOffset, nil
}

// zstdChunked is the format (see the top of this file).
type zstdChunked struct{}

func (zstdChunked) String() string { return FormatZstdChunked }

// decompress reads the blob's frames as one stream; the decoder skips the
// skippable frames (manifest, tar-split, footer), so what comes out is the
// tar the diff_id covers.
func (zstdChunked) decompress(blob io.Reader) (io.ReadCloser, error) {
	zr, err := zstd.NewReader(blob, zstd.WithDecoderConcurrency(1))
	if err != nil {
		return nil, err
	}
	return zr.IOReadCloser(), nil
}

// decodeChunk decompresses c's frames, exactly its compressed range, and
// checks the result against c's digest.
func (zstdChunked) decodeChunk(c *chunk, compressed []byte) ([]byte, error) {
	data, err := zstdDecoder.DecodeAll(compressed, make([]byte, 0, c.size))
	if err != nil {
		return nil, fmt.Errorf("chunk %s at blob offset %d: decompressing: %v: %w", c.digest, c.blobOff, err, ErrVerify)
	}
	return checkChunk(c, data)
}
