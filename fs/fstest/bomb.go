package fstest

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"io"
	"strconv"

	"github.com/containerd/stargz-snapshotter/estargz"
	digest "github.com/opencontainers/go-digest"
)

// ManyEntries describes an eStargz blob whose TOC lists Entries tiny
// entries and nothing else: the memory bomb a hostile registry can serve.
// Every entry is an empty regular file (no chunks, no payload), Dirs
// directories of them, each name padded with Pad bytes; the blob is a
// few bytes per entry because the TOC JSON compresses well.
type ManyEntries struct {
	Entries int
	Dirs    int // directories the files are spread over (0: 1)
	Pad     int // extra bytes in every file name
	Seed    string
}

// Build returns the blob and the digest of its TOC JSON. The JSON is
// written straight into the gzip stream, never held whole: a TOC of a
// GiB costs the test no more than a few MiB.
func (m ManyEntries) Build() ([]byte, digest.Digest, error) {
	dirs := max(m.Dirs, 1)
	pad := bytes.Repeat([]byte("x"), m.Pad)
	var out bytes.Buffer
	// The TOC tar entry must state its size up front: one pass to count,
	// one to write.
	size, err := m.writeJSON(io.Discard, dirs, pad)
	if err != nil {
		return nil, "", err
	}
	zw, _ := gzip.NewWriterLevel(&out, gzip.BestSpeed)
	tw := tar.NewWriter(zw)
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: estargz.TOCTarName, Size: size, Mode: 0o644}); err != nil {
		return nil, "", err
	}
	h := sha256.New()
	if _, err := m.writeJSON(io.MultiWriter(tw, h), dirs, pad); err != nil {
		return nil, "", err
	}
	if err := tw.Close(); err != nil {
		return nil, "", err
	}
	if err := zw.Close(); err != nil {
		return nil, "", err
	}
	out.Write(stargzFooter(0))
	return out.Bytes(), digest.NewDigest(digest.SHA256, h), nil
}

// writeJSON writes the TOC JSON to w and returns its length.
func (m ManyEntries) writeJSON(w io.Writer, dirs int, pad []byte) (int64, error) {
	cw := &countWriter{w: w}
	bw := bufio.NewWriterSize(cw, 64<<10)
	bw.WriteString(`{"version":1,"entries":[`)
	for d := 0; d < dirs; d++ {
		if d > 0 {
			bw.WriteByte(',')
		}
		fmt.Fprintf(bw, `{"name":"d%s%d/","type":"dir","mode":493}`, m.Seed, d)
	}
	var num []byte
	for i := 0; i < m.Entries-dirs; i++ {
		bw.WriteString(`,{"name":"d`)
		bw.WriteString(m.Seed)
		num = strconv.AppendInt(num[:0], int64(i%dirs), 10)
		bw.Write(num)
		bw.WriteString(`/f`)
		bw.Write(pad)
		num = strconv.AppendInt(num[:0], int64(i), 10)
		bw.Write(num)
		bw.WriteString(`","type":"reg","mode":420}`)
	}
	bw.WriteString("]}")
	if err := bw.Flush(); err != nil {
		return 0, err
	}
	return cw.n, nil
}

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// stargzFooter is estargz's gzip footer pointing at a TOC at tocOff.
func stargzFooter(tocOff int64) []byte {
	extra := []byte{'S', 'G', 0, 0}
	sub := fmt.Sprintf("%016xSTARGZ", tocOff)
	binary.LittleEndian.PutUint16(extra[2:], uint16(len(sub)))
	return estargz.CreateGzipFooter(append(extra, sub...))
}
