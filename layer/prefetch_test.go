package layer

import (
	"context"
	"testing"

	"github.com/containerd/stargz-snapshotter/estargz"

	"github.com/poolfs/poolfs/fs/fstest"
)

func TestPrioritized(t *testing.T) {
	tests := []struct {
		name string
		opts []estargz.Option
		want []string
	}{
		{"no prioritized files", nil, nil},
		// A hard link drags its target along; directories are not listed.
		{"prioritized", []estargz.Option{estargz.WithPrioritizedFiles([]string{"etc/passwd", fstest.SampleHardLink, fstest.SampleBigFile})},
			[]string{"etc/passwd", fstest.SampleLinkedTo, fstest.SampleBigFile}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := openSample(t, tt.opts...)
			var got []string
			for _, e := range s.l.Prioritized() {
				got = append(got, e.Path())
			}
			if len(got) != len(tt.want) {
				t.Fatalf("Prioritized = %q, want %q", got, tt.want)
			}
			for i := range got {
				if got[i] != tt.want[i] {
					t.Errorf("Prioritized = %q, want %q", got, tt.want)
				}
			}
		})
	}
}

func TestCompressedRangeNonFiles(t *testing.T) {
	s := openSample(t)
	for _, p := range []string{"", "bin", "lib", "dev/null", "empty"} {
		if start, end := s.l.CompressedRange(lookup(t, s.l, p)); start != 0 || end != 0 {
			t.Errorf("CompressedRange(%q) = [%d, %d), want [0, 0)", p, start, end)
		}
	}
	if start, end := s.l.CompressedRange(nil); start != 0 || end != 0 {
		t.Error("CompressedRange(nil) is not empty")
	}
}

// TestPrioritizedHead: the head covers every prioritized chunk, which a
// builder puts first, and no chunk of another file.
func TestPrioritizedHead(t *testing.T) {
	tests := []struct {
		name        string
		opts        []estargz.Option
		prioritized bool
	}{
		{"no prioritized files", nil, false},
		{"prioritized", []estargz.Option{estargz.WithPrioritizedFiles([]string{"etc/passwd", fstest.SampleBigFile})}, true},
		{"prioritized hard link", []estargz.Option{estargz.WithPrioritizedFiles([]string{fstest.SampleHardLink})}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := openSample(t, tt.opts...)
			end := s.l.PrioritizedHead()
			if !tt.prioritized {
				if end != 0 {
					t.Fatalf("PrioritizedHead = %d with nothing prioritized", end)
				}
				return
			}
			inHead := map[*Entry]bool{}
			for _, e := range s.l.Prioritized() {
				inHead[e] = true
				if _, fend := e.file().span(); fend > end {
					t.Errorf("%s ends at %d, past the head's %d", e.Path(), fend, end)
				}
			}
			for _, e := range s.l.contentFiles() {
				if start, _ := e.file().span(); !inHead[e] && start < end {
					t.Errorf("%s (not prioritized) starts at %d, inside the head [0, %d)", e.Path(), start, end)
				}
			}
		})
	}
}

func TestSaysNoPrefetch(t *testing.T) {
	tarBytes := fstest.SampleTar(t)
	plain, _ := fstest.EStargz(t, tarBytes)
	optimized, _ := fstest.EStargz(t, tarBytes, estargz.WithPrioritizedFiles([]string{"etc/passwd"}))
	zstdChunked, _ := fstest.ZstdChunked(t, tarBytes, fstest.ZstdChunkedOptions{})
	tests := []struct {
		name string
		head []byte
		want bool
	}{
		{"unoptimized eStargz", plain[:4096], true},
		{"unoptimized, just its first member", plain[:200], true},
		{"optimized eStargz", optimized[:4096], false},
		{"zstd:chunked (no prioritized files)", zstdChunked[:4096], true},
		{"too short to tell", plain[:20], false},
		{"not gzip", []byte("\x00\x01 not a gzip stream at all"), false},
		{"nothing", nil, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := SaysNoPrefetch(tt.head); got != tt.want {
				t.Errorf("SaysNoPrefetch = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestTailStart(t *testing.T) {
	for _, tt := range []struct{ size, want int64 }{
		{0, 0}, {100, 0}, {tailSize, 0}, {tailSize + 1, 1}, {10 * tailSize, 9 * tailSize},
	} {
		if got := TailStart(tt.size); got != tt.want {
			t.Errorf("TailStart(%d) = %d, want %d", tt.size, got, tt.want)
		}
	}
}

// tailWatcher counts TailRead calls and the blob reads made before them.
type tailWatcher struct {
	*fstest.MemBlob
	calls, readsBefore int
}

func (w *tailWatcher) TailRead() {
	w.calls++
	w.readsBefore, _ = w.Stats()
}

// TestOpenTellsTailRead: Open says once that it has the TOC's bytes, after
// its last read of the blob, for both a TOC inside the tail window and one
// that needs a second read.
func TestOpenTellsTailRead(t *testing.T) {
	for _, tt := range []struct {
		name  string
		tail  int64
		reads int
	}{
		{"TOC in the tail", 1 << 20, 1},
		{"TOC larger than the tail", 64, 2},
	} {
		t.Run(tt.name, func(t *testing.T) {
			defer func(old int64) { tailSize = old }(tailSize)
			tailSize = tt.tail
			data, toc := fstest.EStargz(t, fstest.SampleTar(t))
			w := &tailWatcher{MemBlob: fstest.NewMemBlob(data)}
			if _, err := Open(context.Background(), w, toc, nil, nil); err != nil {
				t.Fatal(err)
			}
			if reads, _ := w.Stats(); w.calls != 1 || w.readsBefore != tt.reads || reads != tt.reads {
				t.Errorf("TailRead called %d times after %d reads; Open made %d reads, want %d", w.calls, w.readsBefore, reads, tt.reads)
			}
		})
	}
}
