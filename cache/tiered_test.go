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

// Add and Keep write both tiers; Add keeps a copy in memory (the caller
// may reuse its buffer), Keep the caller's buffer itself.
func TestTieredAddWritesBoth(t *testing.T) {
	for _, tc := range []struct {
		name   string
		add    func(c Cache, k string, v []byte)
		shared bool
	}{
		{"Add", func(c Cache, k string, v []byte) { c.Add(k, v) }, false},
		{"Keep", func(c Cache, k string, v []byte) { c.(Keeper).Keep(k, v) }, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mem := NewMemory(1 << 20)
			disk, _ := openDisk(t, t.TempDir())
			c := NewTiered(mem, disk)
			v := []byte("both")
			tc.add(c, digestKey(v), v)
			got, ok := mem.Get(digestKey(v))
			if !ok || !bytes.Equal(got, v) {
				t.Fatalf("memory tier: %q, %v", got, ok)
			}
			if shared := &got[0] == &v[0]; shared != tc.shared {
				t.Errorf("memory tier holds the caller's buffer: %v, want %v", shared, tc.shared)
			}
			if got, ok := disk.Get(digestKey(v)); !ok || !bytes.Equal(got, v) {
				t.Errorf("disk tier: %q, %v", got, ok)
			}
		})
	}
	disk, _ := openDisk(t, t.TempDir())
	v := []byte("both")
	disk.Add(digestKey(v), v)

	// Memory evicted it; disk still serves it.
	small := NewTiered(NewMemory(0), disk)
	if got, ok := small.Get(digestKey(v)); !ok || !bytes.Equal(got, v) {
		t.Errorf("Get through empty memory tier = %q, %v", got, ok)
	}
}
