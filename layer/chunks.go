package layer

import (
	"fmt"
	"sort"

	"github.com/containerd/stargz-snapshotter/estargz"
	digest "github.com/opencontainers/go-digest"
)

// maxDeflateRatio bounds how much a deflate stream can expand (1032:1 is
// the format's limit). A TOC claiming more is lying, and believing it would
// let a blob make us allocate arbitrary memory on the first read.
const maxDeflateRatio = 1032

// chunk is one verifiable piece of a regular file's content.
type chunk struct {
	fileOff int64 // offset of the chunk in the file
	size    int64 // uncompressed length
	// [blobOff, blobEnd) is the compressed range to fetch: from the gzip
	// member holding the chunk to the next chunk's member (or the TOC).
	blobOff, blobEnd int64
	inner            int64         // uncompressed bytes to skip in that member first (innerOffset)
	digest           digest.Digest // what the uncompressed bytes must hash to; "" if the TOC gives none
}

// chunkKey identifies chunk content for sharing fetches and results. The
// size is part of it so that a TOC claiming one digest for chunks of
// different sizes cannot make a read copy past the end of a buffer.
type chunkKey struct {
	digest digest.Digest
	size   int64
}

func (c *chunk) key() chunkKey { return chunkKey{c.digest, c.size} }

// fileChunks is a regular file's chunk list, ordered by fileOff (which is
// also blob order).
type fileChunks struct {
	chunks []*chunk
	// digest is the TOC's digest of the whole content ("" if none).
	digest digest.Digest
}

// find returns the index of the chunk holding byte off of the file.
func (f *fileChunks) find(off int64) int {
	return sort.Search(len(f.chunks), func(i int) bool {
		c := f.chunks[i]
		return c.fileOff+c.size > off
	})
}

// span is the compressed range covering all of a file's chunks.
func (f *fileChunks) span() (start, end int64) {
	if f == nil || len(f.chunks) == 0 {
		return 0, 0
	}
	start, end = f.chunks[0].blobOff, f.chunks[0].blobEnd
	for _, c := range f.chunks[1:] {
		start = min(start, c.blobOff)
		end = max(end, c.blobEnd)
	}
	return start, end
}

// indexChunks turns the "reg"/"chunk" TOC entries into per-file chunk lists,
// keyed by the TOC index of each "reg" entry, and checks that they describe
// a blob that can exist: data in increasing blob order, inside the payload,
// covering each file exactly once.
func indexChunks(entries []*estargz.TOCEntry, tocOffset int64) (map[int]*fileChunks, error) {
	type pending struct {
		regIdx int
		reg    *estargz.TOCEntry
		parts  []*estargz.TOCEntry
	}
	var files []*pending
	var cur *pending
	var offsets []int64 // distinct gzip member offsets holding data, in blob order
	var last *estargz.TOCEntry

	for i, te := range entries {
		switch te.Type {
		case "reg":
			cur = nil
			if te.Size < 0 {
				return nil, fmt.Errorf("entry %d (%q): negative size %d", i, te.Name, te.Size)
			}
			if te.Size == 0 {
				continue // empty files have no data and their offset means nothing
			}
			cur = &pending{regIdx: i, reg: te, parts: []*estargz.TOCEntry{te}}
			files = append(files, cur)
		case "chunk":
			if cur == nil {
				return nil, fmt.Errorf("entry %d: chunk does not follow a non-empty regular file", i)
			}
			if te.Name != "" && cleanTOCName(te.Name) != cleanTOCName(cur.reg.Name) {
				return nil, fmt.Errorf("entry %d: chunk of %q follows %q", i, te.Name, cur.reg.Name)
			}
			cur.parts = append(cur.parts, te)
		default:
			cur = nil
			continue
		}
		// te carries data: it must come after the previous data in the blob.
		if te.Offset < 0 || te.Offset >= tocOffset {
			return nil, fmt.Errorf("entry %d (%q): data offset %d outside the payload [0, %d)", i, te.Name, te.Offset, tocOffset)
		}
		if te.InnerOffset < 0 {
			return nil, fmt.Errorf("entry %d (%q): negative inner offset %d", i, te.Name, te.InnerOffset)
		}
		if last != nil {
			if te.Offset < last.Offset || (te.Offset == last.Offset && te.InnerOffset <= last.InnerOffset) {
				return nil, fmt.Errorf("entry %d (%q): data at %d+%d does not follow the previous data at %d+%d",
					i, te.Name, te.Offset, te.InnerOffset, last.Offset, last.InnerOffset)
			}
		}
		if last == nil || te.Offset != last.Offset {
			offsets = append(offsets, te.Offset)
		}
		last = te
	}

	// A chunk's compressed bytes run to the next member that holds data (or
	// the TOC); any tar headers in between are fetched and ignored.
	nextOffset := func(off int64) int64 {
		i := sort.Search(len(offsets), func(i int) bool { return offsets[i] > off })
		if i == len(offsets) {
			return tocOffset
		}
		return offsets[i]
	}

	out := make(map[int]*fileChunks, len(files))
	for _, f := range files {
		fc, err := buildFileChunks(f.reg, f.parts, nextOffset, maxDeflateRatio)
		if err != nil {
			return nil, fmt.Errorf("entry %d (%q): %w", f.regIdx, f.reg.Name, err)
		}
		out[f.regIdx] = fc
	}
	return out, nil
}

// buildFileChunks checks that parts cover [0, reg.Size) contiguously and
// resolves each part's digest and compressed range (ending at
// nextOffset(its offset)); maxRatio is how far the format's compression
// can expand, to reject chunks that claim more.
func buildFileChunks(reg *estargz.TOCEntry, parts []*estargz.TOCEntry, nextOffset func(int64) int64, maxRatio int64) (*fileChunks, error) {
	var fileDigest digest.Digest
	if reg.Digest != "" {
		d, err := parseDigest(reg.Digest)
		if err != nil {
			return nil, fmt.Errorf("file digest %q: %w", reg.Digest, err)
		}
		fileDigest = d
	}
	fc := &fileChunks{chunks: make([]*chunk, 0, len(parts)), digest: fileDigest}
	var covered int64
	for _, p := range parts {
		if p.ChunkOffset != covered {
			return nil, fmt.Errorf("chunk at file offset %d, want %d", p.ChunkOffset, covered)
		}
		size := p.ChunkSize
		switch {
		case size < 0:
			return nil, fmt.Errorf("chunk at %d: negative size %d", p.ChunkOffset, size)
		case size == 0:
			size = reg.Size - p.ChunkOffset // zero means "to the end of the file"
		}
		if size <= 0 || size > reg.Size-covered {
			return nil, fmt.Errorf("chunk at %d of size %d overruns the %d byte file", p.ChunkOffset, p.ChunkSize, reg.Size)
		}
		c := &chunk{
			fileOff: p.ChunkOffset,
			size:    size,
			blobOff: p.Offset,
			blobEnd: nextOffset(p.Offset),
			inner:   p.InnerOffset,
		}
		if c.inner+c.size > (c.blobEnd-c.blobOff)*maxRatio+1024 {
			return nil, fmt.Errorf("chunk at %d claims %d bytes from %d compressed bytes", p.ChunkOffset, c.inner+c.size, c.blobEnd-c.blobOff)
		}
		if p.ChunkDigest != "" {
			d, err := parseDigest(p.ChunkDigest)
			if err != nil {
				return nil, fmt.Errorf("chunk at %d: digest %q: %w", p.ChunkOffset, p.ChunkDigest, err)
			}
			c.digest = d
		}
		fc.chunks = append(fc.chunks, c)
		covered += size
	}
	if covered != reg.Size {
		return nil, fmt.Errorf("chunks cover %d of %d bytes", covered, reg.Size)
	}
	// Old TOCs carry only the file digest: it verifies a one-chunk file.
	if len(fc.chunks) == 1 && fc.chunks[0].digest == "" {
		fc.chunks[0].digest = fileDigest
	}
	return fc, nil
}
