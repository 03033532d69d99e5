package cache

import (
	"bytes"
	"fmt"
	"sync"
	"testing"
	"time"
)

// TestConcurrent hammers each implementation with Adds and Gets of shared
// keys (so the same key is written by several goroutines at once) under a
// cap small enough to force evictions; run with -race.
func TestConcurrent(t *testing.T) {
	const (
		workers = 16
		keys    = 40
		rounds  = 200
		size    = 512
	)
	vals := make([][]byte, keys)
	for i := range vals {
		vals[i] = []byte(fmt.Sprintf("%0*d", size, i))
	}
	newDisk := func(t *testing.T) *Disk {
		d, _ := openDisk(t, t.TempDir())
		d.SetMaxBytes(keys / 2 * (size + trailerLen))
		return d
	}
	tests := []struct {
		name string
		new  func(t *testing.T) Cache
	}{
		{"memory", func(t *testing.T) Cache { return NewMemory(keys / 2 * size) }},
		{"disk", func(t *testing.T) Cache { return newDisk(t) }},
		{"tiered", func(t *testing.T) Cache { return NewTiered(NewMemory(keys/4*size), newDisk(t)) }},
		{"tiered write-behind", func(t *testing.T) Cache {
			c := NewTieredWriteBehind(NewMemory(keys/4*size), newDisk(t), WriteBehind{Settle: time.Millisecond, MaxPending: keys / 8 * size})
			t.Cleanup(c.Close)
			return c
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := tc.new(t)
			var wg sync.WaitGroup
			for w := 0; w < workers; w++ {
				wg.Add(1)
				go func(w int) {
					defer wg.Done()
					for r := 0; r < rounds; r++ {
						i := (w*7 + r) % keys
						k := digestKey(vals[i])
						if r%3 == 0 {
							c.Add(k, vals[i])
							continue
						}
						if got, ok := c.Get(k); ok && !bytes.Equal(got, vals[i]) {
							t.Errorf("Get(%d) returned wrong bytes", i)
							return
						}
					}
				}(w)
			}
			wg.Wait()

			switch c := c.(type) {
			case *Disk:
				if c.Size() > keys/2*(size+trailerLen) {
					t.Errorf("Size %d over cap", c.Size())
				}
				if c.Size() != diskBytes(t, c.dir) {
					t.Errorf("Size = %d, on disk %d", c.Size(), diskBytes(t, c.dir))
				}
				if tmp := tempFiles(t, c.dir); len(tmp) != 0 {
					t.Errorf("temp files left: %v", tmp)
				}
			case *Memory:
				if s := c.Stats(); s.Bytes > keys/2*size {
					t.Errorf("Bytes %d over bound", s.Bytes)
				}
			}
		})
	}
}
