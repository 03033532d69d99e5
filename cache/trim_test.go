package cache

import (
	"crypto/sha256"
	"fmt"
	"io/fs"
	"path/filepath"
	"testing"
)

func TestTrimTo(t *testing.T) {
	dir := t.TempDir()
	d, err := NewDisk(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	d.SetMaxBytes(1 << 20)
	var keys []string
	for i := range 10 {
		b := []byte(fmt.Sprintf("entry %d %0100d", i, i))
		key := fmt.Sprintf("sha256:%x", sha256.Sum256(b))
		d.Add(key, b)
		keys = append(keys, key)
	}
	before := d.Size()
	per := before / 10
	freed := d.TrimTo(3 * per)
	if d.Size() > 3*per || freed != before-d.Size() {
		t.Errorf("after TrimTo(%d): size %d, freed %d of %d", 3*per, d.Size(), freed, before)
	}
	// The newest entries stay, the oldest are gone from disk too.
	if _, ok := d.Get(keys[9]); !ok {
		t.Error("most recent entry was trimmed")
	}
	if _, ok := d.Get(keys[0]); ok {
		t.Error("oldest entry survived")
	}
	files := 0
	_ = filepath.WalkDir(dir, func(_ string, e fs.DirEntry, err error) error {
		if err == nil && e.Type().IsRegular() {
			files++
		}
		return nil
	})
	if files != 3 {
		t.Errorf("%d files left, want 3", files)
	}
	if d.MaxBytes() != 1<<20 {
		t.Errorf("TrimTo changed the cap to %d", d.MaxBytes())
	}
}
