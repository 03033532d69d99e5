package layer

import (
	"bytes"
	"context"
	_ "crypto/sha512" // so that TOCs may name sha512 digests, as in the daemon (TLS links it in)
	"errors"
	"io"
	"os"
	"sync"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"
	"github.com/sirupsen/logrus"
	logtest "github.com/sirupsen/logrus/hooks/test"

	"github.com/poolfs/poolfs/cache"
	"github.com/poolfs/poolfs/fs/fstest"
)

// eventually polls cond for up to 10 s.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// readEntry reads e entirely through ReadAt, filling the layer's cache.
func readEntry(t *testing.T, l *Layer, e *Entry) []byte {
	t.Helper()
	b := make([]byte, e.Size)
	if n, err := l.ReadAt(context.Background(), e, b, 0); err != nil && !(errors.Is(err, io.EOF) && n == len(b)) {
		t.Fatalf("reading %q: %v", e.Path(), err)
	}
	return b
}

func diskStore(t *testing.T) *cache.Disk {
	t.Helper()
	d, err := cache.NewDisk(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func TestEntryDigest(t *testing.T) {
	s := openSample(t)
	big := fstest.TarFile(t, s.tar, fstest.SampleBigFile)
	h := newHandmade(t)
	entries := h.baseTOC()
	entries[1].Digest = "sha512:" + string(bytes.Repeat([]byte("ab"), 64)) // a/f: another algorithm
	toc := tocJSON(t, entries)
	hl, err := Open(context.Background(), fstest.NewMemBlob(makeBlob(t, h.payload, toc)), "", nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		e    *Entry
		want digest.Digest
	}{
		{"multi-chunk file", lookup(t, s.l, fstest.SampleBigFile), digest.FromBytes(big)},
		{"hard link shares it", lookup(t, s.l, fstest.SampleHardLink), lookup(t, s.l, fstest.SampleLinkedTo).Digest()},
		{"empty file", lookup(t, s.l, "empty"), ""},
		{"directory", lookup(t, s.l, "etc"), ""},
		{"symlink", lookup(t, s.l, "abs"), ""},
		{"no file digest in the TOC", lookup(t, hl, "m"), ""},
		{"sha512 file digest", lookup(t, hl, "a/f"), ""},
		{"one-chunk file", lookup(t, hl, "b"), digest.FromString("second")},
		{"nil", nil, ""},
	}
	for _, tt := range tests {
		if got := tt.e.Digest(); got != tt.want {
			t.Errorf("%s: Digest() = %q, want %q", tt.name, got, tt.want)
		}
	}
	if tests[1].want == "" {
		t.Error("test setup: the hard-linked file has no digest")
	}
}

func TestChunksCached(t *testing.T) {
	s := openSample(t)
	e := lookup(t, s.l, fstest.SampleBigFile)
	if s.l.ChunksCached(e) {
		t.Fatal("ChunksCached before any read")
	}
	// A partial read caches some chunks only.
	p := make([]byte, 5000)
	if _, err := s.l.ReadAt(context.Background(), e, p, 0); err != nil {
		t.Fatal(err)
	}
	if s.l.ChunksCached(e) {
		t.Error("ChunksCached after reading the first chunks only")
	}
	readEntry(t, s.l, e)
	if !s.l.ChunksCached(e) {
		t.Error("ChunksCached false after reading the whole file")
	}
	// Asking reads nothing.
	s.blob.ResetStats()
	adds := func() int {
		s.cache.mu.Lock()
		defer s.cache.mu.Unlock()
		return s.cache.adds
	}
	before := adds()
	for range 3 {
		s.l.ChunksCached(e)
	}
	if c, _ := s.blob.Stats(); c != 0 || adds() != before {
		t.Errorf("ChunksCached read the blob (%d calls) or filled the cache", c)
	}
	// Not a regular file, or a cache that cannot peek: false.
	if s.l.ChunksCached(lookup(t, s.l, "etc")) {
		t.Error("ChunksCached of a directory")
	}
	noPeek, err := Open(context.Background(), s.blob, s.toc, getOnly{s.cache}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if noPeek.ChunksCached(lookup(t, noPeek, fstest.SampleBigFile)) {
		t.Error("ChunksCached true with a cache that cannot peek")
	}
}

// getOnly hides memCache's Has.
type getOnly struct{ c *memCache }

func (g getOnly) Get(k string) ([]byte, bool) { return g.c.Get(k) }
func (g getOnly) Add(k string, b []byte)      { g.c.Add(k, b) }

// A file read entirely gets its whole-file copy, with exactly its bytes,
// and OpenWhole serves it; before the read, nothing is copied.
func TestMaterializeWhole(t *testing.T) {
	s := openSample(t)
	store := diskStore(t)
	w := NewWholeFiles(context.Background(), store, WholeOptions{MinSize: 1, Quiet: -1})
	defer w.Close()
	s.l.setWholeFiles(w)
	e := lookup(t, s.l, fstest.SampleBigFile)

	s.l.MaterializeWhole(e) // nothing cached yet: ignored
	eventually(t, "the request to be dropped", func() bool { return w.idle() })
	if store.HasWhole(string(e.Digest())) {
		t.Fatal("copy written before the file was read")
	}
	if _, ok := s.l.OpenWhole(e); ok {
		t.Fatal("OpenWhole found a copy before one was written")
	}

	want := readEntry(t, s.l, e)
	s.blob.ResetStats()
	s.l.MaterializeWhole(e)
	eventually(t, "the whole-file copy", func() bool { return store.HasWhole(string(e.Digest())) })
	f, ok := s.l.OpenWhole(e)
	if !ok {
		t.Fatal("OpenWhole: no copy")
	}
	defer f.Close()
	got, err := io.ReadAll(f)
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("copy holds %d bytes (%v), want the file's %d", len(got), err, len(want))
	}
	if c, _ := s.blob.Stats(); c != 0 {
		t.Errorf("the copy made %d blob reads; its chunks were cached", c)
	}
	if st := w.Stats(); st.Written != 1 || st.Mismatches != 0 || st.Failures != 0 {
		t.Errorf("Stats %+v", st)
	}
	// The same content through another name (a hard link, or another
	// layer) finds the same copy.
	s2 := openSample(t)
	s2.l.setWholeFiles(w)
	if f2, ok := s2.l.OpenWhole(lookup(t, s2.l, fstest.SampleBigFile)); !ok {
		t.Error("another layer with the same file does not find the copy")
	} else {
		f2.Close()
	}
}

// Files that are too small, empty, not regular or without a sha256 file
// digest are never copied.
func TestMaterializeWholeSkips(t *testing.T) {
	h := newHandmade(t)
	toc := tocJSON(t, h.baseTOC())
	c := newMemCache()
	l, err := Open(context.Background(), fstest.NewMemBlob(makeBlob(t, h.payload, toc)), "", c, nil)
	if err != nil {
		t.Fatal(err)
	}
	s := openSample(t)
	store := &fakeStore{}
	w := NewWholeFiles(context.Background(), store, WholeOptions{MinSize: 8, Quiet: -1})
	l.setWholeFiles(w)
	s.l.setWholeFiles(w)
	tests := []struct {
		name string
		l    *Layer
		e    *Entry
	}{
		{"below the minimum size", l, lookup(t, l, "b")}, // 6 bytes
		{"no file digest", l, lookup(t, l, "m")},
		{"empty", s.l, lookup(t, s.l, "empty")},
		{"directory", s.l, lookup(t, s.l, "etc")},
		{"nil", s.l, nil},
	}
	for _, tt := range tests {
		if tt.e != nil && tt.e.Type == TypeReg && tt.e.Size > 0 {
			readEntry(t, tt.l, tt.e)
		}
		tt.l.MaterializeWhole(tt.e)
	}
	w.Close()
	if store.adds() != 0 {
		t.Errorf("%d copies written, want none", store.adds())
	}
	// Without whole files nothing happens at all.
	plain := openSample(t)
	e := lookup(t, plain.l, fstest.SampleBigFile)
	readEntry(t, plain.l, e)
	plain.l.MaterializeWhole(e)
	if _, ok := plain.l.OpenWhole(e); ok {
		t.Error("OpenWhole without whole files")
	}
}

// However often and from however many goroutines a file is asked for, its
// copy is written once, and copies are written one at a time.
func TestMaterializeWholeOnceAndOneAtATime(t *testing.T) {
	s := openSample(t)
	store := &fakeStore{block: make(chan struct{})}
	w := NewWholeFiles(context.Background(), store, WholeOptions{MinSize: 1, Quiet: -1})
	defer w.Close()
	s.l.setWholeFiles(w)
	files := []*Entry{lookup(t, s.l, fstest.SampleBigFile), lookup(t, s.l, fstest.SampleZeroFile), lookup(t, s.l, fstest.SampleLinkedTo)}
	for _, e := range files {
		readEntry(t, s.l, e)
	}
	var wg sync.WaitGroup
	for range 20 {
		for _, e := range files {
			wg.Add(1)
			go func() {
				defer wg.Done()
				s.l.MaterializeWhole(e)
			}()
		}
	}
	wg.Wait()
	eventually(t, "the first copy to start", func() bool { return store.running() == 1 })
	time.Sleep(50 * time.Millisecond) // a second copy would start now
	if n := store.running(); n != 1 {
		t.Errorf("%d copies in progress, want 1", n)
	}
	close(store.block)
	eventually(t, "all copies", func() bool { return store.adds() == len(files) })
	// Asked again once stored: nothing more.
	for _, e := range files {
		s.l.MaterializeWhole(e)
	}
	w.Close()
	if n, max := store.adds(), store.maxRunning(); n != len(files) || max != 1 {
		t.Errorf("%d copies written (want %d), %d at once at most (want 1)", n, len(files), max)
	}
	for _, e := range files {
		if got, want := store.content(e.Digest()), readEntry(t, s.l, e); !bytes.Equal(got, want) {
			t.Errorf("%s: copy of %d bytes differs from the file's %d", e.Path(), len(got), len(want))
		}
	}
}

// A file whose verified chunks do not hash to the TOC's file digest never
// gets a copy, is warned about once, and is not tried again.
func TestMaterializeWholeMismatch(t *testing.T) {
	h := newHandmade(t)
	entries := h.baseTOC()
	entries[3].Digest = sha("9876543210") // m is "0123456789"
	toc := tocJSON(t, entries)
	logger, hook := logtest.NewNullLogger()
	l, err := Open(context.Background(), fstest.NewMemBlob(makeBlob(t, h.payload, toc)), "", newMemCache(), logrus.NewEntry(logger))
	if err != nil {
		t.Fatal(err)
	}
	store := diskStore(t)
	w := NewWholeFiles(context.Background(), store, WholeOptions{MinSize: 1, Quiet: -1})
	l.setWholeFiles(w)
	e := lookup(t, l, "m")
	if got := readEntry(t, l, e); string(got) != "0123456789" {
		t.Fatalf("read %q", got)
	}
	l.MaterializeWhole(e)
	eventually(t, "the copy to fail", func() bool { return w.Stats().Mismatches == 1 })
	l.MaterializeWhole(e)
	w.Close()
	if st := w.Stats(); st.Mismatches != 1 || st.Written != 0 {
		t.Errorf("Stats %+v, want one mismatch and nothing written", st)
	}
	if store.HasWhole(string(e.Digest())) || store.Size() != 0 {
		t.Error("a mismatching copy was stored")
	}
	warned := 0
	for _, en := range hook.AllEntries() {
		if en.Level == logrus.WarnLevel {
			warned++
			if en.Data["path"] != "m" || en.Data["file_digest"] != e.Digest() {
				t.Errorf("warning lacks path or digest: %v", en.Data)
			}
		}
	}
	if warned != 1 {
		t.Errorf("%d warnings, want 1", warned)
	}
}

// A copy that failed for a passing reason is tried again, but not before
// RetryAfter.
func TestMaterializeWholeRetry(t *testing.T) {
	s := openSample(t)
	store := &fakeStore{err: errors.New("disk on fire")}
	w := NewWholeFiles(context.Background(), store, WholeOptions{MinSize: 1, RetryAfter: 300 * time.Millisecond, Quiet: -1})
	defer w.Close()
	s.l.setWholeFiles(w)
	e := lookup(t, s.l, fstest.SampleBigFile)
	readEntry(t, s.l, e)
	s.l.MaterializeWhole(e)
	eventually(t, "the first attempt", func() bool { return w.Stats().Failures == 1 })
	s.l.MaterializeWhole(e)
	eventually(t, "the request to be dropped", func() bool { return w.idle() })
	if n := store.attempts(); n != 1 {
		t.Fatalf("%d attempts right after a failure, want 1", n)
	}
	time.Sleep(350 * time.Millisecond)
	store.setErr(nil)
	s.l.MaterializeWhole(e)
	eventually(t, "the retry", func() bool { return store.adds() == 1 })
}

// Close (the daemon stopping) cancels a copy in progress, waits for it,
// and ends all requests.
func TestWholeFilesClose(t *testing.T) {
	s := openSample(t)
	store := &fakeStore{waitCtx: true}
	w := NewWholeFiles(context.Background(), store, WholeOptions{MinSize: 1, Quiet: -1})
	s.l.setWholeFiles(w)
	e := lookup(t, s.l, fstest.SampleBigFile)
	readEntry(t, s.l, e)
	s.l.MaterializeWhole(e)
	eventually(t, "the copy to start", func() bool { return store.running() == 1 })
	done := make(chan struct{})
	go func() {
		w.Close()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Close did not return")
	}
	if store.running() != 0 || !errors.Is(store.lastErr(), context.Canceled) {
		t.Errorf("after Close: %d running, copy ended with %v", store.running(), store.lastErr())
	}
	if st := w.Stats(); st.Failures != 0 {
		t.Errorf("cancellation counted as a failure: %+v", st)
	}
	s.l.MaterializeWhole(lookup(t, s.l, fstest.SampleZeroFile))
	if store.attempts() != 1 {
		t.Errorf("a request after Close started a copy")
	}
}

// fakeStore is a WholeStore in memory that can block, fail and count.
type fakeStore struct {
	mu           sync.Mutex
	files        map[digest.Digest][]byte
	block        chan struct{} // AddWhole waits for it to close, if set
	waitCtx      bool          // AddWhole waits for its context to end
	err          error
	n, run, maxN int
	tries        int
	last         error
}

func (f *fakeStore) HasWhole(d string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	_, ok := f.files[digest.Digest(d)]
	return ok
}

func (f *fakeStore) OpenWhole(string, int64) (*os.File, bool) { return nil, false }

func (f *fakeStore) AddWhole(ctx context.Context, d string, size int64, src io.Reader) (err error) {
	f.mu.Lock()
	f.tries++
	f.run++
	f.maxN = max(f.maxN, f.run)
	block, waitCtx, ferr := f.block, f.waitCtx, f.err
	f.mu.Unlock()
	defer func() {
		f.mu.Lock()
		f.run--
		f.last = err
		f.mu.Unlock()
	}()
	if block != nil {
		<-block
	}
	if waitCtx {
		<-ctx.Done()
		return ctx.Err()
	}
	if ferr != nil {
		return ferr
	}
	b, err := io.ReadAll(src)
	if err != nil {
		return err
	}
	if int64(len(b)) != size || digest.FromBytes(b) != digest.Digest(d) {
		return cache.ErrWholeDigest
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.files == nil {
		f.files = map[digest.Digest][]byte{}
	}
	f.files[digest.Digest(d)] = b
	f.n++
	return nil
}

func (f *fakeStore) get(fn func() int) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return fn()
}
func (f *fakeStore) adds() int       { return f.get(func() int { return f.n }) }
func (f *fakeStore) running() int    { return f.get(func() int { return f.run }) }
func (f *fakeStore) maxRunning() int { return f.get(func() int { return f.maxN }) }
func (f *fakeStore) attempts() int   { return f.get(func() int { return f.tries }) }
func (f *fakeStore) setErr(err error) {
	f.mu.Lock()
	f.err = err
	f.mu.Unlock()
}
func (f *fakeStore) lastErr() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.last
}
func (f *fakeStore) content(d digest.Digest) []byte {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.files[d]
}

// Requests beyond MaxPending are dropped, not queued without bound; the
// file's next request gets it copied.
func TestMaterializeWholeQueueBound(t *testing.T) {
	s := openSample(t)
	store := &fakeStore{block: make(chan struct{})}
	w := NewWholeFiles(context.Background(), store, WholeOptions{MinSize: 1, MaxPending: 1, Quiet: -1})
	defer w.Close()
	s.l.setWholeFiles(w)
	a, b, c := lookup(t, s.l, fstest.SampleBigFile), lookup(t, s.l, fstest.SampleZeroFile), lookup(t, s.l, "etc/passwd")
	for _, e := range []*Entry{a, b, c} {
		readEntry(t, s.l, e)
	}
	s.l.MaterializeWhole(a)
	eventually(t, "the worker to take the first", func() bool { return store.running() == 1 })
	s.l.MaterializeWhole(b) // queued
	s.l.MaterializeWhole(c) // dropped: the queue holds one
	close(store.block)
	eventually(t, "the queued copy", func() bool { return store.adds() == 2 })
	eventually(t, "the queue to empty", w.idle)
	if store.content(c.Digest()) != nil {
		t.Fatal("the dropped request was copied")
	}
	s.l.MaterializeWhole(c)
	eventually(t, "the copy asked again", func() bool { return store.adds() == 3 })
}

// Copies wait for reads to pause (WholeOptions.Quiet): while a file is
// being read, nothing is written; once reads stop, the copy follows.
func TestMaterializeWholeWaitsForQuiet(t *testing.T) {
	s := openSample(t)
	store := diskStore(t)
	w := NewWholeFiles(context.Background(), store, WholeOptions{MinSize: 1, Quiet: time.Second})
	defer w.Close()
	s.l.setWholeFiles(w)
	e := lookup(t, s.l, fstest.SampleBigFile)
	readEntry(t, s.l, e)
	s.l.MaterializeWhole(e)
	buf := make([]byte, 100)
	for end := time.Now().Add(1500 * time.Millisecond); time.Now().Before(end); time.Sleep(10 * time.Millisecond) {
		if _, err := s.l.ReadAt(context.Background(), e, buf, 0); err != nil {
			t.Fatal(err)
		}
		if store.HasWhole(string(e.Digest())) {
			t.Fatal("a copy was written while the layer was being read")
		}
	}
	eventually(t, "the copy after reads stopped", func() bool { return store.HasWhole(string(e.Digest())) })
}

// setWholeFiles gives a test's layer whole files after Open, as
// WithWholeFiles does at Open, so that the shared sample layers serve.
func (l *Layer) setWholeFiles(w *WholeFiles) { l.whole.Store(w) }
