package layer

import (
	"archive/tar"
	"bytes"
	"context"
	"io"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/containerd/stargz-snapshotter/estargz"
	digest "github.com/opencontainers/go-digest"

	"github.com/poolfs/poolfs/fs/fstest"
)

// bigLayer is a layer larger than Open's 1 MiB tail read: a few prioritized
// files, then plenty of incompressible data nobody prioritized, so that
// only the prefetch (or a read) can bring the prioritized files in.
type bigLayer struct {
	blob  *fstest.MemBlob
	cache *memCache
	l     *Layer
	files map[string][]byte
}

var (
	prioritizedNames = []string{"app/a", "app/b", "app/c"}
	otherNames       = []string{"data/x", "data/y", "data/z"}
)

type builtBigLayer struct {
	data  []byte
	toc   digest.Digest
	files map[string][]byte
}

// bigLayers caches the built blobs: building them is the slow part.
var bigLayers sync.Map // bool (prioritize) -> *builtBigLayer

func openBigLayer(t *testing.T, prioritize bool, opts ...Option) *bigLayer {
	t.Helper()
	v, ok := bigLayers.Load(prioritize)
	if !ok {
		v, _ = bigLayers.LoadOrStore(prioritize, buildBigLayer(t, prioritize))
	}
	built := v.(*builtBigLayer)
	b := &bigLayer{blob: fstest.NewMemBlob(built.data), cache: newMemCache(), files: built.files}
	l, err := Open(context.Background(), b.blob, built.toc, b.cache, nil, opts...)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	b.l = l
	b.blob.ResetStats()
	return b
}

func buildBigLayer(t *testing.T, prioritize bool) *builtBigLayer {
	t.Helper()
	rng := rand.NewChaCha8([32]byte{1, 2})
	random := func(n int) []byte {
		b := make([]byte, n)
		_, _ = rng.Read(b)
		return b
	}
	files := map[string][]byte{}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, d := range []string{"app/", "data/"} {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: d, Mode: 0o755}); err != nil {
			t.Fatal(err)
		}
	}
	sizes := []int{70 << 10, 150 << 10, 9000, 600 << 10, 700 << 10, 800 << 10}
	for i, name := range append(append([]string{}, prioritizedNames...), otherNames...) {
		files[name] = random(sizes[i])
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644, Size: int64(sizes[i])}); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write(files[name]); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	var opts []estargz.Option
	if prioritize {
		opts = append(opts, estargz.WithPrioritizedFiles(prioritizedNames))
	}
	data, toc := fstest.EStargz(t, buf.Bytes(), append(opts, estargz.WithChunkSize(32<<10))...)
	if len(data) < 2<<20 {
		t.Fatalf("test layer is only %d bytes; it must not fit in Open's tail read", len(data))
	}
	return &builtBigLayer{data: data, toc: toc, files: files}
}

// span is the compressed bytes of a file's chunks that Open's tail did not
// already hold: what reading the file has to fetch.
func (b *bigLayer) span(t *testing.T, name string) int64 {
	tailEnd := b.l.tailStart + int64(len(b.l.tail))
	var n int64
	for _, c := range lookup(t, b.l, name).file().chunks {
		// Bytes Open fetched with the TOC are not fetched again; a chunk
		// straddling the tail's start costs only its part before it.
		end := c.blobEnd
		if len(b.l.tail) > 0 && end <= tailEnd && end > b.l.tailStart {
			end = max(b.l.tailStart, c.blobOff)
		}
		n += end - c.blobOff
	}
	return n
}

func (b *bigLayer) readFile(t *testing.T, name string) {
	t.Helper()
	e := lookup(t, b.l, name)
	got := make([]byte, e.Size)
	n, err := b.l.ReadAt(context.Background(), e, got, 0)
	if err != nil && err != io.EOF {
		t.Fatalf("ReadAt(%s): %v", name, err)
	}
	if !bytes.Equal(got[:n], b.files[name]) {
		t.Fatalf("ReadAt(%s): content differs", name)
	}
}

// checkNoOverlap fails if two blob reads asked for a common byte.
func checkNoOverlap(t *testing.T, reads [][2]int64) {
	t.Helper()
	for i, a := range reads {
		for _, c := range reads[i+1:] {
			if a[0] < c[0]+c[1] && c[0] < a[0]+a[1] {
				t.Errorf("blob ranges [%d, +%d) and [%d, +%d) overlap: a byte was fetched twice", a[0], a[1], c[0], c[1])
			}
		}
	}
}

func TestPrefetchFetchesPrioritizedFilesOnly(t *testing.T) {
	b := openBigLayer(t, true)
	var want int64
	for _, name := range prioritizedNames {
		want += b.span(t, name)
	}
	st, err := b.l.Prefetch(context.Background())
	if err != nil {
		t.Fatalf("Prefetch: %v", err)
	}
	if st.Files != len(prioritizedNames) {
		t.Errorf("Prefetch covered %d files, want %d", st.Files, len(prioritizedNames))
	}
	calls, got := b.blob.Stats()
	if got != want {
		t.Errorf("Prefetch fetched %d bytes in %d requests, want exactly the prioritized files' %d", got, calls, want)
	}
	// 230 KiB in 4 MiB pieces: one request.
	if calls != 1 {
		t.Errorf("Prefetch made %d requests, want 1", calls)
	}
	checkNoOverlap(t, b.blob.Reads())

	b.blob.ResetStats()
	for _, name := range prioritizedNames {
		b.readFile(t, name)
	}
	if calls, n := b.blob.Stats(); calls != 0 {
		t.Errorf("reading prefetched files made %d requests (%d bytes), want none", calls, n)
	}
}

func TestPrefetchWithoutLandmarkFetchesNothing(t *testing.T) {
	b := openBigLayer(t, false)
	st, err := b.l.Prefetch(context.Background())
	if err != nil {
		t.Fatalf("Prefetch: %v", err)
	}
	if calls, n := b.blob.Stats(); calls != 0 || st.Files != 0 {
		t.Errorf("Prefetch without prioritized files: %d files, %d requests, %d bytes; want none", st.Files, calls, n)
	}
}

func TestPrefetchSkipsWhatReadsFetched(t *testing.T) {
	b := openBigLayer(t, true)
	b.readFile(t, prioritizedNames[1])
	_, first := b.blob.Stats()
	if want := b.span(t, prioritizedNames[1]); first != want {
		t.Fatalf("reading %s fetched %d bytes, want %d", prioritizedNames[1], first, want)
	}
	if _, err := b.l.Prefetch(context.Background()); err != nil {
		t.Fatalf("Prefetch: %v", err)
	}
	var want int64
	for _, name := range prioritizedNames {
		want += b.span(t, name)
	}
	if _, got := b.blob.Stats(); got != want {
		t.Errorf("read then Prefetch fetched %d bytes, want %d (each byte once)", got, want)
	}
	checkNoOverlap(t, b.blob.Reads())
}

// Readers and the prefetch at the same time: every byte still crosses the
// network once, and readers get the right content.
func TestPrefetchConcurrentWithReads(t *testing.T) {
	for range 5 {
		b := openBigLayer(t, true)
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := b.l.Prefetch(context.Background()); err != nil {
				t.Errorf("Prefetch: %v", err)
			}
		}()
		for _, name := range append(append([]string{}, prioritizedNames...), otherNames[0]) {
			wg.Add(1)
			go func() {
				defer wg.Done()
				b.readFile(t, name)
			}()
		}
		wg.Wait()
		var want int64
		for _, name := range append(append([]string{}, prioritizedNames...), otherNames[0]) {
			want += b.span(t, name)
		}
		if _, got := b.blob.Stats(); got != want {
			t.Errorf("fetched %d bytes, want %d", got, want)
		}
		checkNoOverlap(t, b.blob.Reads())
	}
}

func TestFetchAllFetchesEachByteOnce(t *testing.T) {
	b := openBigLayer(t, true)
	b.readFile(t, otherNames[1])
	if _, err := b.l.Prefetch(context.Background()); err != nil {
		t.Fatalf("Prefetch: %v", err)
	}
	st, err := b.l.FetchAll(context.Background())
	if err != nil {
		t.Fatalf("FetchAll: %v", err)
	}
	if want := len(prioritizedNames) + len(otherNames); st.Files != want {
		t.Errorf("FetchAll covered %d files, want %d", st.Files, want)
	}
	var want int64
	for _, name := range append(append([]string{}, prioritizedNames...), otherNames...) {
		want += b.span(t, name)
	}
	if _, got := b.blob.Stats(); got != want {
		t.Errorf("read, Prefetch and FetchAll fetched %d bytes, want %d", got, want)
	}
	checkNoOverlap(t, b.blob.Reads())

	b.blob.ResetStats()
	for name := range b.files {
		b.readFile(t, name)
	}
	if calls, _ := b.blob.Stats(); calls != 0 {
		t.Errorf("reads after FetchAll made %d requests, want none", calls)
	}
}

// A reader waiting on a chunk that a long range read is bringing in gets
// it as soon as the chunk's own bytes are in, not when the whole range is:
// the first prefetched file is readable while the rest of the prefetch is
// still on the wire (here: held halfway), and reading it fetches nothing.
func TestChunksLandWhileTheirRangeArrives(t *testing.T) {
	b := openBigLayer(t, true)
	first := lookup(t, b.l, prioritizedNames[0])
	_, firstEnd := b.l.CompressedRange(first)
	_, lastEnd := b.l.CompressedRange(lookup(t, b.l, prioritizedNames[len(prioritizedNames)-1]))

	held, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	b.blob.SetMidway(func(ctx context.Context, off, filled int64) error {
		if off+filled >= firstEnd && off+filled < lastEnd {
			once.Do(func() { close(held) })
			select {
			case <-release:
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		return nil
	})
	done := make(chan error, 1)
	go func() {
		_, err := b.l.Prefetch(context.Background())
		done <- err
	}()
	<-held

	read := make(chan struct{})
	go func() {
		defer close(read)
		b.readFile(t, prioritizedNames[0])
	}()
	select {
	case <-read:
	case err := <-done:
		t.Fatalf("Prefetch ended (%v) while its read was held", err)
	case <-time.After(20 * time.Second):
		t.Fatal("the first prioritized file is not readable while the rest of the prefetch range is held")
	}
	if calls, _ := b.blob.Stats(); calls != 1 {
		t.Errorf("%d blob reads, want only the prefetch's", calls)
	}
	close(release)
	if err := <-done; err != nil {
		t.Fatalf("Prefetch: %v", err)
	}
	for _, name := range prioritizedNames {
		b.readFile(t, name)
	}
	if calls, _ := b.blob.Stats(); calls != 1 {
		t.Errorf("%d blob reads, want only the prefetch's", calls)
	}
}
