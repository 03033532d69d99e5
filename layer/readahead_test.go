package layer

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/containerd/stargz-snapshotter/estargz"

	"github.com/poolfs/poolfs/fs/fstest"
)

// filesLayer is an eStargz layer of n files of 3000 incompressible bytes
// each, stored one after another in name order.
func filesLayer(t *testing.T, n int, opts ...Option) (*Layer, *fstest.MemBlob, map[string][]byte) {
	t.Helper()
	return filesLayerOf(t, n, false, opts...)
}

// filesLayerOf is filesLayer as eStargz, or as zstd:chunked if zstd.
func filesLayerOf(t *testing.T, n int, zstd bool, opts ...Option) (*Layer, *fstest.MemBlob, map[string][]byte) {
	t.Helper()
	noTail(t)
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	want := map[string][]byte{}
	rnd := rand.New(rand.NewPCG(1, 2))
	for i := range n {
		name := fmt.Sprintf("f%02d", i)
		body := make([]byte, 3000)
		for j := range body {
			body[j] = byte(rnd.Uint32())
		}
		want[name] = body
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644, Size: int64(len(body))}); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write(body); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	data, toc := fstest.EStargz(t, buf.Bytes())
	if zstd {
		var ann map[string]string
		data, ann = fstest.ZstdChunked(t, buf.Bytes(), fstest.ZstdChunkedOptions{})
		toc, _, _, _ = ZstdChunkedAnnotations(ann)
		tailSize = 4 << 10 // room for the zstd:chunked footer; the files lie before it

	}
	blob := fstest.NewMemBlob(data)
	l, err := Open(context.Background(), blob, toc, newMemCache(), nil, opts...)
	if err != nil {
		t.Fatal(err)
	}
	return l, blob, want
}

func readFile(t *testing.T, l *Layer, name string, want []byte) {
	t.Helper()
	p := make([]byte, len(want))
	if n, err := l.ReadAt(context.Background(), lookup(t, l, name), p, 0); err != nil || !bytes.Equal(p[:n], want) {
		t.Fatalf("%s: read %d bytes, %v; content right: %v", name, n, err, bytes.Equal(p[:n], want))
	}
}

// waitReadAhead waits until no read-ahead runs in l.
func waitReadAhead(t *testing.T, l *Layer) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); l.readingAhead.Load(); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("read-ahead still running after 10 s")
		}
	}
}

// TestReadAhead: a read that fetches also fetches the files stored after
// it, up to the read-ahead size, so reading them takes no request; with
// read-ahead off each file costs its own.
func TestReadAhead(t *testing.T) {
	for _, tc := range []struct {
		name      string
		readahead int64
		// requests for reading f01..f05 after f00
		wantLater func(n int) bool
		wants     string
	}{
		{"off", 0, func(n int) bool { return n == 5 }, "one per file"},
		{"32 KiB", 32 << 10, func(n int) bool { return n == 0 }, "none"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l, blob, want := filesLayer(t, 40, WithReadahead(tc.readahead))
			blob.ResetStats()
			readFile(t, l, "f00", want["f00"])
			waitReadAhead(t, l)
			first, _ := blob.Stats()
			if tc.readahead > 0 && first != 2 {
				t.Errorf("reading f00 made %d requests, want 2 (its chunk, then read-ahead)", first)
			}
			for i := 1; i <= 5; i++ {
				name := fmt.Sprintf("f%02d", i)
				readFile(t, l, name, want[name])
				waitReadAhead(t, l)
			}
			later, _ := blob.Stats()
			if n := later - first; !tc.wantLater(n) {
				t.Errorf("reading f01..f05 made %d requests, want %s", n, tc.wants)
			}
			checkNoOverlap(t, blob.Reads())
			// Read-ahead stops at its size: the files after it are fetched
			// on demand (and read ahead from there).
			if tc.readahead > 0 {
				blob.ResetStats()
				readFile(t, l, "f30", want["f30"])
				if n, _ := blob.Stats(); n == 0 {
					t.Error("f30, far past the read-ahead, came without a request")
				}
				waitReadAhead(t, l)
			}
		})
	}
}

// TestReadAheadCrossesTarHeaders: in a zstd:chunked blob every file's tar
// header is a frame between the content frames, so no two files' chunks
// touch; read-ahead still fetches the files after a read in one request,
// not one per file, and asks for no byte twice.
func TestReadAheadCrossesTarHeaders(t *testing.T) {
	for _, zstd := range []bool{false, true} {
		t.Run(map[bool]string{false: "estargz", true: "zstd:chunked"}[zstd], func(t *testing.T) {
			l, blob, want := filesLayerOf(t, 40, zstd, WithReadahead(32<<10))
			blob.ResetStats()
			readFile(t, l, "f00", want["f00"])
			waitReadAhead(t, l)
			if n, _ := blob.Stats(); n != 2 {
				t.Errorf("reading f00 made %d requests, want 2 (its chunk, then one read-ahead)", n)
			}
			for i := 1; i <= 5; i++ {
				name := fmt.Sprintf("f%02d", i)
				readFile(t, l, name, want[name])
			}
			if n, _ := blob.Stats(); n != 2 {
				t.Errorf("reading f01..f05 after the read-ahead made %d requests, want none", n-2)
			}
			checkNoOverlap(t, blob.Reads())
		})
	}
}

// TestReadAheadWithConcurrentReads: readers of the files a read-ahead is
// fetching wait for it rather than fetch them again, and all get the
// right bytes.
func TestReadAheadWithConcurrentReads(t *testing.T) {
	l, blob, want := filesLayer(t, 40, WithReadahead(64<<10))
	_, f00 := l.CompressedRange(lookup(t, l, "f00"))
	// Hold the read-ahead (any request past f00) until readers wait on it.
	release := make(chan struct{})
	blob.SetHook(func(ctx context.Context, off, n int64) error {
		if off >= f00 {
			select {
			case <-release:
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		return nil
	})
	blob.ResetStats()
	readFile(t, l, "f00", want["f00"])
	var wg sync.WaitGroup
	for i := 1; i <= 10; i++ {
		name := fmt.Sprintf("f%02d", i)
		wg.Go(func() { readFile(t, l, name, want[name]) })
	}
	time.Sleep(50 * time.Millisecond)
	close(release)
	wg.Wait()
	waitReadAhead(t, l)
	if calls, _ := blob.Stats(); calls != 2 {
		t.Errorf("%d requests for 11 files, want 2 (f00, then the read-ahead the others waited for)", calls)
	}
	checkNoOverlap(t, blob.Reads())
}

// TestReadAheadBudget: read-ahead never fetches past its size, not even
// one chunk that starts within it but ends beyond.
func TestReadAheadBudget(t *testing.T) {
	l, _, _ := filesLayer(t, 40)
	_, f00 := l.CompressedRange(lookup(t, l, "f00"))
	for _, n := range []int64{0, 100, 3153, 3154, 20000, 1 << 20} {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			got := l.chunksAfter(f00, n)
			var end int64 = f00
			for _, c := range got {
				if c.blobOff < f00 || c.blobEnd-f00 > n {
					t.Errorf("chunk [%d,%d) outside [%d,+%d)", c.blobOff, c.blobEnd, f00, n)
				}
				end = max(end, c.blobEnd)
			}
			// Whatever comes next would not have fit.
			if next := l.chunksAfter(end, 1<<40); len(next) > 0 && next[0].blobEnd-f00 <= n {
				t.Errorf("stopped at %d though the chunk [%d,%d) fits", end, next[0].blobOff, next[0].blobEnd)
			}
		})
	}
}

// TestReadAheadSameDir: with WithReadaheadSameDir, read-ahead in a layer
// with no prioritized files takes the files after the read's in its own
// directory and stops at the next directory's, however much of its size
// is left; in an optimized layer it reads ahead across directories.
func TestReadAheadSameDir(t *testing.T) {
	var files []elfLayerFile
	rnd := rand.New(rand.NewPCG(3, 4))
	for _, d := range []string{"a", "b"} {
		for i := range 4 {
			body := make([]byte, 3000)
			for j := range body {
				body[j] = byte(rnd.Uint32())
			}
			files = append(files, elfLayerFile{name: fmt.Sprintf("%s/f%d", d, i), data: body})
		}
	}
	for _, tc := range []struct {
		name        string
		sameDir     int64
		prioritized bool
		wantOther   bool // b/* read ahead
	}{
		{"off", 0, false, true},
		{"on", 1 << 20, false, false},
		{"on, optimized layer", 1 << 20, true, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var build []estargz.Option
			if tc.prioritized {
				build = append(build, estargz.WithPrioritizedFiles([]string{"a/f0"}))
			}
			l, blob, content := elfLayerBuilt(t, files, build, WithReadaheadSameDir(tc.sameDir), WithReadahead(1<<20))
			blob.ResetStats()
			readFile(t, l, "a/f1", content["a/f1"])
			waitReadAhead(t, l)
			got := filesRead(t, l, blob, content)
			want := map[string]bool{"a/f1": true, "a/f2": true, "a/f3": true}
			if tc.wantOther {
				for i := range 4 {
					want[fmt.Sprintf("b/f%d", i)] = true
				}
			}
			if fmt.Sprint(got) != fmt.Sprint(want) {
				t.Errorf("fetched %v, want %v", got, want)
			}
		})
	}
}

// TestReadAheadSameDirGrows: same-directory read-ahead takes a quarter of
// its size until a read asks for a chunk the latest read-ahead fetched,
// then all of it; reads that find nothing read ahead leave it as it is.
func TestReadAheadSameDirGrows(t *testing.T) {
	// 40 files of ~3.15 KB compressed each, one directory: 8 KiB hold 2,
	// 32 KiB 10.
	l, blob, content := filesLayer(t, 40, WithReadahead(1<<20), WithReadaheadSameDir(32<<10))
	step := func(name string, wantAhead int) {
		t.Helper()
		blob.ResetStats()
		readFile(t, l, name, content[name])
		waitReadAhead(t, l)
		got := filesRead(t, l, blob, content)
		delete(got, name)
		if len(got) != wantAhead {
			t.Errorf("reading %s read %d files ahead (%v), want %d", name, len(got), got, wantAhead)
		}
	}
	step("f00", 2)  // the first window: 8 KiB
	step("f10", 2)  // f01 and f02 were never read: still 8 KiB
	step("f11", 0)  // read ahead: a hit, the window is 32 KiB from now on
	step("f20", 10) // f21-f30
	step("f02", 0)  // read ahead by the first read
	step("f35", 4)  // all that is left
	step("f05", 7)  // f06-f15 less the cached f10-f12, as two runs
}
