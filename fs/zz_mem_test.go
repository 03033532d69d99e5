package fs

import (
	"context"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	gofs "github.com/hanwen/go-fuse/v2/fs"

	"github.com/poolfs/poolfs/fs/fstest"
	"github.com/poolfs/poolfs/layer"
)

func heapNow() uint64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

func TestMeasureBytesPerEntry(t *testing.T) {
	const n = 200000
	blob, toc, err := fstest.ManyEntries{Entries: n, Dirs: 100}.Build()
	if err != nil {
		t.Fatal(err)
	}
	before := heapNow()
	var peak atomic.Uint64
	stop := make(chan struct{})
	go func() {
		var m runtime.MemStats
		for {
			select {
			case <-stop:
				return
			default:
			}
			runtime.ReadMemStats(&m)
			if m.HeapAlloc > peak.Load() {
				peak.Store(m.HeapAlloc)
			}
			time.Sleep(2 * time.Millisecond)
		}
	}()
	l, err := layer.Open(context.Background(), fstest.NewMemBlob(blob), toc, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	close(stop)
	mid := heapNow()
	raw := gofs.NewNodeFS(NewLayerRoot(l, nil), &gofs.Options{})
	after := heapNow()
	t.Logf("%d entries: view %.1f B/entry, fs nodes %.1f B/entry, total %.1f, peak during open %.1f B/entry",
		n, float64(mid-before)/n, float64(after-mid)/n, float64(after-before)/n, float64(peak.Load()-before)/n)
	runtime.KeepAlive(raw)
	runtime.KeepAlive(l)
}
