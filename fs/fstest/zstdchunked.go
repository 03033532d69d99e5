package fstest

import (
	"archive/tar"
	"bytes"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"
	digest "github.com/opencontainers/go-digest"
)

// ZstdChunkedOptions shape the blob ZstdChunked writes.
type ZstdChunkedOptions struct {
	// ChunkSize splits file contents into chunks of this many bytes (0:
	// 4 KiB); a chunk of only zeros is marked "zeros", as
	// containers/storage marks runs of zeros.
	ChunkSize int
	// Legacy writes what containers/storage < 1.48 (podman 4.x) writes:
	// the io.containers.zstd-chunked.* annotations, the 40-byte footer
	// ending in "GnUlInUx", no tar-split frame.
	Legacy bool
}

// zstdEntry mirrors containers/storage's minimal.FileMetadata JSON.
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

var tarTypes = map[byte]string{
	tar.TypeReg: "reg", tar.TypeLink: "hardlink", tar.TypeChar: "char", tar.TypeBlock: "block",
	tar.TypeDir: "dir", tar.TypeFifo: "fifo", tar.TypeSymlink: "symlink",
}

// ZstdChunked converts a layer tar to a zstd:chunked blob laid out as
// containers/storage's compressor lays it out (checked against podman's
// own blobs by the e2e tests): the tar stream itself, uncompressed exactly,
// as zstd frames where every chunk of file content starts a frame of its
// own and the headers between sit in frames of theirs; then skippable
// frames with the zstd-compressed manifest, the tar-split (empty here) and
// the footer. It returns the blob and the layer annotations podman would
// publish (manifest checksum and position).
func ZstdChunked(tb testing.TB, tarBytes []byte, opts ZstdChunkedOptions) ([]byte, map[string]string) {
	tb.Helper()
	blob, ann, err := BuildZstdChunked(tarBytes, opts)
	if err != nil {
		tb.Fatalf("building zstd:chunked blob: %v", err)
	}
	return blob, ann
}

// BuildZstdChunked is ZstdChunked returning its error, for fixtures.
func BuildZstdChunked(tarBytes []byte, opts ZstdChunkedOptions) ([]byte, map[string]string, error) {
	chunkSize := opts.ChunkSize
	if chunkSize <= 0 {
		chunkSize = 4096
	}
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedDefault))
	if err != nil {
		return nil, nil, err
	}
	defer enc.Close()
	var out bytes.Buffer
	frame := func(b []byte) {
		if len(b) > 0 {
			out.Write(enc.EncodeAll(b, nil))
		}
	}

	cr := &countingReader{r: bytes.NewReader(tarBytes)}
	tr := tar.NewReader(cr)
	var entries []zstdEntry
	var pending int64 // start of the tar bytes not yet written out
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, nil, fmt.Errorf("reading tar: %w", err)
		}
		typ, ok := tarTypes[h.Typeflag]
		if !ok {
			return nil, nil, fmt.Errorf("%q: tar type %q has no zstd:chunked type", h.Name, h.Typeflag)
		}
		e := zstdEntry{
			Type: typ, Name: h.Name, Linkname: h.Linkname, Mode: h.Mode, Size: h.Size,
			UID: h.Uid, GID: h.Gid, Devmajor: h.Devmajor, Devminor: h.Devminor,
		}
		if !h.ModTime.IsZero() {
			t := h.ModTime
			e.ModTime = &t
		}
		for k, v := range h.PAXRecords {
			if name, ok := strings.CutPrefix(k, "SCHILY.xattr."); ok {
				if e.Xattrs == nil {
					e.Xattrs = map[string]string{}
				}
				e.Xattrs[name] = base64.StdEncoding.EncodeToString([]byte(v))
			}
		}
		if h.Typeflag != tar.TypeReg || h.Size == 0 {
			entries = append(entries, e)
			continue
		}
		// Headers (and the previous entry's padding) in a frame of their own.
		start := cr.n
		frame(tarBytes[pending:start])
		content := tarBytes[start : start+h.Size]
		e.Digest = digest.FromBytes(content).String()
		var chunks []zstdEntry
		for off := 0; off < len(content); off += chunkSize {
			c := content[off:min(off+chunkSize, len(content))]
			ch := zstdEntry{Type: "chunk", Name: h.Name, ChunkOffset: int64(off), ChunkSize: int64(len(c)),
				ChunkDigest: digest.FromBytes(c).String(), Offset: int64(out.Len())}
			if bytes.Count(c, []byte{0}) == len(c) {
				ch.ChunkType = "zeros"
			}
			frame(c)
			chunks = append(chunks, ch)
		}
		e.Offset, e.EndOffset = chunks[0].Offset, int64(out.Len())
		pending = start + h.Size
		if len(chunks) == 1 {
			entries = append(entries, e)
			continue
		}
		e.ChunkSize, e.ChunkDigest, e.ChunkType = chunks[0].ChunkSize, chunks[0].ChunkDigest, chunks[0].ChunkType
		entries = append(entries, e)
		entries = append(entries, chunks[1:]...)
	}
	frame(tarBytes[pending:])

	manifest, err := json.Marshal(struct {
		Version int         `json:"version"`
		Entries []zstdEntry `json:"entries"`
	}{1, entries})
	if err != nil {
		return nil, nil, err
	}
	compressed := enc.EncodeAll(manifest, nil)
	skippable := func(b []byte) {
		var h [8]byte
		binary.LittleEndian.PutUint32(h[:], 0x184D2A50)
		binary.LittleEndian.PutUint32(h[4:], uint32(len(b)))
		out.Write(h[:])
		out.Write(b)
	}
	manifestOffset := out.Len() + 8
	skippable(compressed)
	position := fmt.Sprintf("%d:%d:%d:1", manifestOffset, len(compressed), len(manifest))
	checksum := digest.FromBytes(compressed).String()

	if opts.Legacy {
		footer := make([]byte, 40)
		binary.LittleEndian.PutUint64(footer, uint64(manifestOffset))
		binary.LittleEndian.PutUint64(footer[8:], uint64(len(compressed)))
		binary.LittleEndian.PutUint64(footer[16:], uint64(len(manifest)))
		binary.LittleEndian.PutUint64(footer[24:], 1)
		copy(footer[32:], "GnUlInUx")
		skippable(footer)
		return out.Bytes(), map[string]string{
			"io.containers.zstd-chunked.manifest-checksum": checksum,
			"io.containers.zstd-chunked.manifest-position": position,
		}, nil
	}
	tarSplitOffset := out.Len() + 8
	skippable(nil)
	footer := make([]byte, 64)
	for i, v := range []int{manifestOffset, len(compressed), len(manifest), 1, tarSplitOffset, 0, 0} {
		binary.LittleEndian.PutUint64(footer[8*i:], uint64(v))
	}
	copy(footer[56:], "GNUlInUx")
	skippable(footer)
	return out.Bytes(), map[string]string{
		"io.github.containers.zstd-chunked.manifest-checksum": checksum,
		"io.github.containers.zstd-chunked.manifest-position": position,
		"io.github.containers.zstd-chunked.tarsplit-position": fmt.Sprintf("%d:0:0", tarSplitOffset),
	}, nil
}

// countingReader counts the bytes read through it: after tar's Next, the
// offset of the entry's content in the tar.
type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}
