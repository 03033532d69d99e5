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

// servable reports whether ReadAt serves c at all: it has a digest to
// verify against and fits in memory. Fetching ahead of reads skips the
// others.
func (c *chunk) servable() bool { return c.digest != "" && c.size <= maxChunkSize }

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

// chunkIndexer turns the "reg"/"chunk" TOC entries, as they stream in,
// into chunk lists in one slice, and checks that they describe a blob that
// can exist: data in increasing blob order, inside the payload, covering
// each file exactly once.
type chunkIndexer struct {
	tocOffset int64
	// maxRatio is how far the format's compression can expand: chunks
	// that claim more are rejected.
	maxRatio int64
	// exactEnds is set for formats whose TOC gives each file's end offset
	// (zstd:chunked): every chunk is whole frames of its own, the file's
	// last chunk ends exactly there, and nothing between data is fetched.
	// Otherwise a chunk runs to the next data (or the TOC).
	exactEnds bool
	files     []pendingFile
	parts     []rawPart // every entry that carries data, in TOC (and blob) order
	cur       int       // index in files of the file whose chunks may follow; -1: none
	chunks    []chunk
}

// pendingFile is a non-empty regular file whose chunks are parts[first:first+n].
type pendingFile struct {
	tocIdx   int
	rec      int // its rec in the builder
	name     string
	size     int64
	digest   string
	end      int64 // the end offset of its data, if the format gives it (exactEnds)
	first, n int
}

type rawPart struct {
	chunkOffset, chunkSize, offset, inner int64
	digest                                string
}

// add takes the next TOC entry; end is the end offset of a "reg" entry's
// data when the format gives it (exactEnds), else 0.
func (c *chunkIndexer) add(i int, te *estargz.TOCEntry, end int64, b *builder) error {
	switch te.Type {
	case "reg":
		c.cur = -1
		if te.Size < 0 {
			return fmt.Errorf("entry %d (%q): negative size %d", i, te.Name, te.Size)
		}
		if te.Size == 0 {
			return nil // empty files have no data and their offset means nothing
		}
		c.files = append(c.files, pendingFile{tocIdx: i, rec: len(b.recs), name: te.Name, size: te.Size, digest: te.Digest, end: end, first: len(c.parts)})
		c.cur = len(c.files) - 1
	case "chunk":
		if c.cur < 0 {
			return fmt.Errorf("entry %d: chunk does not follow a non-empty regular file", i)
		}
		if reg := c.files[c.cur].name; te.Name != "" && cleanTOCName(te.Name) != cleanTOCName(reg) {
			return fmt.Errorf("entry %d: chunk of %q follows %q", i, te.Name, reg)
		}
	default:
		c.cur = -1
		return nil
	}
	// te carries data: it must come after the previous data in the blob.
	if te.Offset < 0 || te.Offset >= c.tocOffset {
		return fmt.Errorf("entry %d (%q): data offset %d outside the payload [0, %d)", i, te.Name, te.Offset, c.tocOffset)
	}
	if te.InnerOffset < 0 {
		return fmt.Errorf("entry %d (%q): negative inner offset %d", i, te.Name, te.InnerOffset)
	}
	if c.exactEnds && te.InnerOffset != 0 {
		return fmt.Errorf("entry %d (%q): inner offset %d in a format whose chunks are whole frames", i, te.Name, te.InnerOffset)
	}
	if n := len(c.parts); n > 0 {
		last := c.parts[n-1]
		if te.Offset < last.offset || (te.Offset == last.offset && te.InnerOffset <= last.inner) {
			return fmt.Errorf("entry %d (%q): data at %d+%d does not follow the previous data at %d+%d",
				i, te.Name, te.Offset, te.InnerOffset, last.offset, last.inner)
		}
	}
	c.parts = append(c.parts, rawPart{chunkOffset: te.ChunkOffset, chunkSize: te.ChunkSize, offset: te.Offset, inner: te.InnerOffset, digest: te.ChunkDigest})
	c.files[c.cur].n++
	return nil
}

// finish resolves every file's chunks once all entries are in: a chunk's
// compressed bytes run to the next member that holds data (or the TOC);
// any tar headers in between are fetched and ignored. With exactEnds a
// file's last chunk ends at the file's end offset instead, which must not
// run into the next data.
func (c *chunkIndexer) finish(b *builder) error {
	ends := make([]int64, len(c.parts))
	for k := len(c.parts) - 1; k >= 0; k-- {
		switch {
		case k == len(c.parts)-1:
			ends[k] = c.tocOffset
		case c.parts[k+1].offset > c.parts[k].offset:
			ends[k] = c.parts[k+1].offset
		default:
			ends[k] = ends[k+1]
		}
	}
	c.chunks = make([]chunk, 0, len(c.parts))
	for _, f := range c.files {
		if c.exactEnds {
			last := f.first + f.n - 1
			if f.end <= c.parts[last].offset || f.end > ends[last] {
				return fmt.Errorf("entry %d (%q): data ends at %d, not after its last chunk at %d and by the next data at %d",
					f.tocIdx, f.name, f.end, c.parts[last].offset, ends[last])
			}
			ends[last] = f.end
		}
		first := len(c.chunks)
		fileDigest, err := c.addFile(f, ends, b)
		if err != nil {
			return fmt.Errorf("entry %d (%q): %w", f.tocIdx, f.name, err)
		}
		r := &b.recs[f.rec]
		r.chunkA, r.chunkB = uint32(first), uint32(len(c.chunks)-first)
		r.fileDig = fileDigest
		r.ownDig = r.chunkB != 1 || c.chunks[first].digest != fileDigest
	}
	c.parts, c.files = nil, nil
	return nil
}

// addFile checks that f's parts cover [0, f.size) contiguously and
// appends its chunks, resolving each one's digest and compressed range.
func (c *chunkIndexer) addFile(f pendingFile, ends []int64, b *builder) (digest.Digest, error) {
	var fileDigest digest.Digest
	if f.digest != "" {
		d, err := b.digest(f.digest)
		if err != nil {
			return "", fmt.Errorf("file digest %q: %w", f.digest, err)
		}
		fileDigest = d
	}
	first := len(c.chunks)
	var covered int64
	for k := f.first; k < f.first+f.n; k++ {
		p := c.parts[k]
		if p.chunkOffset != covered {
			return "", fmt.Errorf("chunk at file offset %d, want %d", p.chunkOffset, covered)
		}
		size := p.chunkSize
		switch {
		case size < 0:
			return "", fmt.Errorf("chunk at %d: negative size %d", p.chunkOffset, size)
		case size == 0:
			size = f.size - p.chunkOffset // zero means "to the end of the file"
		}
		if size <= 0 || size > f.size-covered {
			return "", fmt.Errorf("chunk at %d of size %d overruns the %d byte file", p.chunkOffset, p.chunkSize, f.size)
		}
		ch := chunk{fileOff: p.chunkOffset, size: size, blobOff: p.offset, blobEnd: ends[k], inner: p.inner}
		if ch.inner+ch.size > (ch.blobEnd-ch.blobOff)*c.maxRatio+1024 {
			return "", fmt.Errorf("chunk at %d claims %d bytes from %d compressed bytes", p.chunkOffset, ch.inner+ch.size, ch.blobEnd-ch.blobOff)
		}
		if p.digest != "" {
			d, err := b.digest(p.digest)
			if err != nil {
				return "", fmt.Errorf("chunk at %d: digest %q: %w", p.chunkOffset, p.digest, err)
			}
			ch.digest = d
		}
		c.chunks = append(c.chunks, ch)
		covered += size
	}
	if covered != f.size {
		return "", fmt.Errorf("chunks cover %d of %d bytes", covered, f.size)
	}
	// Old TOCs carry only the file digest: it verifies a one-chunk file.
	if len(c.chunks)-first == 1 && c.chunks[first].digest == "" {
		c.chunks[first].digest = fileDigest
	}
	return fileDigest, nil
}

// digest parses a TOC digest, keeping one copy of each: a TOC that repeats
// a digest (as a hostile one may, millions of times) costs it once.
func (b *builder) digest(s string) (digest.Digest, error) {
	if d, ok := b.interned[digest.Digest(s)]; ok {
		return d, nil
	}
	d, err := parseDigest(s)
	if err != nil {
		return "", err
	}
	b.interned[d] = d
	return d, nil
}
