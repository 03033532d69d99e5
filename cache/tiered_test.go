package cache

import (
	"bytes"
	"testing"
	"time"
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

func TestTieredWriteBehind(t *testing.T) {
	v := []byte("written behind")
	k := digestKey(v)
	big := bytes.Repeat([]byte("x"), 100)

	t.Run("pending entries are served, then flushed", func(t *testing.T) {
		disk, _ := openDisk(t, t.TempDir())
		c := NewTieredWriteBehind(NewMemory(0), disk, WriteBehind{Settle: time.Hour, MaxPending: 1 << 20})
		defer c.Close()
		c.Keep(k, v)
		if disk.Has(k) {
			t.Fatal("written to disk at once; want it held back while Adds keep coming")
		}
		// The memory tier holds nothing (size 0): this is the queue.
		if got, ok := c.Get(k); !ok || !bytes.Equal(got, v) {
			t.Errorf("Get of a pending entry = %q, %v", got, ok)
		}
		if !c.Has(k) {
			t.Error("Has of a pending entry = false")
		}
		if got := c.PendingBytes(); got != int64(len(v)) {
			t.Errorf("PendingBytes = %d, want %d", got, len(v))
		}
		c.Flush()
		if got, ok := disk.Get(k); !ok || !bytes.Equal(got, v) {
			t.Errorf("after Flush, disk has %q, %v", got, ok)
		}
		if got := c.PendingBytes(); got != 0 {
			t.Errorf("PendingBytes after Flush = %d, want 0", got)
		}
	})

	t.Run("written once Adds stop", func(t *testing.T) {
		disk, _ := openDisk(t, t.TempDir())
		c := NewTieredWriteBehind(NewMemory(1<<20), disk, WriteBehind{Settle: 20 * time.Millisecond, MaxPending: 1 << 20})
		defer c.Close()
		c.Add(k, v)
		for deadline := time.Now().Add(10 * time.Second); !disk.Has(k); time.Sleep(5 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatal("entry never reached the disk")
			}
		}
	})

	t.Run("over MaxPending the caller writes", func(t *testing.T) {
		disk, _ := openDisk(t, t.TempDir())
		c := NewTieredWriteBehind(NewMemory(1<<20), disk, WriteBehind{Settle: time.Hour, MaxPending: 110})
		defer c.Close()
		c.Add(digestKey(big), big)
		if disk.Has(digestKey(big)) {
			t.Fatal("first entry written at once; it fits the queue")
		}
		c.Add(k, v)
		if !disk.Has(k) {
			t.Error("entry beyond MaxPending not written by the caller")
		}
	})

	t.Run("Close writes what is pending; later Adds write at once", func(t *testing.T) {
		disk, _ := openDisk(t, t.TempDir())
		c := NewTieredWriteBehind(NewMemory(1<<20), disk, WriteBehind{Settle: time.Hour, MaxPending: 1 << 20})
		c.Add(digestKey(big), big)
		c.Close()
		if !disk.Has(digestKey(big)) {
			t.Error("pending entry not written by Close")
		}
		c.Add(k, v)
		if !disk.Has(k) {
			t.Error("Add after Close not written")
		}
	})

	t.Run("a buffer reused after Add does not change the entry", func(t *testing.T) {
		disk, _ := openDisk(t, t.TempDir())
		c := NewTieredWriteBehind(NewMemory(0), disk, WriteBehind{Settle: time.Hour, MaxPending: 1 << 20})
		defer c.Close()
		in := append([]byte(nil), v...)
		c.Add(k, in)
		in[0] = 'J'
		c.Flush()
		if got, ok := disk.Get(k); !ok || !bytes.Equal(got, v) {
			t.Errorf("disk has %q, %v; want the bytes as added", got, ok)
		}
	})
}
