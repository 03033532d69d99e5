package integration

import (
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/poolfs/poolfs/pool"
	"github.com/poolfs/poolfs/test/fixture"
)

// TestTreesComeAndGoUnderReads: with a tiny idle time, a layer's tree
// leaves memory whenever the kernel forgets its entries, while readers
// keep walking and reading it; every walk sees the tar exactly, the tree
// comes back from the metadata store (no TOC fetched again), and nothing
// races (run it with -race).
func TestTreesComeAndGoUnderReads(t *testing.T) {
	reg := fixture.StartRegistry(t)
	tarBytes := layerTar(5, 12)
	ref, layers := pushImage(t, reg, "test/trees", [][]byte{tarBytes}, fixture.ImageOptions{ChunkSize: 64 << 10})
	store, _ := openMeta(t, filepath.Join(t.TempDir(), "meta.db"))
	m := mountPoolOpts(t, reg, mountOpts{Meta: store, Quiet: true,
		Pool: []pool.Option{pool.WithTreeLimits(pool.TreeLimits{Idle: time.Millisecond})}})
	diff := filepath.Join(m.grammar2(ref, layers[0].Digest.String()), "diff")
	compareTree(t, diff, tarBytes)
	m.Pool.Flush() // the record is written: the tree may leave
	l := openLayer(t, m, layers[0].Digest)
	reg.ResetStats()

	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { // what memory pressure does: the kernel forgets
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
				_ = os.WriteFile("/proc/sys/vm/drop_caches", []byte("2"), 0o200)
			}
		}
	}()
	deadline := time.Now().Add(3 * time.Second)
	for i := 0; time.Now().Before(deadline) || l.Tree().Loads < 2; i++ {
		if i > 200 && l.Tree().Loads < 2 {
			t.Fatalf("the tree came back %d times in %d walks", l.Tree().Loads, i)
		}
		compareTree(t, diff, tarBytes)
		time.Sleep(10 * time.Millisecond)
	}
	close(stop)
	wg.Wait()
	t.Logf("the tree came back %d times from the metadata store", l.Tree().Loads)
	if n := reg.Stats().Requests; n != 0 {
		t.Errorf("%d registry requests while the tree came and went:\n%s", n, reg.RequestLog())
	}
}
