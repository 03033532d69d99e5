package cache

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
)

func TestDiskRoundTrip(t *testing.T) {
	big := fill(1<<20, 7)
	tests := []struct {
		name string
		key  string
		val  []byte
	}{
		{"digest key", digestKey([]byte("chunk")), []byte("chunk")},
		{"plain key", "layer/file@0", []byte("plain")},
		{"empty value", digestKey(nil), nil},
		{"large value", digestKey(big), big},
	}
	dir := t.TempDir()
	d, _ := openDisk(t, dir)
	var want int64
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if _, ok := d.Get(tc.key); ok {
				t.Fatal("hit before Add")
			}
			d.Add(tc.key, tc.val)
			got, ok := d.Get(tc.key)
			if !ok || !bytes.Equal(got, tc.val) {
				t.Fatalf("Get = %d bytes, %v; want %d bytes", len(got), ok, len(tc.val))
			}
			want += int64(len(tc.val)) + trailerLen
		})
	}
	if d.Size() != want || diskBytes(t, dir) != want {
		t.Errorf("Size = %d, on disk %d, want %d", d.Size(), diskBytes(t, dir), want)
	}
	s := d.Stats()
	if s.Adds != 4 || s.Hits != 4 || s.Misses != 4 || s.Bytes != want {
		t.Errorf("Stats = %+v", s)
	}
}

func TestDiskAddSameDigestTwice(t *testing.T) {
	d, _ := openDisk(t, t.TempDir())
	v := []byte("same")
	d.Add(digestKey(v), v)
	d.Add(digestKey(v), v)
	if s := d.Stats(); s.Adds != 1 || s.Bytes != int64(len(v))+trailerLen {
		t.Errorf("Stats = %+v, want one entry", s)
	}
}

func TestDiskReplacePlainKey(t *testing.T) {
	d, _ := openDisk(t, t.TempDir())
	d.Add("k", []byte("first value"))
	d.Add("k", []byte("2nd"))
	if got, ok := d.Get("k"); !ok || string(got) != "2nd" {
		t.Fatalf("Get = %q, %v", got, ok)
	}
	if d.Size() != 3+trailerLen {
		t.Errorf("Size = %d, want %d", d.Size(), 3+trailerLen)
	}
}

func TestDiskReopen(t *testing.T) {
	dir := t.TempDir()
	d, _ := openDisk(t, dir)
	vals := [][]byte{[]byte("one"), []byte("two two"), fill(5000, 3)}
	for _, v := range vals {
		d.Add(digestKey(v), v)
	}
	d.Add("plain", []byte("p"))
	size := d.Size()

	// A crash mid-Add leaves a temp file; unknown files are not ours.
	if err := os.WriteFile(filepath.Join(dir, tempPrefix+"123"), []byte("partial"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "README"), []byte("not an entry"), 0o600); err != nil {
		t.Fatal(err)
	}

	d2, _ := openDisk(t, dir)
	if d2.Size() != size {
		t.Errorf("reopened Size = %d, want %d", d2.Size(), size)
	}
	for _, v := range vals {
		if got, ok := d2.Get(digestKey(v)); !ok || !bytes.Equal(got, v) {
			t.Errorf("Get(%s) after reopen = %v", digestKey(v), ok)
		}
	}
	if got, ok := d2.Get("plain"); !ok || string(got) != "p" {
		t.Errorf("Get(plain) after reopen = %q, %v", got, ok)
	}
	if tmp := tempFiles(t, dir); len(tmp) != 0 {
		t.Errorf("leftover temp files not removed: %v", tmp)
	}
	if _, err := os.Stat(filepath.Join(dir, "README")); err != nil {
		t.Errorf("unknown file touched: %v", err)
	}
}

func TestNewDiskErrors(t *testing.T) {
	f := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(f, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := NewDisk(f, nil); err == nil {
		t.Error("NewDisk on a regular file succeeded")
	}
	dir := filepath.Join(t.TempDir(), "a", "b")
	if _, err := NewDisk(dir, nil); err != nil {
		t.Fatalf("NewDisk creating nested dir: %v", err)
	}
	fi, err := os.Stat(dir)
	if err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("dir mode = %v, %v; want 0700", fi.Mode(), err)
	}
}

func TestDiskCorruption(t *testing.T) {
	a, b := []byte("contents of chunk a"), []byte("contents of chunk b, longer")
	ka, kb := digestKey(a), digestKey(b)
	tests := []struct {
		name    string
		key     string
		corrupt func(t *testing.T, d *Disk)
	}{
		{"flip body byte", ka, func(t *testing.T, d *Disk) { flip(t, d, ka, 0) }},
		{"flip trailer byte", ka, func(t *testing.T, d *Disk) { flip(t, d, ka, len(a)+5) }},
		{"truncate into body", ka, func(t *testing.T, d *Disk) { truncate(t, d, ka, 5) }},
		{"truncate trailer", ka, func(t *testing.T, d *Disk) { truncate(t, d, ka, int64(len(a))+trailerLen-1) }},
		{"truncate to empty", ka, func(t *testing.T, d *Disk) { truncate(t, d, ka, 0) }},
		{"append garbage", ka, func(t *testing.T, d *Disk) {
			_, p := d.entryPath(ka)
			f, err := os.OpenFile(p, os.O_APPEND|os.O_WRONLY, 0)
			if err != nil {
				t.Fatal(err)
			}
			f.Write([]byte("xx"))
			f.Close()
		}},
		{"swap contents", ka, func(t *testing.T, d *Disk) {
			// Both files are self-consistent; only the digest key can
			// tell that a holds b's bytes.
			_, pa := d.entryPath(ka)
			_, pb := d.entryPath(kb)
			ca, _ := os.ReadFile(pa)
			cb, _ := os.ReadFile(pb)
			os.WriteFile(pa, cb, 0o600)
			os.WriteFile(pb, ca, 0o600)
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			d, hook := openDisk(t, dir)
			d.Add(ka, a)
			d.Add(kb, b)
			tc.corrupt(t, d)
			_, p := d.entryPath(tc.key)

			if got, ok := d.Get(tc.key); ok {
				t.Fatalf("Get of corrupt entry = %q, hit", got)
			}
			if _, err := os.Stat(p); !os.IsNotExist(err) {
				t.Errorf("corrupt file not removed: %v", err)
			}
			e := hook.LastEntry()
			if e == nil || e.Level != logrus.WarnLevel || e.Data["key"] != tc.key || e.Data["path"] != p {
				t.Errorf("want a warning with key and path, got %+v", e)
			}
			// Reading b too settles the swap case, where b's file also
			// holds the wrong bytes (and a size the index did not expect).
			d.Get(kb)
			if d.Size() != diskBytes(t, dir) {
				t.Errorf("Size = %d, on disk %d", d.Size(), diskBytes(t, dir))
			}
			// The refetched chunk can be stored again.
			d.Add(ka, a)
			if got, ok := d.Get(ka); !ok || !bytes.Equal(got, a) {
				t.Errorf("re-Add after corruption: Get = %q, %v", got, ok)
			}
		})
	}
}

func flip(t *testing.T, d *Disk, key string, off int) {
	t.Helper()
	_, p := d.entryPath(key)
	c, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	c[off] ^= 0x01
	if err := os.WriteFile(p, c, 0o600); err != nil {
		t.Fatal(err)
	}
}

func truncate(t *testing.T, d *Disk, key string, n int64) {
	t.Helper()
	_, p := d.entryPath(key)
	if err := os.Truncate(p, n); err != nil {
		t.Fatal(err)
	}
}

func TestDiskDigestMismatch(t *testing.T) {
	dir := t.TempDir()
	d, hook := openDisk(t, dir)
	good, bad := []byte("what the key names"), []byte("something else")
	key := digestKey(good)

	// Add refuses bytes that do not hash to their digest key.
	d.Add(key, bad)
	if len(files(t, dir)) != 0 || d.Stats().Adds != 0 {
		t.Errorf("mismatched Add stored something: %v", files(t, dir))
	}
	if hook.LastEntry() == nil || hook.LastEntry().Data["key"] != key {
		t.Errorf("mismatched Add not logged with key")
	}

	// A file with a valid trailer but the wrong bytes, as a buggy or
	// older writer might leave, is rejected on load.
	_, p := d.entryPath(key)
	sum := checksum(bad)
	os.MkdirAll(filepath.Dir(p), 0o700)
	if err := os.WriteFile(p, append(append([]byte{}, bad...), sum[:]...), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, ok := d.Get(key); ok {
		t.Fatal("Get returned bytes that do not hash to the key")
	}
	if _, err := os.Stat(p); !os.IsNotExist(err) {
		t.Errorf("mismatched file not removed: %v", err)
	}

	// Malformed digest keys cannot match anything.
	for _, k := range []string{"sha256:", "sha256:XYZ", "sha256:" + strings.ToUpper(key[7:])} {
		d.Add(k, good)
		if _, ok := d.Get(k); ok {
			t.Errorf("malformed key %q stored", k)
		}
	}
}

func TestDiskKeysStayInsideDir(t *testing.T) {
	root := t.TempDir()
	dir := filepath.Join(root, "cache")
	d, _ := openDisk(t, dir)
	keys := []string{
		"../escape", "../../../../../../tmp/escape", "/abs/escape", "a/b/c", "..", ".", "",
		"sha256:../../escape", "sha256:/etc/passwd", "nul\x00byte", "back\\slash",
		strings.Repeat("long/", 2000),
	}
	stored := 0
	for _, k := range keys {
		d.Add(k, []byte(k))
		got, ok := d.Get(k)
		if strings.HasPrefix(k, "sha256:") {
			// Not a digest of its value, so refused, but still no escape.
			if ok {
				t.Errorf("malformed digest key %q stored", k)
			}
			continue
		}
		stored++
		if !ok || string(got) != k {
			t.Errorf("round trip of %q failed", k)
		}
	}
	// Digest-shaped keys whose value matches go through the same mapping.
	v := []byte("../../escape")
	d.Add(digestKey(v), v)
	stored++
	for _, f := range files(t, root) {
		parts := strings.Split(f, string(filepath.Separator))
		if len(parts) != 3 || parts[0] != "cache" || !isEntryName(parts[2]) || parts[2][:2] != parts[1] {
			t.Errorf("file outside layout: %s", f)
		}
	}
	if n := len(files(t, root)); n != stored {
		t.Errorf("%d files for %d stored keys", n, stored)
	}
}

func TestDiskCapEvictsLRU(t *testing.T) {
	const n = 100
	per := int64(n) + trailerLen
	dir := t.TempDir()
	d, _ := openDisk(t, dir)
	d.SetMaxBytes(3 * per)
	a, b, c, e := fill(n, 'a'), fill(n, 'b'), fill(n, 'c'), fill(n, 'e')
	d.Add(digestKey(a), a)
	d.Add(digestKey(b), b)
	d.Add(digestKey(c), c)
	d.Get(digestKey(a)) // now b is the least recently used
	d.Add(digestKey(e), e)

	for _, tc := range []struct {
		v    []byte
		want bool
	}{{a, true}, {b, false}, {c, true}, {e, true}} {
		_, p := d.entryPath(digestKey(tc.v))
		_, err := os.Stat(p)
		if (err == nil) != tc.want {
			t.Errorf("entry %c on disk = %v, want %v", tc.v[0], err == nil, tc.want)
		}
	}
	if d.Size() != 3*per || diskBytes(t, dir) != 3*per {
		t.Errorf("Size = %d, on disk %d, want %d", d.Size(), diskBytes(t, dir), 3*per)
	}
	if s := d.Stats(); s.Evictions != 1 {
		t.Errorf("Evictions = %d, want 1", s.Evictions)
	}

	// An entry bigger than the cap is not stored and evicts nothing.
	huge := fill(int(3*per), 'h')
	d.Add(digestKey(huge), huge)
	if _, ok := d.Get(digestKey(huge)); ok || d.Size() != 3*per {
		t.Errorf("oversize entry stored or evicted others; Size = %d", d.Size())
	}

	// Lowering the cap evicts at once.
	d.SetMaxBytes(per)
	if d.Size() != per || diskBytes(t, dir) != per {
		t.Errorf("after SetMaxBytes: Size = %d, on disk %d, want %d", d.Size(), diskBytes(t, dir), per)
	}
	if _, ok := d.Get(digestKey(e)); !ok {
		t.Error("most recently added entry was evicted")
	}
}

func TestDiskStartupOrderByMtime(t *testing.T) {
	dir := t.TempDir()
	d, _ := openDisk(t, dir)
	vals := [][]byte{fill(10, 'x'), fill(10, 'y'), fill(10, 'z')}
	base := time.Now().Add(-time.Hour)
	// Added in order x, y, z but aged so that y is oldest, then z, then x.
	ages := []time.Duration{3, 1, 2}
	for i, v := range vals {
		d.Add(digestKey(v), v)
		_, p := d.entryPath(digestKey(v))
		mt := base.Add(ages[i] * time.Minute)
		if err := os.Chtimes(p, mt, mt); err != nil {
			t.Fatal(err)
		}
	}
	d2, _ := openDisk(t, dir)
	d2.SetMaxBytes(2 * (10 + trailerLen))
	if _, ok := d2.Get(digestKey(vals[1])); ok {
		t.Error("oldest-mtime entry y survived eviction")
	}
	for _, i := range []int{0, 2} {
		if _, ok := d2.Get(digestKey(vals[i])); !ok {
			t.Errorf("entry %c evicted, want kept", vals[i][0])
		}
	}
}

func TestDiskGetRefreshesMtime(t *testing.T) {
	d, _ := openDisk(t, t.TempDir())
	v := []byte("v")
	d.Add(digestKey(v), v)
	_, p := d.entryPath(digestKey(v))
	old := time.Now().Add(-24 * time.Hour)
	os.Chtimes(p, old, old)
	d.Get(digestKey(v))
	fi, err := os.Stat(p)
	if err != nil || !fi.ModTime().After(old.Add(time.Hour)) {
		t.Errorf("mtime not refreshed by Get: %v, %v", fi.ModTime(), err)
	}
}

func TestDiskFileRemovedBehindItsBack(t *testing.T) {
	dir := t.TempDir()
	d, _ := openDisk(t, dir)
	v := []byte("gone")
	d.Add(digestKey(v), v)
	_, p := d.entryPath(digestKey(v))
	os.Remove(p)
	if _, ok := d.Get(digestKey(v)); ok {
		t.Fatal("hit on removed file")
	}
	if d.Size() != 0 {
		t.Errorf("Size = %d after file vanished, want 0", d.Size())
	}
}
