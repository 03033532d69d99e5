package cache

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// addWhole stores b as a whole file under its own digest.
func addWhole(t *testing.T, d *Disk, b []byte) string {
	t.Helper()
	dg := digestKey(b)
	if err := d.AddWhole(context.Background(), dg, int64(len(b)), bytes.NewReader(b)); err != nil {
		t.Fatalf("AddWhole(%d bytes): %v", len(b), err)
	}
	return dg
}

// readWhole opens the whole file for b's digest and returns its contents,
// or nil if none is stored.
func readWhole(t *testing.T, d *Disk, b []byte) []byte {
	t.Helper()
	f, ok := d.OpenWhole(digestKey(b), int64(len(b)))
	if !ok {
		return nil
	}
	defer f.Close()
	got, err := io.ReadAll(f)
	if err != nil {
		t.Fatal(err)
	}
	return got
}

func TestWholeRoundTrip(t *testing.T) {
	dir := t.TempDir()
	d, _ := openDisk(t, dir)
	b := fill(10000, 'w')
	dg := addWhole(t, d, b)
	if !d.HasWhole(dg) {
		t.Fatal("HasWhole after AddWhole: false")
	}
	if got := readWhole(t, d, b); !bytes.Equal(got, b) {
		t.Fatalf("whole file holds %d bytes, want the %d given", len(got), len(b))
	}
	// Byte-exact (the kernel reads it as is), read-only, under whole/.
	p := d.wholePath(dg[len(digestPrefix):])
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Size() != int64(len(b)) || fi.Mode().Perm() != 0o400 {
		t.Errorf("whole file: size %d mode %v, want %d and 0400", fi.Size(), fi.Mode().Perm(), len(b))
	}
	if rel, _ := filepath.Rel(dir, p); rel != filepath.Join("whole", dg[7:9], dg[7:]) {
		t.Errorf("whole file at %s", rel)
	}
	if s, ws := d.Stats(), d.WholeStats(); s.Bytes != int64(len(b)) || ws != (WholeStats{Files: 1, Bytes: int64(len(b)), Written: 1}) {
		t.Errorf("Stats %+v, WholeStats %+v", s, ws)
	}
	// Whole files and chunks are distinct kinds: the chunk of the same
	// digest is not there, and Get does not see the whole file.
	if d.Has(dg) {
		t.Error("Has(digest) reports a chunk for a whole file")
	}
	if _, ok := d.Get(dg); ok {
		t.Error("Get found a chunk for a whole file")
	}
	// Asking again keeps the file and does not read the source.
	if err := d.AddWhole(context.Background(), dg, int64(len(b)), failingReader{}); err != nil {
		t.Errorf("AddWhole of a stored digest: %v", err)
	}
	if n := d.WholeStats().Written; n != 1 {
		t.Errorf("%d whole files written, want 1", n)
	}
}

type failingReader struct{}

func (failingReader) Read([]byte) (int, error) { return 0, errors.New("source read") }

// Nothing that does not hash to its digest, or is not of its size, is
// ever stored, and no temp file stays behind.
func TestWholeRefusesBadContents(t *testing.T) {
	good := fill(5000, 'g')
	bad := append(fill(4999, 'g'), 'x')
	tests := []struct {
		name    string
		dgst    string
		size    int64
		src     io.Reader
		ctx     func() context.Context
		wantErr error
	}{
		{"digest mismatch", digestKey(good), int64(len(bad)), bytes.NewReader(bad), nil, ErrWholeDigest},
		{"source short", digestKey(good), int64(len(good)), bytes.NewReader(good[:4000]), nil, ErrWholeSize},
		{"source long", digestKey(good), int64(len(good)) - 1, bytes.NewReader(good), nil, ErrWholeSize},
		{"size zero", digestKey(nil), 0, bytes.NewReader(nil), nil, ErrWholeSize},
		{"source fails", digestKey(good), int64(len(good)), io.MultiReader(bytes.NewReader(good[:100]), failingReader{}), nil, nil},
		{"cancelled", digestKey(good), int64(len(good)), bytes.NewReader(good), func() context.Context {
			ctx, cancel := context.WithCancel(context.Background())
			cancel()
			return ctx
		}, context.Canceled},
		{"not a digest", "../../etc/passwd", 5, bytes.NewReader(good), nil, nil},
		{"not sha256", "sha512:" + digestKey(good)[7:], int64(len(good)), bytes.NewReader(good), nil, nil},
		{"upper-case hex", "sha256:" + string(bytes.ToUpper([]byte(digestKey(good)[7:]))), int64(len(good)), bytes.NewReader(good), nil, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			d, _ := openDisk(t, dir)
			ctx := context.Background()
			if tt.ctx != nil {
				ctx = tt.ctx()
			}
			err := d.AddWhole(ctx, tt.dgst, tt.size, tt.src)
			if err == nil || (tt.wantErr != nil && !errors.Is(err, tt.wantErr)) {
				t.Fatalf("AddWhole: %v, want %v", err, tt.wantErr)
			}
			if got := files(t, dir); len(got) != 0 {
				t.Errorf("files left behind: %v", got)
			}
			if d.HasWhole(tt.dgst) || d.Size() != 0 || d.WholeStats() != (WholeStats{}) {
				t.Errorf("indexed after a refused AddWhole: size %d, %+v", d.Size(), d.WholeStats())
			}
		})
	}
}

func TestWholeWriteFailures(t *testing.T) {
	b := fill(3000, 'f')
	dg := digestKey(b)
	tests := []struct {
		name  string
		setup func(t *testing.T, d *Disk)
	}{
		{"temp file creation fails", func(t *testing.T, d *Disk) {
			d.createTemp = func(string, string) (tempFile, error) {
				return nil, &os.PathError{Op: "open", Path: "tmp", Err: syscall.ENOSPC}
			}
		}},
		{"write fails", func(t *testing.T, d *Disk) {
			d.createTemp = func(dir, pattern string) (tempFile, error) {
				f, err := os.CreateTemp(dir, pattern)
				return &shortWriter{File: f}, err
			}
		}},
		{"whole dir is a file", func(t *testing.T, d *Disk) {
			if err := os.WriteFile(filepath.Join(d.dir, wholeSubdir), nil, 0o600); err != nil {
				t.Fatal(err)
			}
		}},
		{"target is a dir", func(t *testing.T, d *Disk) {
			if err := os.MkdirAll(filepath.Join(d.wholePath(dg[7:]), "x"), 0o700); err != nil {
				t.Fatal(err)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d, _ := openDisk(t, t.TempDir())
			tt.setup(t, d)
			err := d.AddWhole(context.Background(), dg, int64(len(b)), bytes.NewReader(b))
			if err == nil {
				t.Fatal("AddWhole succeeded")
			}
			if tmp := tempFiles(t, d.dir); len(tmp) != 0 {
				t.Errorf("temp files left: %v", tmp)
			}
			if d.HasWhole(dg) || d.WholeStats() != (WholeStats{}) {
				t.Errorf("indexed after a failed AddWhole: %+v", d.WholeStats())
			}
		})
	}
}

// shortWriter writes half of what it is given and fails with ENOSPC, as
// a disk filling up does.
type shortWriter struct {
	*os.File
}

func (w *shortWriter) Write(p []byte) (int, error) {
	n, _ := w.File.Write(p[:len(p)/2])
	return n, syscall.ENOSPC
}

// Whole files count against the cap and take part in the LRU order with
// chunks, for eviction at Add time, for SetMaxBytes and for TrimTo.
func TestWholeCapAndLRU(t *testing.T) {
	d, _ := openDisk(t, t.TempDir())
	c1 := fill(1000, 1)
	d.Add(digestKey(c1), c1) // 1032 bytes with its trailer
	w1 := fill(2000, 2)
	addWhole(t, d, w1)
	c2 := fill(1000, 3)
	d.Add(digestKey(c2), c2)
	if got, want := d.Size(), int64(1032+2000+1032); got != want {
		t.Fatalf("size %d, want %d", got, want)
	}
	// Using the whole file makes c2 the least recently used... after c1.
	if readWhole(t, d, w1) == nil {
		t.Fatal("whole file missing")
	}
	// A cap that fits two of the three evicts c1, then c2, keeps w1.
	d.SetMaxBytes(3100)
	if d.Has(digestKey(c1)) || !d.HasWhole(digestKey(w1)) || !d.Has(digestKey(c2)) {
		t.Errorf("after cap 3100: c1 %v w1 %v c2 %v; want only c1 evicted", d.Has(digestKey(c1)), d.HasWhole(digestKey(w1)), d.Has(digestKey(c2)))
	}
	d.SetMaxBytes(2500)
	if d.Has(digestKey(c2)) || !d.HasWhole(digestKey(w1)) {
		t.Errorf("after cap 2500: c2 %v w1 %v; want the whole file, used last, kept", d.Has(digestKey(c2)), d.HasWhole(digestKey(w1)))
	}
	// A new whole file evicts the old one when both do not fit.
	w2 := fill(1200, 4)
	addWhole(t, d, w2)
	if d.HasWhole(digestKey(w1)) || !d.HasWhole(digestKey(w2)) {
		t.Error("adding a second whole file did not evict the first")
	}
	if _, err := os.Stat(d.wholePath(digestKey(w1)[7:])); !os.IsNotExist(err) {
		t.Errorf("evicted whole file still on disk: %v", err)
	}
	if ws := d.WholeStats(); ws.Files != 1 || ws.Bytes != 1200 || d.Size() != 1200 {
		t.Errorf("after eviction: %+v, size %d", ws, d.Size())
	}
	// More than half the cap is refused without reading the source.
	big := fill(1300, 5)
	if err := d.AddWhole(context.Background(), digestKey(big), int64(len(big)), failingReader{}); !errors.Is(err, ErrWholeTooLarge) {
		t.Errorf("AddWhole over half the cap: %v, want ErrWholeTooLarge", err)
	}
	// TrimTo (poolfs gc) covers whole files.
	if freed := d.TrimTo(0); freed != 1200 || d.Size() != 0 || d.WholeStats().Files != 0 {
		t.Errorf("TrimTo(0) freed %d, size %d, %+v", freed, d.Size(), d.WholeStats())
	}
}

// An open whole file stays readable when evicted: passthrough opens keep
// their fd.
func TestWholeEvictedWhileOpen(t *testing.T) {
	d, _ := openDisk(t, t.TempDir())
	b := fill(4000, 9)
	addWhole(t, d, b)
	f, ok := d.OpenWhole(digestKey(b), int64(len(b)))
	if !ok {
		t.Fatal("OpenWhole: not found")
	}
	defer f.Close()
	d.TrimTo(0)
	if d.HasWhole(digestKey(b)) {
		t.Fatal("still indexed after TrimTo(0)")
	}
	got, err := io.ReadAll(f)
	if err != nil || !bytes.Equal(got, b) {
		t.Errorf("reading the evicted file: %d bytes, %v", len(got), err)
	}
}

// The scan at startup indexes whole files with the chunks, in mtime order,
// and removes temp files an interrupted AddWhole left.
func TestWholeScanAtRestart(t *testing.T) {
	dir := t.TempDir()
	d, _ := openDisk(t, dir)
	w1, c1, w2 := fill(3000, 1), fill(1000, 2), fill(2000, 3)
	addWhole(t, d, w1)
	d.Add(digestKey(c1), c1)
	addWhole(t, d, w2)
	// Make the order by mtime w2, c1, w1 (oldest first).
	base := time.Now().Add(-time.Hour)
	for i, p := range []string{d.wholePath(digestKey(w2)[7:]), d.pathOf(mustName(d, digestKey(c1))), d.wholePath(digestKey(w1)[7:])} {
		tm := base.Add(time.Duration(i) * time.Minute)
		if err := os.Chtimes(p, tm, tm); err != nil {
			t.Fatal(err)
		}
	}
	leftover := filepath.Join(dir, tempPrefix+"whole-crash")
	if err := os.WriteFile(leftover, fill(500, 7), 0o600); err != nil {
		t.Fatal(err)
	}
	// Files that are not entries are left alone and not counted.
	junk := filepath.Join(dir, wholeSubdir, "zz", "not-an-entry")
	if err := os.MkdirAll(filepath.Dir(junk), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(junk, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}

	d2, _ := openDisk(t, dir)
	if _, err := os.Stat(leftover); !os.IsNotExist(err) {
		t.Errorf("leftover temp file: %v", err)
	}
	if got, want := d2.Size(), int64(3000+1032+2000); got != want {
		t.Errorf("size after restart %d, want %d", got, want)
	}
	if ws := d2.WholeStats(); ws.Files != 2 || ws.Bytes != 5000 || ws.Written != 0 {
		t.Errorf("WholeStats after restart %+v", ws)
	}
	if got := readWhole(t, d2, w1); !bytes.Equal(got, w1) {
		t.Error("whole file w1 not served after restart")
	}
	// Oldest first: w2 goes, then c1; w1 (oldest mtime but just used) stays.
	d2.SetMaxBytes(3100)
	if d2.HasWhole(digestKey(w2)) || d2.Has(digestKey(c1)) || !d2.HasWhole(digestKey(w1)) {
		t.Errorf("eviction after restart: w2 %v c1 %v w1 %v", d2.HasWhole(digestKey(w2)), d2.Has(digestKey(c1)), d2.HasWhole(digestKey(w1)))
	}
	if _, err := os.Stat(junk); err != nil {
		t.Errorf("non-entry file touched: %v", err)
	}
}

func mustName(d *Disk, key string) string {
	name, _ := d.entryPath(key)
	return name
}

// A whole file of the wrong size (truncated behind the cache's back) is
// not served, and is removed.
func TestWholeWrongSizeRemoved(t *testing.T) {
	dir := t.TempDir()
	d, hook := openDisk(t, dir)
	b := fill(4096, 'z')
	dg := addWhole(t, d, b)
	p := d.wholePath(dg[7:])
	if err := os.Chmod(p, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(p, 100); err != nil {
		t.Fatal(err)
	}
	if f, ok := d.OpenWhole(dg, int64(len(b))); ok {
		f.Close()
		t.Fatal("OpenWhole served a truncated file")
	}
	if _, err := os.Stat(p); !os.IsNotExist(err) {
		t.Errorf("truncated whole file not removed: %v", err)
	}
	if d.HasWhole(dg) || d.Size() != 0 {
		t.Errorf("still indexed: size %d", d.Size())
	}
	if len(hook.AllEntries()) == 0 {
		t.Error("removal not logged")
	}
	// And a file removed behind the cache's back is forgotten.
	dg2 := addWhole(t, d, b[:2000])
	if err := os.Remove(d.wholePath(dg2[7:])); err != nil {
		t.Fatal(err)
	}
	if _, ok := d.OpenWhole(dg2, 2000); ok || d.HasWhole(dg2) || d.Size() != 0 {
		t.Errorf("removed whole file: HasWhole %v, size %d", d.HasWhole(dg2), d.Size())
	}
}

// Has answers from the index of each cache without reading entries or
// changing their order.
func TestHas(t *testing.T) {
	a, b := fill(100, 'a'), fill(100, 'b')
	mem := NewMemory(1 << 20)
	disk, _ := openDisk(t, t.TempDir())
	mem.Add(digestKey(a), a)
	disk.Add(digestKey(b), b)
	tiered := Peeker(NewTiered(mem, disk))
	tests := []struct {
		name string
		c    Peeker
		key  string
		want bool
	}{
		{"memory hit", mem, digestKey(a), true},
		{"memory miss", mem, digestKey(b), false},
		{"disk hit", disk, digestKey(b), true},
		{"disk miss", disk, digestKey(a), false},
		{"tiered from memory", tiered, digestKey(a), true},
		{"tiered from disk", tiered, digestKey(b), true},
		{"tiered miss", tiered, digestKey(fill(100, 'c')), false},
	}
	for _, tt := range tests {
		if got := tt.c.Has(tt.key); got != tt.want {
			t.Errorf("%s: Has = %v, want %v", tt.name, got, tt.want)
		}
	}
	if s := mem.Stats(); s.Hits != 0 || s.Misses != 0 {
		t.Errorf("Has counted as use in memory: %+v", s)
	}
	if s := disk.Stats(); s.Hits != 0 || s.Misses != 0 {
		t.Errorf("Has counted as use on disk: %+v", s)
	}
	// Has does not verify: a corrupted file is still "had" until read.
	_, p := disk.entryPath(digestKey(b))
	if err := os.WriteFile(p, []byte("garbage"), 0o600); err != nil {
		t.Fatal(err)
	}
	if !disk.Has(digestKey(b)) {
		t.Error("Has read the entry")
	}
}
