package layer

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"testing"

	"github.com/containerd/stargz-snapshotter/estargz"
	digest "github.com/opencontainers/go-digest"

	"github.com/poolfs/poolfs/fs/fstest"
)

// buildOptions are the eStargz layouts the view must not depend on.
var buildOptions = []struct {
	name string
	opts []estargz.Option
}{
	{"sequential", []estargz.Option{estargz.WithParallelism(1)}},
	// Parallel builds start gzip members at part boundaries that hold only
	// tar headers, so chunk ranges span members.
	{"parallel", []estargz.Option{estargz.WithParallelism(4)}},
	// MinChunkSize packs several files into one gzip member (innerOffset).
	{"min-chunk-size", []estargz.Option{estargz.WithMinChunkSize(16384)}},
	{"prioritized", []estargz.Option{estargz.WithPrioritizedFiles([]string{"bin/sh", "etc/passwd", fstest.SampleBigFile})}},
	{"gzip-level-0", []estargz.Option{estargz.WithCompressionLevel(gzip.NoCompression)}},
}

func TestViewMatchesTar(t *testing.T) {
	for _, bo := range buildOptions {
		t.Run(bo.name, func(t *testing.T) {
			s := openSample(t, bo.opts...)
			want, err := fstest.TarView(s.tar)
			if err != nil {
				t.Fatal(err)
			}

			// The metadata alone must come from Open's fetch: walking the
			// view touches the blob not at all.
			callsAfterOpen, _ := s.blob.Stats()
			meta := viewOf(t, s.l, false)
			if calls, _ := s.blob.Stats(); calls != callsAfterOpen {
				t.Errorf("walking the view made %d blob reads", calls-callsAfterOpen)
			}
			for p, e := range meta {
				if e.Type == "reg" {
					e.SHA256 = want[p].SHA256 // contents are checked below
				}
			}
			for _, d := range fstest.Diff(want, meta) {
				t.Errorf("metadata: %s", d)
			}

			got := viewOf(t, s.l, true)
			for _, d := range fstest.Diff(want, got) {
				t.Error(d)
			}
			t.Logf("compared %d entries", len(want))
		})
	}
}

func TestViewDetails(t *testing.T) {
	s := openSample(t)
	l := s.l

	root := l.Root()
	if root.Mode != 0o751 || root.ModTime().Unix() != 1600000000 || root.Name() != "" || root.Path() != "" {
		t.Errorf("root: mode %o mtime %v name %q path %q", root.Mode, root.ModTime(), root.Name(), root.Path())
	}
	for _, hidden := range []string{estargz.PrefetchLandmark, estargz.NoPrefetchLandmark, "etc/.wh.removed", "opq/.wh..wh..opq"} {
		if root.Child(hidden) != nil {
			t.Errorf("%s is visible", hidden)
		}
	}

	sh := lookup(t, l, fstest.SampleLinkedTo)
	if lookup(t, l, fstest.SampleHardLink) != sh || lookup(t, l, "bin/sh2") != sh {
		t.Error("hard links do not share one *Entry")
	}
	if sh.NLink != 3 || sh.Path() != fstest.SampleLinkedTo {
		t.Errorf("bin/sh: nlink %d path %q, want 3 %q", sh.NLink, sh.Path(), fstest.SampleLinkedTo)
	}

	wo := lookup(t, l, "etc/removed")
	if wo.Type != TypeChar || wo.DevMajor() != 0 || wo.DevMinor() != 0 || wo.Mode != 0 {
		t.Errorf("whiteout: %+v", wo)
	}
	if gone := lookup(t, l, "implicit-wo/gone"); gone.UID != 7 || gone.GID != 8 || gone.Mode != 0o600 {
		t.Errorf("whiteout in implicit dir: %+v", gone)
	}
	if p := lookup(t, l, "etc/passwd"); p.Type != TypeReg {
		t.Errorf("etc/passwd was replaced by its whiteout: %+v", p)
	}
	opq := lookup(t, l, "opq")
	for _, k := range []string{"trusted.overlay.opaque", "user.overlay.opaque"} {
		if string(opq.Xattrs()[k]) != "y" {
			t.Errorf("opq: %s=%q", k, opq.Xattrs()[k])
		}
	}

	impl := lookup(t, l, "implicit/a")
	if impl.Type != TypeDir || impl.Mode != 0o755 || impl.UID != 0 || impl.ModTime().Unix() != 0 || impl.NLink != 3 {
		t.Errorf("implicit dir: %+v", impl)
	}
	if old := lookup(t, l, "old"); old.ModTime().Unix() != 0 {
		t.Errorf("mtime 0 became %v", old.ModTime())
	}
	if f := lookup(t, l, "future"); f.ModTime().Year() != 2200 {
		t.Errorf("year 2200 became %v", f.ModTime())
	}
	if x := lookup(t, l, fstest.SampleXattrFile); !bytes.Equal(x.Xattrs()["user.bin"], []byte{0, 1, 0xfe, 0xff}) {
		t.Errorf("binary xattr: %q", x.Xattrs()["user.bin"])
	}
	etc := lookup(t, l, "etc")
	for i := 1; i < etc.NumChildren(); i++ {
		if a, _ := etc.ChildAt(i - 1); a >= func() string { b, _ := etc.ChildAt(i); return b }() {
			t.Errorf("etc names not sorted at %d: %q", i, a)
		}
	}
	if l.TOCDigest() != s.toc {
		t.Errorf("TOCDigest %s, want %s", l.TOCDigest(), s.toc)
	}
}

func TestOpenFetchesTailOnce(t *testing.T) {
	s := openSample(t)
	reads := s.blob.Reads()
	size := s.blob.Size()
	want := min(size, tailSize)
	if len(reads) != 1 || reads[0] != [2]int64{size - want, want} {
		t.Errorf("Open read %v, want one read of the last %d bytes", reads, want)
	}
}

// A TOC bigger than the tail window takes exactly one more read, of the
// part the tail did not cover.
func TestOpenLargeTOC(t *testing.T) {
	toc := estargz.JTOC{Version: 1}
	for i := 0; i < 40000; i++ {
		name := make([]byte, 32)
		rand.Read(name)
		toc.Entries = append(toc.Entries, &estargz.TOCEntry{Name: hex.EncodeToString(name), Type: "dir", Mode: 0o755})
	}
	tocJSON, err := json.Marshal(toc)
	if err != nil {
		t.Fatal(err)
	}
	payload := make([]byte, 100)
	data := makeBlob(t, payload, tocJSON)
	tocOff := int64(len(payload))
	widenSmall = false // this small blob's window is the tail's alone
	t.Cleanup(func() { widenSmall = true })
	if int64(len(data))-tocOff < tailSize {
		t.Fatalf("compressed TOC of %d bytes fits the tail; make it bigger", int64(len(data))-tocOff)
	}
	blob := fstest.NewMemBlob(data)
	l, err := Open(context.Background(), blob, digest.FromBytes(tocJSON), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	size := int64(len(data))
	want := [][2]int64{{size - tailSize, tailSize}, {tocOff, size - tailSize - tocOff}}
	if got := blob.Reads(); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("reads %v, want %v", got, want)
	}
	if n := l.Root().NumChildren(); n != 40000 {
		t.Errorf("%d root entries, want 40000", n)
	}
}

func TestOpenErrors(t *testing.T) {
	sampleTar := fstest.SampleTar(t)
	data, toc := fstest.EStargz(t, sampleTar)
	var plainGzip bytes.Buffer
	zw := gzip.NewWriter(&plainGzip)
	zw.Write(sampleTar)
	zw.Close()
	var emptyTar bytes.Buffer
	tar.NewWriter(&emptyTar).Close()

	tests := []struct {
		name string
		blob []byte
		toc  digest.Digest
		want error
	}{
		{"wrong TOC digest", data, digest.FromString("not the TOC"), ErrVerify},
		{"plain gzip layer", plainGzip.Bytes(), "", ErrNoFormat},
		{"plain gzip layer with TOC digest", plainGzip.Bytes(), toc, ErrNoFormat},
		{"uncompressed tar", sampleTar, "", ErrNoFormat},
		{"empty tar", emptyTar.Bytes(), "", ErrNoFormat},
		{"tiny blob", []byte("hello"), "", ErrNoFormat},
		{"empty blob", nil, "", ErrNoFormat},
		{"truncated blob", data[:len(data)-10], "", ErrNoFormat},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Open(context.Background(), fstest.NewMemBlob(tt.blob), tt.toc, nil, nil)
			if !errors.Is(err, tt.want) {
				t.Errorf("Open: %v, want %v", err, tt.want)
			}
		})
	}
}

func TestOpenWithoutTOCDigest(t *testing.T) {
	data, toc := fstest.EStargz(t, fstest.SampleTar(t))
	l, err := Open(context.Background(), fstest.NewMemBlob(data), "", nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if l.TOCDigest() != toc {
		t.Errorf("TOCDigest %s, want %s", l.TOCDigest(), toc)
	}
}

func TestOpenBlobError(t *testing.T) {
	blob := fstest.NewMemBlob(make([]byte, 100))
	boom := errors.New("registry down")
	blob.SetHook(func(context.Context, int64, int64) error { return boom })
	if _, err := Open(context.Background(), blob, "", nil, nil); !errors.Is(err, boom) {
		t.Errorf("Open: %v, want %v", err, boom)
	}
}
