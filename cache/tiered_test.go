package cache

import (
	"bytes"
	"testing"
)

func TestTieredPromotesDiskHits(t *testing.T) {
	mem := NewMemory(1 << 20)
	disk, _ := openDisk(t, t.TempDir())
	c := NewTiered(mem, disk)
	v := []byte("only on disk")
	k := digestKey(v)
	disk.Add(k, v)

	if got, ok := c.Get(k); !ok || !bytes.Equal(got, v) {
		t.Fatalf("Get = %q, %v", got, ok)
	}
	if got, ok := mem.Get(k); !ok || !bytes.Equal(got, v) {
		t.Fatalf("disk hit not promoted to memory: %q, %v", got, ok)
	}
	// Served from memory now: disk sees no further reads.
	hits := disk.Stats().Hits
	c.Get(k)
	if disk.Stats().Hits != hits {
		t.Error("second Get went to disk")
	}

	if _, ok := c.Get("missing"); ok {
		t.Error("hit for a missing key")
	}
}

func TestTieredAddWritesBoth(t *testing.T) {
	mem := NewMemory(1 << 20)
	disk, _ := openDisk(t, t.TempDir())
	c := NewTiered(mem, disk)
	v := []byte("both")
	c.Add(digestKey(v), v)
	if _, ok := mem.Get(digestKey(v)); !ok {
		t.Error("not in memory")
	}
	if _, ok := disk.Get(digestKey(v)); !ok {
		t.Error("not on disk")
	}

	// Memory evicted it; disk still serves it.
	small := NewTiered(NewMemory(0), disk)
	if got, ok := small.Get(digestKey(v)); !ok || !bytes.Equal(got, v) {
		t.Errorf("Get through empty memory tier = %q, %v", got, ok)
	}
}
