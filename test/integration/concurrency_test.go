package integration

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/poolfs/poolfs/fs/fstest"
	"github.com/poolfs/poolfs/remote"
	"github.com/poolfs/poolfs/test/fixture"
)

// TestManyReadersManyLayers: 64 readers over 8 layers at once, each
// reading every file of its layer (in its own order) and checking the
// content, while a ninth layer's blob is held unanswered by the registry.
// The 64 must all finish with right bytes while the slow layer's readers
// are still stuck: one slow layer must not stall the others. Run with
// -race (make test does) this also checks the daemon's locking.
func TestManyReadersManyLayers(t *testing.T) {
	const (
		layerCount = 8
		readers    = 64
	)
	reg := fixture.StartRegistry(t)
	type layerUnderTest struct {
		dir   string
		files []string
		sums  map[string]string
	}
	var lut []layerUnderTest
	faults := fixture.NewFaults(fixture.FaultConfig{})
	reg.SetMiddleware(faults.Middleware)
	// The held reads must outlast the others, even under -race.
	m := mountPoolOpts(t, reg, mountOpts{Quiet: true, Remote: remote.Options{FetchTimeout: 5 * time.Minute}})

	pushLayer := func(i int) layerUnderTest {
		tarBytes := layerTar(uint64(100+i), 12)
		ref, layers := pushImage(t, reg, fmt.Sprintf("test/many%d", i), [][]byte{tarBytes}, fixture.ImageOptions{ChunkSize: 32 << 10})
		view, err := fstest.TarView(tarBytes)
		if err != nil {
			t.Fatal(err)
		}
		l := layerUnderTest{dir: filepath.Join(m.grammar2(ref, layers[0].Digest.String()), "diff"), sums: map[string]string{}}
		for p, e := range view {
			if e.Type == "reg" {
				l.files = append(l.files, p)
				l.sums[p] = e.SHA256
			}
		}
		sort.Strings(l.files)
		// Open the layer (TOC) now, so that what follows is file reads.
		if _, err := os.Stat(l.dir); err != nil {
			t.Fatal(err)
		}
		return l
	}
	for i := range layerCount {
		lut = append(lut, pushLayer(i))
	}

	// The slow layer: opened, then its blob held by the registry.
	// Bigger than the 1 MiB tail read at open, so its first file must be
	// fetched.
	slowTar := layerTar(999, 30)
	slowRef, slowLayers := pushImage(t, reg, "test/slow", [][]byte{slowTar}, fixture.ImageOptions{ChunkSize: 32 << 10})
	slowDir := filepath.Join(m.grammar2(slowRef, slowLayers[0].Digest.String()), "diff")
	if _, err := os.Stat(slowDir); err != nil {
		t.Fatal(err)
	}
	release := faults.HoldBlob(slowLayers[0].Digest)
	defer release()
	var slowDone atomic.Int32
	slowErrs := make(chan error, 4)
	for range 4 {
		go func() {
			defer slowDone.Add(1)
			// f000 starts the blob, outside the tail read at open.
			_, err := os.ReadFile(filepath.Join(slowDir, "d", "f000"))
			slowErrs <- err
		}()
	}

	var wg sync.WaitGroup
	var bad atomic.Int64
	var filesRead atomic.Int64
	for r := range readers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			l := lut[r%layerCount]
			n := len(l.files)
			for k := range n {
				p := l.files[(k+r)%n]
				b, err := os.ReadFile(filepath.Join(l.dir, p))
				if err != nil {
					t.Errorf("reader %d: %s: %v", r, p, err)
					bad.Add(1)
					continue
				}
				sum := sha256.Sum256(b)
				if hex.EncodeToString(sum[:]) != l.sums[p] {
					t.Errorf("reader %d: %s: wrong content", r, p)
					bad.Add(1)
				}
				filesRead.Add(1)
			}
		}()
	}
	wg.Wait()
	stuck := 4 - slowDone.Load()
	t.Logf("figures: %d readers over %d layers read %d files, %d wrong or failed; %d of 4 slow-layer readers still waiting when they finished",
		readers, layerCount, filesRead.Load(), bad.Load(), stuck)
	if stuck != 4 {
		t.Errorf("only %d of 4 readers of the held layer were still waiting: was the blob really held?", stuck)
	}

	release()
	for range 4 {
		if err := <-slowErrs; err != nil {
			t.Errorf("slow layer read after release: %v", err)
		}
	}
	compareTree(t, slowDir, slowTar)
}
