package layer

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"

	"github.com/containerd/stargz-snapshotter/estargz"
	digest "github.com/opencontainers/go-digest"

	"github.com/poolfs/poolfs/fs/fstest"
)

// handmade is a payload of gzip members and the offsets of its pieces, for
// TOCs written by hand.
type handmade struct {
	payload []byte
	hello   int64 // gzip("hello world")
	second  int64 // gzip("second")
	c1, c2  int64 // gzip("01234"), gzip("56789"): the chunks of a 10-byte file
}

func newHandmade(t testing.TB) *handmade {
	h := &handmade{}
	add := func(b string) int64 {
		off := int64(len(h.payload))
		h.payload = append(h.payload, gzipMember(t, []byte(b))...)
		return off
	}
	h.hello = add("hello world")
	h.second = add("second")
	h.c1 = add("01234")
	h.c2 = add("56789")
	return h
}

func sha(s string) string { return digest.FromString(s).String() }

// baseTOC is a valid TOC over h's payload; cases below break one thing.
func (h *handmade) baseTOC() []*estargz.TOCEntry {
	return []*estargz.TOCEntry{
		{Name: "a/", Type: "dir", Mode: 0o755},
		{Name: "a/f", Type: "reg", Size: 11, Offset: h.hello, Digest: sha("hello world"), ChunkDigest: sha("hello world")},
		{Name: "b", Type: "reg", Size: 6, Offset: h.second, Digest: sha("second"), ChunkDigest: sha("second")},
		{Name: "m", Type: "reg", Size: 10, Offset: h.c1, ChunkSize: 5, ChunkDigest: sha("01234")},
		{Name: "m", Type: "chunk", Offset: h.c2, ChunkOffset: 5, ChunkSize: 5, ChunkDigest: sha("56789")},
	}
}

func tocJSON(t testing.TB, entries []*estargz.TOCEntry) []byte {
	b, err := json.Marshal(estargz.JTOC{Version: 1, Entries: entries})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestHandmadeTOC(t *testing.T) {
	h := newHandmade(t)
	toc := tocJSON(t, h.baseTOC())
	l, err := Open(context.Background(), fstest.NewMemBlob(makeBlob(t, h.payload, toc)), digest.FromBytes(toc), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct{ path, want string }{{"a/f", "hello world"}, {"b", "second"}, {"m", "0123456789"}} {
		e := lookup(t, l, tt.path)
		p := make([]byte, e.Size)
		if _, err := l.ReadAt(context.Background(), e, p, 0); err != nil || string(p) != tt.want {
			t.Errorf("%s: %q, %v; want %q", tt.path, p, err, tt.want)
		}
	}
	// The root and "a" were implicit.
	if root := l.Root(); root.Mode != 0o755 || root.NLink != 3 || root.ModTime().Unix() != 0 {
		t.Errorf("implicit root: %+v", root)
	}
}

func TestMalformedTOC(t *testing.T) {
	h := newHandmade(t)
	tocEnd := int64(len(h.payload))
	edit := func(f func(es []*estargz.TOCEntry) []*estargz.TOCEntry) []*estargz.TOCEntry {
		return f(h.baseTOC())
	}
	extra := func(es ...*estargz.TOCEntry) []*estargz.TOCEntry { return append(h.baseTOC(), es...) }

	tests := []struct {
		name    string
		entries []*estargz.TOCEntry
		raw     string // used instead of entries if set
		want    string // substring of the error
	}{
		{name: "bad JSON", raw: `{"version":1,"entries":[`, want: "decoding TOC JSON"},
		{name: "JSON of the wrong shape", raw: `{"entries":{"a":1}}`, want: "decoding TOC JSON"},
		{name: "null entry", raw: `{"entries":[null]}`, want: "null"},
		{name: "dot-dot escape", entries: extra(&estargz.TOCEntry{Name: "../etc/passwd", Type: "dir"}), want: "escapes"},
		{name: "deep dot-dot escape", entries: extra(&estargz.TOCEntry{Name: "a/b/../../../x", Type: "dir"}), want: "escapes"},
		{name: "absolute name", entries: extra(&estargz.TOCEntry{Name: "/etc/passwd", Type: "dir"}), want: "absolute"},
		{name: "NUL in name", entries: extra(&estargz.TOCEntry{Name: "a\x00b", Type: "dir"}), want: "NUL"},
		{name: "unknown type", entries: extra(&estargz.TOCEntry{Name: "s", Type: "socket"}), want: "unknown type"},
		{name: "hard link to missing", entries: extra(&estargz.TOCEntry{Name: "l", Type: "hardlink", LinkName: "nope"}), want: "not in the layer"},
		{name: "hard link cycle", entries: extra(
			&estargz.TOCEntry{Name: "x", Type: "hardlink", LinkName: "y"},
			&estargz.TOCEntry{Name: "y", Type: "hardlink", LinkName: "x"}), want: "cycle"},
		{name: "hard link to itself", entries: extra(&estargz.TOCEntry{Name: "x", Type: "hardlink", LinkName: "./x"}), want: "cycle"},
		{name: "hard link to directory", entries: extra(&estargz.TOCEntry{Name: "x", Type: "hardlink", LinkName: "a"}), want: "directory"},
		{name: "hard link escaping", entries: extra(&estargz.TOCEntry{Name: "x", Type: "hardlink", LinkName: "../b"}), want: "escapes"},
		{name: "entry below a file", entries: extra(&estargz.TOCEntry{Name: "b/c", Type: "dir"}), want: "not a directory"},
		{name: "whiteout below a file", entries: extra(&estargz.TOCEntry{Name: "b/.wh.c", Type: "reg"}), want: "not a directory"},
		{name: "file over implicit dir", entries: edit(func(es []*estargz.TOCEntry) []*estargz.TOCEntry {
			return append(es, &estargz.TOCEntry{Name: "z/y", Type: "dir"}, &estargz.TOCEntry{Name: "z", Type: "symlink", LinkName: "q"})
		}), want: "not a directory"},
		{name: "root is a file", entries: extra(&estargz.TOCEntry{Name: "./", Type: "symlink", LinkName: "x"}), want: "root"},
		{name: "offset beyond the blob", entries: edit(func(es []*estargz.TOCEntry) []*estargz.TOCEntry {
			es[4].Offset = 1 << 40
			return es
		}), want: "outside the payload"},
		{name: "offset at the TOC", entries: edit(func(es []*estargz.TOCEntry) []*estargz.TOCEntry {
			es[4].Offset = tocEnd
			return es
		}), want: "outside the payload"},
		{name: "negative offset", entries: edit(func(es []*estargz.TOCEntry) []*estargz.TOCEntry {
			es[1].Offset = -5
			return es
		}), want: "outside the payload"},
		{name: "offsets not increasing", entries: edit(func(es []*estargz.TOCEntry) []*estargz.TOCEntry {
			es[1].Offset, es[2].Offset = es[2].Offset, es[1].Offset
			return es
		}), want: "does not follow"},
		{name: "same offset twice", entries: edit(func(es []*estargz.TOCEntry) []*estargz.TOCEntry {
			es[2].Offset = es[1].Offset
			return es
		}), want: "does not follow"},
		{name: "negative inner offset", entries: edit(func(es []*estargz.TOCEntry) []*estargz.TOCEntry {
			es[2].InnerOffset = -1
			return es
		}), want: "negative inner offset"},
		{name: "negative size", entries: edit(func(es []*estargz.TOCEntry) []*estargz.TOCEntry {
			es[1].Size = -1
			return es
		}), want: "negative size"},
		{name: "negative chunk size", entries: edit(func(es []*estargz.TOCEntry) []*estargz.TOCEntry {
			es[4].ChunkSize = -5
			return es
		}), want: "negative size"},
		{name: "chunk without a file", entries: edit(func(es []*estargz.TOCEntry) []*estargz.TOCEntry {
			return append(es[:1], es[4])
		}), want: "does not follow"},
		{name: "chunk of another file", entries: edit(func(es []*estargz.TOCEntry) []*estargz.TOCEntry {
			es[4].Name = "b"
			return es
		}), want: "chunk of"},
		{name: "chunks short of the size", entries: edit(func(es []*estargz.TOCEntry) []*estargz.TOCEntry {
			es[3].Size = 20
			return es
		}), want: "cover"},
		{name: "chunk gap", entries: edit(func(es []*estargz.TOCEntry) []*estargz.TOCEntry {
			es[4].ChunkOffset = 6
			return es
		}), want: "chunk at file offset"},
		{name: "chunk overrun", entries: edit(func(es []*estargz.TOCEntry) []*estargz.TOCEntry {
			es[4].ChunkSize = 50
			return es
		}), want: "overruns"},
		{name: "impossible compression ratio", entries: edit(func(es []*estargz.TOCEntry) []*estargz.TOCEntry {
			es[2].Size = 1 << 40
			return es
		}), want: "claims"},
		{name: "bad chunk digest", entries: edit(func(es []*estargz.TOCEntry) []*estargz.TOCEntry {
			es[1].ChunkDigest = "sha256:nothex"
			return es
		}), want: "digest"},
		{name: "bad file digest", entries: edit(func(es []*estargz.TOCEntry) []*estargz.TOCEntry {
			es[1].Digest = "md5:abc"
			return es
		}), want: "digest"},
		{name: "negative uid", entries: extra(&estargz.TOCEntry{Name: "u", Type: "dir", UID: -1}), want: "owner"},
		{name: "huge gid", entries: extra(&estargz.TOCEntry{Name: "u", Type: "dir", GID: 1 << 40}), want: "owner"},
		{name: "bad modtime", entries: extra(&estargz.TOCEntry{Name: "u", Type: "dir", ModTime3339: "yesterday"}), want: "modtime"},
		{name: "negative device", entries: extra(&estargz.TOCEntry{Name: "d", Type: "char", DevMajor: -1}), want: "device"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			toc := []byte(tt.raw)
			if tt.raw == "" {
				toc = tocJSON(t, tt.entries)
			}
			_, err := Open(context.Background(), fstest.NewMemBlob(makeBlob(t, h.payload, toc)), digest.FromBytes(toc), nil, nil)
			if err == nil {
				t.Fatal("Open succeeded")
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Open: %v; want an error mentioning %q", err, tt.want)
			}
			if errors.Is(err, ErrNoFormat) || errors.Is(err, ErrVerify) {
				t.Errorf("Open: %v; a malformed TOC is neither ErrNoFormat nor ErrVerify", err)
			}
		})
	}
}

// Blobs from the pre-eStargz stargz format end in a 47-byte footer.
func TestLegacyFooter(t *testing.T) {
	h := newHandmade(t)
	toc := tocJSON(t, h.baseTOC())
	blob := makeBlob(t, h.payload, toc)
	legacy := estargz.CreateGzipFooter([]byte(fmt.Sprintf("%016xSTARGZ", len(h.payload))))
	if len(legacy) != legacyFooterSize {
		t.Fatalf("legacy footer of %d bytes", len(legacy))
	}
	blob = append(blob[:len(blob)-estargz.FooterSize], legacy...)
	l, err := Open(context.Background(), fstest.NewMemBlob(blob), digest.FromBytes(toc), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	e := lookup(t, l, "m")
	p := make([]byte, e.Size)
	if _, err := l.ReadAt(context.Background(), e, p, 0); err != nil || string(p) != "0123456789" {
		t.Errorf("m: %q, %v", p, err)
	}
}

// Footers that parse as gzip but lie about the TOC.
func TestMalformedFooter(t *testing.T) {
	h := newHandmade(t)
	good := makeBlob(t, h.payload, tocJSON(t, h.baseTOC()))
	body := good[:len(good)-estargz.FooterSize]
	tests := []struct {
		name   string
		footer []byte
	}{
		{"TOC offset past the end", footer(len(good) + 100)},
		{"TOC offset inside the payload", footer(3)},
		{"short extra subfield", estargz.CreateGzipFooter([]byte{'S', 'G', 22, 0, '0', '1'})},
		{"not hex", estargz.CreateGzipFooter(append([]byte{'S', 'G', 22, 0}, "zzzzzzzzzzzzzzzzSTARGZ"...))},
		{"negative offset", estargz.CreateGzipFooter(append([]byte{'S', 'G', 22, 0}, "-000000000000001STARGZ"...))},
		// 51 bytes whose Extra field is shorter than its subfield length
		// says (an FNAME fills the gap): estargz's own parser panics here.
		{"lying subfield length", func() []byte {
			b := []byte{0x1f, 0x8b, 8, 0x04 | 0x08, 0, 0, 0, 0, 0, 255, 10, 0, 'S', 'G', 22, 0, '0', '0', '0', '0', '0', '0'}
			b = append(b, "abcdefghijklmno\x00"...)
			b = append(b, 1, 0, 0, 0xff, 0xff)
			return append(b, make([]byte, 8)...)
		}()},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			blob := append(append([]byte(nil), body...), tt.footer...)
			if _, err := Open(context.Background(), fstest.NewMemBlob(blob), "", nil, nil); err == nil {
				t.Error("Open succeeded")
			}
		})
	}
}

// Without a chunk digest, a chunk is served only if the file digest can
// stand in for it (one-chunk files); otherwise reads fail with ErrVerify.
func TestMissingChunkDigests(t *testing.T) {
	h := newHandmade(t)
	tests := []struct {
		name    string
		edit    func(es []*estargz.TOCEntry)
		path    string
		wantErr error
	}{
		{"one chunk, file digest only", func(es []*estargz.TOCEntry) { es[1].ChunkDigest = "" }, "a/f", nil},
		{"one chunk, no digest at all", func(es []*estargz.TOCEntry) { es[1].ChunkDigest, es[1].Digest = "", "" }, "a/f", ErrVerify},
		{"one chunk, wrong file digest", func(es []*estargz.TOCEntry) { es[1].ChunkDigest, es[1].Digest = "", sha("nope") }, "a/f", ErrVerify},
		{"several chunks, one without digest", func(es []*estargz.TOCEntry) {
			es[4].ChunkDigest = ""
			es[3].Digest = sha("0123456789")
		}, "m", ErrVerify},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			es := h.baseTOC()
			tt.edit(es)
			toc := tocJSON(t, es)
			cache := newMemCache()
			l, err := Open(context.Background(), fstest.NewMemBlob(makeBlob(t, h.payload, toc)), digest.FromBytes(toc), cache, nil)
			if err != nil {
				t.Fatal(err)
			}
			e := lookup(t, l, tt.path)
			_, err = l.ReadAt(context.Background(), e, make([]byte, e.Size), 0)
			if !errors.Is(err, tt.wantErr) {
				t.Errorf("ReadAt: %v, want %v", err, tt.wantErr)
			}
			if tt.wantErr != nil && cache.adds != 0 {
				t.Errorf("%d chunks cached although the read failed", cache.adds)
			}
		})
	}
}

func TestDuplicateNamesLastWins(t *testing.T) {
	h := newHandmade(t)
	es := append(h.baseTOC()[:3],
		&estargz.TOCEntry{Name: "b", Type: "symlink", LinkName: "a/f"},
		&estargz.TOCEntry{Name: "a", Type: "dir", Mode: 0o700, UID: 5},
	)
	toc := tocJSON(t, es)
	l, err := Open(context.Background(), fstest.NewMemBlob(makeBlob(t, h.payload, toc)), "", nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if b := lookup(t, l, "b"); b.Type != TypeSymlink {
		t.Errorf("b is %v, want the later symlink", b.Type)
	}
	if a := lookup(t, l, "a"); a.Mode != 0o700 || a.UID != 5 || a.Child("f") == nil {
		t.Errorf("a: %+v, want the later dir entry keeping its children", a)
	}
}

// FuzzOpen feeds arbitrary TOC JSON (inside an otherwise valid blob) and
// arbitrary whole blobs to Open, and reads every file of any view it
// accepts. Nothing may panic.
func FuzzOpen(f *testing.F) {
	h := newHandmade(f)
	f.Add(tocJSON(f, h.baseTOC()))
	f.Add([]byte(`{"version":1,"entries":[{"name":"x","type":"hardlink","linkName":"x"}]}`))
	f.Add([]byte(`{"entries":[{"name":"a","type":"reg","size":5,"offset":0},{"type":"chunk","offset":3,"chunkOffset":2}]}`))
	f.Add([]byte(`{"entries":[{"name":"a/.wh..wh..opq","type":"reg"},{"name":"a/.wh.b","type":"char"},{"name":".prefetch.landmark","type":"reg"}]}`))
	f.Add([]byte(`{"entries":[null]}`))
	sampleTOC, _ := json.Marshal(estargz.JTOC{Entries: []*estargz.TOCEntry{{Name: "./", Type: "dir", Xattrs: map[string][]byte{"user.a": {0}}}}})
	f.Add(sampleTOC)
	small, _ := fstest.EStargz(f, fstest.SampleTar(f))
	f.Add(small[len(small)-300:])
	// Whole zstd:chunked blobs of a one-file tar, of both generations.
	var oneFile bytes.Buffer
	tw := tar.NewWriter(&oneFile)
	_ = tw.WriteHeader(&tar.Header{Name: "a", Typeflag: tar.TypeReg, Mode: 0o644, Size: 3})
	_, _ = tw.Write([]byte("abc"))
	_ = tw.Close()
	for _, legacy := range []bool{false, true} {
		z, _ := fstest.ZstdChunked(f, oneFile.Bytes(), fstest.ZstdChunkedOptions{Legacy: legacy})
		f.Add(z)
	}
	for _, seed := range hostileTOCSeeds {
		f.Add([]byte(seed))
	}

	f.Fuzz(func(t *testing.T, data []byte) {
		for _, blob := range [][]byte{makeBlob(t, h.payload, data), data} {
			l, err := Open(context.Background(), fstest.NewMemBlob(blob), "", nil, nil)
			if err != nil {
				continue
			}
			checkNames(t, l)
			readAll(t, l)
		}
	})
}

// readAll reads every regular file of l, tolerating errors.
func readAll(t *testing.T, l *Layer) {
	seen := map[*Entry]bool{}
	stack := []*Entry{l.Root()}
	for len(stack) > 0 {
		e := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		if seen[e] {
			t.Fatalf("entry %q reachable twice as a directory", e.Path())
		}
		seen[e] = true
		l.CompressedRange(e)
		switch e.Type {
		case TypeDir:
			for i := range e.NumChildren() {
				if n, c := e.ChildAt(i); e.Child(n) != c {
					t.Fatalf("%q: child %q not found by name", e.Path(), n)
				} else if c.Type == TypeDir {
					stack = append(stack, c)
				} else if !seen[c] {
					seen[c] = true
					if c.Type == TypeReg && c.Size <= 1<<20 {
						p := make([]byte, c.Size+1)
						n, err := l.ReadAt(context.Background(), c, p, 0)
						if err == nil || (errors.Is(err, io.EOF) && int64(n) != c.Size) {
							t.Fatalf("%q: read %d of %d bytes, %v", c.Path(), n, c.Size, err)
						}
					}
				}
			}
		}
	}
	_ = l.Prioritized()
	_ = fmt.Sprint(l.TOCDigest())
}
