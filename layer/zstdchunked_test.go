package layer

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"

	"github.com/klauspost/compress/zstd"
	digest "github.com/opencontainers/go-digest"

	"github.com/poolfs/poolfs/fs/fstest"
)

// zstdOptions are the zstd:chunked layouts the view must not depend on.
var zstdOptions = []struct {
	name string
	opts fstest.ZstdChunkedOptions
}{
	{"current", fstest.ZstdChunkedOptions{}},
	{"legacy", fstest.ZstdChunkedOptions{Legacy: true}},
	{"one-chunk-files", fstest.ZstdChunkedOptions{ChunkSize: 1 << 30}},
	{"small-chunks", fstest.ZstdChunkedOptions{ChunkSize: 1000}},
}

// openZstd opens SampleTar written as zstd:chunked, finding the manifest
// through the footer, and checks it against the annotation's checksum.
func openZstd(t testing.TB, opts fstest.ZstdChunkedOptions) (*Layer, *fstest.MemBlob, []byte, digest.Digest) {
	t.Helper()
	tarBytes := fstest.SampleTar(t)
	data, ann := fstest.ZstdChunked(t, tarBytes, opts)
	checksum, _, ok, err := ZstdChunkedAnnotations(ann)
	if !ok || err != nil {
		t.Fatalf("ZstdChunkedAnnotations(%v) = %v, %v", ann, ok, err)
	}
	blob := fstest.NewMemBlob(data)
	l, err := Open(context.Background(), blob, checksum, newMemCache(), nil)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	return l, blob, tarBytes, checksum
}

func TestZstdChunkedViewMatchesTar(t *testing.T) {
	for _, o := range zstdOptions {
		t.Run(o.name, func(t *testing.T) {
			l, blob, tarBytes, checksum := openZstd(t, o.opts)
			if l.TOCDigest() != checksum {
				t.Errorf("TOCDigest %s, want the manifest checksum %s", l.TOCDigest(), checksum)
			}
			want, err := fstest.TarView(tarBytes)
			if err != nil {
				t.Fatal(err)
			}
			for _, d := range fstest.Diff(want, viewOf(t, l, true)) {
				t.Error(d)
			}
			// Reading every file fetched each chunk's frames and nothing
			// past the data.
			if _, n := blob.Stats(); n > blob.Size()+tailSize {
				t.Errorf("read %d bytes of a %d byte blob", n, blob.Size())
			}
		})
	}
}

// TestZstdChunkedReadFetchesOnlyItsFrames: a file's read fetches exactly its
// chunks' frames, not the headers' frames around them.
func TestZstdChunkedReadFetchesOnlyItsFrames(t *testing.T) {
	tarBytes := fstest.SampleTar(t)
	data, ann := fstest.ZstdChunked(t, tarBytes, fstest.ZstdChunkedOptions{})
	checksum, _, _, _ := ZstdChunkedAnnotations(ann)
	defer func(old int64) { tailSize = old }(tailSize)
	tailSize = 4096 // chunks outside the tail window
	blob := fstest.NewMemBlob(data)
	l, err := Open(context.Background(), blob, checksum, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	e := lookup(t, l, fstest.SampleBigFile)
	start, end := l.CompressedRange(e)
	blob.ResetStats()
	buf := make([]byte, e.Size)
	if _, err := l.ReadAt(context.Background(), e, buf, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(buf, fstest.TarFile(t, tarBytes, fstest.SampleBigFile)) {
		t.Fatal("content differs from the tar")
	}
	var fetched int64
	for _, r := range blob.Reads() {
		if r[0] < start || r[0]+r[1] > end {
			t.Errorf("read [%d, +%d) outside the file's frames [%d, %d)", r[0], r[1], start, end)
		}
		fetched += r[1]
	}
	if fetched != end-start {
		t.Errorf("fetched %d bytes for frames of %d", fetched, end-start)
	}
}

// TestZstdChunkedAnnotationPosition: the position annotation finds the
// manifest without the footer (containers/storage readers never read it).
func TestZstdChunkedAnnotationPosition(t *testing.T) {
	for _, o := range zstdOptions[:2] {
		t.Run(o.name, func(t *testing.T) {
			data, ann := fstest.ZstdChunked(t, fstest.SampleTar(t), o.opts)
			checksum, pos, ok, err := ZstdChunkedAnnotations(ann)
			if !ok || err != nil || pos == nil {
				t.Fatalf("ZstdChunkedAnnotations: pos %v ok %v err %v", pos, ok, err)
			}
			// Spoil the footer: only the annotation can find the manifest.
			data = bytes.Clone(data)
			copy(data[len(data)-16:], make([]byte, 8))
			raw, err := readTOC(context.Background(), fstest.NewMemBlob(data), checksum, options{zstdPosition: pos})
			if err != nil {
				t.Fatalf("readTOC: %v", err)
			}
			if raw.digest != checksum || len(raw.tree.entries) <= 1 {
				t.Errorf("manifest %s with %d entries", raw.digest, len(raw.tree.entries))
			}
		})
	}
}

func TestZstdChunkedErrors(t *testing.T) {
	tarBytes := fstest.SampleTar(t)
	data, ann := fstest.ZstdChunked(t, tarBytes, fstest.ZstdChunkedOptions{})
	checksum, pos, _, _ := ZstdChunkedAnnotations(ann)

	t.Run("wrong checksum", func(t *testing.T) {
		_, err := Open(context.Background(), fstest.NewMemBlob(data), digest.FromString("other"), nil, nil)
		if !errors.Is(err, ErrVerify) {
			t.Fatalf("Open: %v, want ErrVerify", err)
		}
	})
	t.Run("spoiled manifest", func(t *testing.T) {
		spoiled := bytes.Clone(data)
		spoiled[pos.Offset+pos.Length/2] ^= 0xff
		if _, err := Open(context.Background(), fstest.NewMemBlob(spoiled), checksum, nil, nil); !errors.Is(err, ErrVerify) {
			t.Fatalf("Open: %v, want ErrVerify", err)
		}
	})
	t.Run("position outside the blob", func(t *testing.T) {
		for _, p := range []ManifestPosition{
			{Offset: int64(len(data)), Length: 10, LengthUncompressed: 10},
			{Offset: 4, Length: 10, LengthUncompressed: 10},
			{Offset: pos.Offset, Length: int64(len(data)), LengthUncompressed: 10},
			{Offset: pos.Offset, Length: pos.Length, LengthUncompressed: maxTOCJSON + 1},
			{Offset: pos.Offset, Length: pos.Length, LengthUncompressed: pos.LengthUncompressed + 1},
		} {
			if _, err := readTOC(context.Background(), fstest.NewMemBlob(data), "", options{zstdPosition: &p}); err == nil {
				t.Errorf("position %+v: no error", p)
			}
		}
	})
	t.Run("corrupt chunk", func(t *testing.T) {
		blob := fstest.NewMemBlob(bytes.Clone(data))
		l, err := Open(context.Background(), blob, checksum, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		e := lookup(t, l, fstest.SampleBigFile)
		start, _ := l.CompressedRange(e)
		blob.Flip(start + 6)
		l2, err := Open(context.Background(), blob, checksum, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		_, err = l2.ReadAt(context.Background(), lookup(t, l2, fstest.SampleBigFile), make([]byte, 10), 0)
		if !errors.Is(err, ErrVerify) {
			t.Fatalf("ReadAt of a corrupt chunk: %v, want ErrVerify", err)
		}
	})
}

func TestParseManifestPosition(t *testing.T) {
	tests := []struct {
		in   string
		want ManifestPosition
		ok   bool
	}{
		{"100:20:300:1", ManifestPosition{100, 20, 300}, true},
		{"100:20:300:2", ManifestPosition{}, false},
		{"100:20:300", ManifestPosition{}, false},
		{"-1:20:300:1", ManifestPosition{}, false},
		{"a:20:300:1", ManifestPosition{}, false},
		{"", ManifestPosition{}, false},
	}
	for _, tc := range tests {
		got, err := ParseManifestPosition(tc.in)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("ParseManifestPosition(%q) = %+v, %v", tc.in, got, err)
		}
	}
}

// TestNotServedCostsOneSmallRead: a blob without any footer (a plain gzip
// layer) is told apart with one read of at most probeSize bytes when
// nothing claimed a TOC digest for it.
func TestNotServedCostsOneSmallRead(t *testing.T) {
	data := bytes.Repeat([]byte("not a layer format poolfs serves "), 1<<16)
	blob := fstest.NewMemBlob(data)
	if _, err := Open(context.Background(), blob, "", nil, nil); !errors.Is(err, ErrNoFormat) {
		t.Fatalf("Open: %v, want ErrNoFormat", err)
	}
	if calls, n := blob.Stats(); calls != 1 || n > probeSize {
		t.Errorf("%d reads of %d bytes, want 1 of at most %d", calls, n, probeSize)
	}
}

// FuzzZstdChunkedTOC: a manifest of any bytes gives an error or a layer,
// never a panic.
func FuzzZstdChunkedTOC(f *testing.F) {
	f.Add([]byte(`{"version":1,"entries":[{"type":"reg","name":"a","size":3,"offset":1,"endOffset":5,"digest":"sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"}]}`))
	f.Add([]byte(`{"version":1,"entries":[{"type":"reg","name":"a","size":8,"offset":1,"endOffset":9,"chunkSize":4},{"type":"chunk","name":"a","chunkOffset":4,"offset":5,"chunkType":"zeros"}]}`))
	f.Add([]byte(`{"version":1,"entries":[{"type":"dir","name":"d","xattrs":{"user.a":"eA=="}},{"type":"hardlink","name":"l","linkName":"d"}]}`))
	f.Fuzz(func(t *testing.T, js []byte) {
		compressed := zstdEncoder.EncodeAll(js, nil)
		c, log := defaults(nil, nil)
		raw, err := decodeZstdTOC(compressed, digest.FromBytes(compressed), 100, int64(len(js)), options{log: log})
		if err != nil {
			return
		}
		viewOf(t, newLayer(raw, fstest.NewMemBlob(make([]byte, 200)), c, log, options{}), false)
	})
}

var zstdEncoder, _ = zstd.NewWriter(nil)

// TestZstdChunkedStoredAndAnnotated: with the annotations, Open fetches the
// manifest in one exact request; the TOC it returns reopens the layer
// without the blob (restart from meta.db), and a damaged one does not.
func TestZstdChunkedStoredAndAnnotated(t *testing.T) {
	tarBytes := fstest.SampleTar(t)
	data, ann := fstest.ZstdChunked(t, tarBytes, fstest.ZstdChunkedOptions{})
	checksum, pos, _, _ := ZstdChunkedAnnotations(ann)
	blob := fstest.NewMemBlob(data)
	_, toc, err := OpenWithTOC(context.Background(), blob, checksum, nil, nil, WithAnnotations(ann))
	if err != nil {
		t.Fatal(err)
	}
	if reads := blob.Reads(); len(reads) != 1 || reads[0] != [2]int64{pos.Offset, pos.Length} {
		t.Errorf("reads %v, want one of the manifest [%d, +%d)", reads, pos.Offset, pos.Length)
	}
	if toc.Format != FormatZstdChunked || toc.Digest != checksum {
		t.Fatalf("TOC format %q digest %s", toc.Format, toc.Digest)
	}
	blob.ResetStats()
	l, err := OpenStored(blob, toc, nil, nil)
	if err != nil {
		t.Fatalf("OpenStored: %v", err)
	}
	if calls, _ := blob.Stats(); calls != 0 {
		t.Errorf("OpenStored made %d blob reads", calls)
	}
	want, _ := fstest.TarView(tarBytes)
	for _, d := range fstest.Diff(want, viewOf(t, l, true)) {
		t.Error(d)
	}

	bad := toc
	bad.Member = bytes.Clone(toc.Member)
	bad.Member[len(bad.Member)/2] ^= 1
	if _, err := OpenStored(blob, bad, nil, nil); !errors.Is(err, ErrVerify) {
		t.Errorf("OpenStored of a damaged manifest: %v, want ErrVerify", err)
	}
	bad = toc
	bad.Format = "squashfs"
	if _, err := OpenStored(blob, bad, nil, nil); err == nil {
		t.Error("OpenStored of an unknown format succeeded")
	}
}

func TestTOCDigestFromAnnotations(t *testing.T) {
	a, b := digest.FromString("a"), digest.FromString("b")
	tests := []struct {
		name    string
		ann     map[string]string
		want    digest.Digest
		wantErr bool
	}{
		{"none", map[string]string{"x": "y"}, "", false},
		{"eStargz", map[string]string{"containerd.io/snapshot/stargz/toc.digest": a.String()}, a, false},
		{"zstd:chunked", map[string]string{ZstdChunkedChecksumAnnotation: a.String()}, a, false},
		{"zstd:chunked by podman 4", map[string]string{LegacyZstdChunkedChecksumAnnotation: a.String()}, a, false},
		{"both formats: eStargz's", map[string]string{"containerd.io/snapshot/stargz/toc.digest": a.String(), ZstdChunkedChecksumAnnotation: b.String()}, a, false},
		{"malformed", map[string]string{ZstdChunkedChecksumAnnotation: "sha256:nope"}, "", true},
	}
	for _, tc := range tests {
		got, err := TOCDigestFromAnnotations(tc.ann)
		if got != tc.want || (err != nil) != tc.wantErr {
			t.Errorf("%s: %q, %v; want %q, error %v", tc.name, got, err, tc.want, tc.wantErr)
		}
	}
}

// TestDecompressWholeBlob: a layer decompresses its whole blob to the tar
// (the diff_id's input) whatever its format.
func TestDecompressWholeBlob(t *testing.T) {
	tarBytes := fstest.SampleTar(t)
	estargzBlob, _ := fstest.EStargz(t, tarBytes)
	zstdBlob, _ := fstest.ZstdChunked(t, tarBytes, fstest.ZstdChunkedOptions{})
	for name, blob := range map[string][]byte{"estargz": estargzBlob, "zstd:chunked": zstdBlob} {
		l, err := Open(context.Background(), fstest.NewMemBlob(blob), "", nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		r, err := l.Decompress(bytes.NewReader(blob))
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		var out bytes.Buffer
		if _, err := out.ReadFrom(r); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		r.Close()
		// eStargz appends its TOC and footer as tar entries; the layer's
		// own entries come first, byte for byte, up to the tar's end.
		if name == "zstd:chunked" && !bytes.Equal(out.Bytes(), tarBytes) {
			t.Errorf("%s: decompresses to %d bytes, not the %d byte tar", name, out.Len(), len(tarBytes))
		}
		if name == "estargz" && out.Len() == 0 {
			t.Errorf("%s: decompresses to nothing", name)
		}
	}
}

// TestZstdChunkedRecordAndReplay: startup profiles work on zstd:chunked
// layers as on eStargz ones: what reads needed is recorded by each chunk's
// exact frame extent, and replaying it on a fresh layer (empty cache) lets
// the same reads run without a request.
func TestZstdChunkedRecordAndReplay(t *testing.T) {
	old := tailSize
	tailSize = 4 << 10 // the chunks outside Open's tail are fetched
	t.Cleanup(func() { tailSize = old })

	tarBytes := fstest.SampleTar(t)
	data, ann := fstest.ZstdChunked(t, tarBytes, fstest.ZstdChunkedOptions{ChunkSize: 1000})
	checksum, _, _, _ := ZstdChunkedAnnotations(ann)
	open := func() (*Layer, *fstest.MemBlob) {
		blob := fstest.NewMemBlob(data)
		l, err := Open(context.Background(), blob, checksum, newMemCache(), nil)
		if err != nil {
			t.Fatalf("Open: %v", err)
		}
		return l, blob
	}
	want, _ := fstest.TarView(tarBytes)
	var files []string
	for p, e := range want {
		if e.Type == "reg" && e.Size > 0 {
			files = append(files, p)
		}
	}
	read := func(l *Layer) {
		for _, p := range files {
			e := lookup(t, l, p)
			got := make([]byte, e.Size)
			if _, err := l.ReadAt(context.Background(), e, got, 0); err != nil {
				t.Fatalf("ReadAt(%s): %v", p, err)
			}
			if digest.FromBytes(got).Encoded() != want[p].SHA256 {
				t.Fatalf("ReadAt(%s): content differs", p)
			}
		}
	}

	l, _ := open()
	read(l)
	rec := l.Recorded()
	if rec == nil || rec.TOC != checksum || len(rec.Chunks) == 0 {
		t.Fatalf("Recorded() = %+v, want chunks of TOC %s", rec, checksum)
	}
	rec.Blob = digest.FromBytes(data)

	fresh, blob := open()
	blob.ResetStats()
	st, err := fresh.Replay(context.Background(), rec)
	if err != nil {
		t.Fatalf("Replay: %v", err)
	}
	calls, n := blob.Stats()
	t.Logf("%d files read; replay %+v: %d requests, %d bytes", len(files), st, calls, n)
	if st.Fetched == 0 || calls == 0 {
		t.Fatalf("Replay fetched nothing: %+v", st)
	}
	blob.ResetStats()
	read(fresh)
	if calls, n := blob.Stats(); calls != 0 {
		t.Errorf("reads after the replay made %d requests (%d bytes), want none", calls, n)
	}
}

// TestZstdChunkedLimits: the tree limits refuse a zstd:chunked layer as
// they do an eStargz one; its manifest, held whole while the tree is built,
// counts too; a refusal gives every byte back.
func TestZstdChunkedLimits(t *testing.T) {
	tarBytes := fstest.SampleTar(t)
	data, ann := fstest.ZstdChunked(t, tarBytes, fstest.ZstdChunkedOptions{})
	checksum, pos, _, _ := ZstdChunkedAnnotations(ann)
	plain, err := Open(context.Background(), fstest.NewMemBlob(data), checksum, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	tree, held := plain.TreeBytes(), 3*pos.LengthUncompressed
	for _, tt := range []struct {
		name     string
		entries  int
		maxBytes int64
		ok       bool
	}{
		{"no limits", 0, 0, true},
		{"entries", 3, 0, false},
		{"memory", 0, 1 << 10, false},
		{"memory for the tree, not the manifest beside it", 0, tree + held/2, false},
		{"memory for both", 0, tree + held, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var reserved atomic.Int64
			lim := Limits{MaxEntries: tt.entries, Reserve: func(n int64) error {
				if n > 0 && tt.maxBytes > 0 && reserved.Load()+n > tt.maxBytes {
					return fmt.Errorf("%w: test limit", ErrLimit)
				}
				reserved.Add(n)
				return nil
			}}
			l, err := Open(context.Background(), fstest.NewMemBlob(data), checksum, nil, nil, WithLimits(lim))
			if tt.ok {
				if err != nil {
					t.Fatal(err)
				}
				if reserved.Load() != l.TreeBytes() {
					t.Errorf("reserved %d, tree takes %d", reserved.Load(), l.TreeBytes())
				}
				return
			}
			if !errors.Is(err, ErrLimit) {
				t.Fatalf("Open: %v, want ErrLimit", err)
			}
			if reserved.Load() != 0 {
				t.Errorf("%d bytes still reserved after the refusal", reserved.Load())
			}
		})
	}
}
