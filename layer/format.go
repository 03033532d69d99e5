package layer

// format is what differs between the blob formats a Layer serves lazily:
// how a chunk's compressed bytes become its content. Each format has its
// own file (estargz: footer.go, toc.go; zstd:chunked: zstdchunked.go);
// the fetch engine, caches and trees see only chunks.
type format interface {
	String() string
	// decodeChunk decompresses c from exactly its compressed range
	// [c.blobOff, c.blobEnd) and verifies it, failing with ErrVerify.
	decodeChunk(c *chunk, compressed []byte) ([]byte, error)
}

// estargzFormat decodes eStargz (and legacy stargz) chunks: gzip members.
type estargzFormat struct{}

func (estargzFormat) String() string { return "estargz" }
