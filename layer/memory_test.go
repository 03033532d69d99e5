package layer

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/poolfs/poolfs/fs/fstest"
)

// liveHeap is the heap still reachable after a collection.
func liveHeap() uint64 {
	runtime.GC() // twice: sync.Pools keep their victims for one cycle
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

// peakLive samples the live heap while f runs and returns its peak.
func peakLive(f func()) uint64 {
	var peak atomic.Uint64
	stop, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		for {
			if h := liveHeap(); h > peak.Load() {
				peak.Store(h)
			}
			select {
			case <-stop:
				return
			case <-time.After(5 * time.Millisecond):
			}
		}
	}()
	f()
	close(stop)
	<-done
	return peak.Load()
}

// TestTreeBytesPerEntry measures what a tree of tiny entries costs, kept
// and while it is built, and holds TreeBytes to the measured figure:
// these are the numbers docs/security.md quotes.
func TestTreeBytesPerEntry(t *testing.T) {
	if raceDetector {
		t.Skip("heap measurements mean nothing under the race detector (make test runs this without it)")
	}
	const n = 200_000
	blob, toc, err := fstest.ManyEntries{Entries: n, Dirs: 100}.Build()
	if err != nil {
		t.Fatal(err)
	}
	mb := fstest.NewMemBlob(blob)
	before := liveHeap()
	var l *Layer
	peak := peakLive(func() {
		l, err = Open(context.Background(), mb, toc, nil, nil)
	})
	if err != nil {
		t.Fatal(err)
	}
	kept := liveHeap() - before
	perEntry := float64(kept) / n
	t.Logf("%d entries (names of 5-8 bytes): %.0f bytes/entry kept (TreeBytes says %.0f), %.0f at the peak of the build",
		n, perEntry, float64(l.TreeBytes())/n, float64(peak-before)/n)
	if perEntry > 100 {
		t.Errorf("a tiny entry costs %.0f bytes, want at most 100", perEntry)
	}
	if tb := l.TreeBytes(); float64(tb) < 0.8*float64(kept) || float64(tb) > 1.5*float64(kept) {
		t.Errorf("TreeBytes %d, measured %d", tb, kept)
	}
	runtime.KeepAlive(l)
}

// A TOC over the entries limit, or whose tree would not fit what Reserve
// grants, is refused with ErrLimit, having reserved nothing in the end.
func TestLimits(t *testing.T) {
	blob, toc, err := fstest.ManyEntries{Entries: 50_000, Dirs: 10}.Build()
	if err != nil {
		t.Fatal(err)
	}
	var reserved atomic.Int64
	reserve := func(max int64) func(int64) error {
		return func(n int64) error {
			if n > 0 && reserved.Load()+n > max {
				return ErrLimit
			}
			reserved.Add(n)
			return nil
		}
	}
	for _, tt := range []struct {
		name string
		lim  Limits
		ok   bool
	}{
		{"entries", Limits{MaxEntries: 49_999}, false},
		{"entries just enough", Limits{MaxEntries: 50_000}, true},
		{"memory", Limits{Reserve: reserve(1 << 20)}, false},
		{"memory enough", Limits{Reserve: reserve(64 << 20)}, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			reserved.Store(0)
			mb := fstest.NewMemBlob(blob)
			l, err := Open(context.Background(), mb, toc, nil, nil, WithLimits(tt.lim))
			if tt.ok {
				if err != nil {
					t.Fatal(err)
				}
				if tt.lim.Reserve != nil && reserved.Load() != l.TreeBytes() {
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
			if calls, _ := mb.Stats(); calls != 1 {
				t.Errorf("refused layer read %d times; a limit is no reason to fetch again", calls)
			}
		})
	}
}

// TestTreeBytesPerFile measures the same for files like a real layer's:
// paths of a few directories, each file with content, so a chunk and its
// digest.
func TestTreeBytesPerFile(t *testing.T) {
	if raceDetector {
		t.Skip("heap measurements mean nothing under the race detector (make test runs this without it)")
	}
	const n = 10_000
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for d := 0; d < 100; d++ {
		tw.WriteHeader(&tar.Header{Name: fmt.Sprintf("usr/lib/python3.11/site-packages/pkg%02d/", d), Typeflag: tar.TypeDir, Mode: 0o755})
	}
	for i := 0; i < n; i++ {
		body := []byte(fmt.Sprintf("# module %d\n", i))
		tw.WriteHeader(&tar.Header{Name: fmt.Sprintf("usr/lib/python3.11/site-packages/pkg%02d/module_%05d.py", i%100, i),
			Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(body))})
		tw.Write(body)
	}
	tw.Close()
	data, toc := fstest.EStargz(t, buf.Bytes())
	mb := fstest.NewMemBlob(data)
	before := liveHeap()
	l, err := Open(context.Background(), mb, toc, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	// The blob's tail, fetched with the TOC, is kept beside the tree (at
	// most 1 MiB a layer; here, the whole payload).
	kept := int64(liveHeap()) - int64(before) - int64(len(l.tail))
	t.Logf("%d files of one chunk (names of 15 bytes): %.0f bytes/entry kept besides the tail (TreeBytes says %.0f)",
		n, float64(kept)/float64(l.Entries()), float64(l.TreeBytes())/float64(l.Entries()))
	if per := float64(kept) / float64(l.Entries()); per > 260 {
		t.Errorf("a file costs %.0f bytes, want at most 260", per)
	}
	runtime.KeepAlive(l)
	runtime.KeepAlive(mb)
	runtime.KeepAlive(buf.Bytes())
	runtime.KeepAlive(data)
}
