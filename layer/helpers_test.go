package layer

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"io"
	"sort"
	"sync"
	"testing"

	"github.com/containerd/stargz-snapshotter/estargz"
	digest "github.com/opencontainers/go-digest"

	"github.com/poolfs/poolfs/fs/fstest"
)

// memCache is a Cache that remembers what was added.
type memCache struct {
	mu   sync.Mutex
	m    map[string][]byte
	adds int
}

func newMemCache() *memCache { return &memCache{m: map[string][]byte{}} }

func (c *memCache) Get(k string) ([]byte, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	b, ok := c.m[k]
	return b, ok
}

func (c *memCache) Add(k string, b []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.adds++
	c.m[k] = b
}

func (c *memCache) has(k string) bool {
	_, ok := c.Get(k)
	return ok
}

// Has makes memCache a cache.Peeker, as the daemon's caches are.
func (c *memCache) Has(k string) bool { return c.has(k) }

// sample is SampleTar as an eStargz layer served from memory.
type sample struct {
	tar   []byte
	blob  *fstest.MemBlob
	toc   digest.Digest
	cache *memCache
	l     *Layer
}

func openSample(t testing.TB, opts ...estargz.Option) *sample {
	t.Helper()
	tarBytes := fstest.SampleTar(t)
	data, toc := fstest.EStargz(t, tarBytes, opts...)
	s := &sample{tar: tarBytes, blob: fstest.NewMemBlob(data), toc: toc, cache: newMemCache()}
	l, err := Open(context.Background(), s.blob, toc, s.cache, nil)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	s.l = l
	return s
}

// lookup finds the entry at view path p.
func lookup(t testing.TB, l *Layer, p string) *Entry {
	t.Helper()
	e := l.Root()
	if p == "" {
		return e
	}
	start := 0
	for i := 0; i <= len(p); i++ {
		if i == len(p) || p[i] == '/' {
			e = e.Child(p[start:i])
			if e == nil {
				t.Fatalf("no entry %q", p)
			}
			start = i + 1
		}
	}
	return e
}

// viewOf renders the layer view as fstest.View, hashing contents through
// ReadAt if hash is set.
func viewOf(t testing.TB, l *Layer, hash bool) fstest.View {
	t.Helper()
	v := fstest.View{}
	names := map[*Entry][]string{}
	type item struct {
		p string
		e *Entry
	}
	stack := []item{{"", l.Root()}}
	for len(stack) > 0 {
		it := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		e := it.e
		fe := &fstest.Entry{
			Path: it.p, Mode: e.Mode, UID: e.UID, GID: e.GID, Size: e.Size,
			ModTime: e.ModTime().Unix(), LinkName: e.LinkName(), DevMajor: e.DevMajor(), DevMinor: e.DevMinor(),
			NLink: e.NLink,
		}
		fe.Type = map[EntryType]string{TypeDir: "dir", TypeReg: "reg", TypeSymlink: "symlink",
			TypeChar: "char", TypeBlock: "block", TypeFIFO: "fifo"}[e.Type]
		for k, val := range e.Xattrs() {
			if fe.Xattrs == nil {
				fe.Xattrs = map[string]string{}
			}
			fe.Xattrs[k] = string(val)
		}
		if e.Type == TypeReg && hash {
			b := make([]byte, e.Size)
			if n, err := l.ReadAt(context.Background(), e, b, 0); err != nil && !(err == io.EOF && n == len(b)) {
				t.Fatalf("reading %q: %v", it.p, err)
			}
			sum := sha256.Sum256(b)
			fe.SHA256 = hex.EncodeToString(sum[:])
		}
		v[it.p] = fe
		if e.Type == TypeDir {
			for i := range e.NumChildren() {
				name, c := e.ChildAt(i)
				p := name
				if it.p != "" {
					p = it.p + "/" + name
				}
				stack = append(stack, item{p, c})
			}
		} else {
			names[e] = append(names[e], it.p)
		}
	}
	for _, ns := range names {
		if len(ns) > 1 {
			sort.Strings(ns)
			for _, n := range ns {
				v[n].Links = ns
			}
		}
	}
	return v
}

// makeBlob assembles an eStargz blob from a payload and TOC JSON, for TOCs
// estargz's builder would never write.
func makeBlob(t testing.TB, payload, tocJSON []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	buf.Write(payload)
	tocOff := buf.Len()
	zw := gzip.NewWriter(&buf)
	tw := tar.NewWriter(zw)
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: estargz.TOCTarName, Size: int64(len(tocJSON))}); err != nil {
		t.Fatal(err)
	}
	if _, err := tw.Write(tocJSON); err != nil {
		t.Fatal(err)
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	buf.Write(footer(tocOff))
	return buf.Bytes()
}

func footer(tocOff int) []byte {
	extra := []byte{'S', 'G', 0, 0}
	sub := fmt.Sprintf("%016xSTARGZ", tocOff)
	binary.LittleEndian.PutUint16(extra[2:], uint16(len(sub)))
	return estargz.CreateGzipFooter(append(extra, sub...))
}

// gzipMember compresses b as one gzip member, as estargz stores a chunk.
func gzipMember(t testing.TB, b []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	zw.Write(b)
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// memberJSON is the TOC JSON inside a TOC's gzip member.
func memberJSON(t testing.TB, member []byte) []byte {
	t.Helper()
	zr, err := gzip.NewReader(bytes.NewReader(member))
	if err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(zr)
	if _, err := tr.Next(); err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(tr)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
