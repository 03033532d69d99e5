package integration

import (
	"context"
	"encoding/base64"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/poolfs/poolfs/alspath"
	"github.com/poolfs/poolfs/cache"
	"github.com/poolfs/poolfs/pool"
	"github.com/poolfs/poolfs/profilestore"
	"github.com/poolfs/poolfs/test/fixture"
)

// mounted is one pool mounted for a test, served in-process so the test can
// look at the pool's state as well as the files.
type mounted struct {
	Dir      string // <ALS root>/.pool
	TreesDir string // <ALS root>/.trees; "" when trees are in place
	Pool     *pool.Pool
	Disk     *cache.Disk
	// Published finds and pushes profiles in the registry through the
	// pool's resolver.
	Published *profilestore.Registry
	Reads     atomic.Int64 // FUSE READ requests the daemon answered
	GetAttrs  atomic.Int64 // FUSE GETATTR requests, both mounts
	Opens     atomic.Int64 // FUSE OPEN requests, both mounts
}

func requireFUSE(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount FUSE without fusermount")
	}
	if _, err := os.Stat("/dev/fuse"); err != nil {
		t.Skip("needs /dev/fuse")
	}
}

// mountPool mounts a fresh pool (empty caches) at a temp <ALS root>/.pool.
func mountPool(t *testing.T, reg *fixture.Registry) *mounted {
	t.Helper()
	return mountPoolOpts(t, reg, mountOpts{})
}

// testWriter sends daemon logs to the test log, shown on failure or -v.
// A line logged once the test has ended (a background goroutine the test
// did not wait for) goes to stderr, named, instead of panicking the whole
// test binary the way t.Log does then.
type testWriter struct {
	t     *testing.T
	mu    sync.Mutex
	ended bool
}

func newTestWriter(t *testing.T) *testWriter {
	w := &testWriter{t: t}
	t.Cleanup(func() {
		w.mu.Lock()
		w.ended = true
		w.mu.Unlock()
	})
	return w
}

func (w *testWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.ended {
		fmt.Fprintf(os.Stderr, "logged after %s ended: %s", w.t.Name(), p)
		return len(p), nil
	}
	w.t.Helper()
	w.t.Log(string(p))
	return len(p), nil
}

// grammar2 is <pool>/<base64std(ref)>/<digest>, what containers/storage asks.
func (m *mounted) grammar2(ref, dg string) string {
	return filepath.Join(m.Dir, base64.StdEncoding.EncodeToString([]byte(ref)), dg)
}

// grammar1 is <pool>/<b64(k=v)>.../rootfs.<id>, what `poolfs link` asks.
func (m *mounted) grammar1(enc *base64.Encoding, id string, kvs ...string) string {
	elems := []string{m.Dir}
	for _, kv := range kvs {
		e := enc.EncodeToString([]byte(kv))
		if strings.Contains(e, "/") {
			return ""
		}
		elems = append(elems, e)
	}
	return filepath.Join(append(elems, alspath.RootfsPrefix+id)...)
}

func pushImage(t *testing.T, reg *fixture.Registry, repo string, tars [][]byte, opts fixture.ImageOptions) (string, []fixture.LayerInfo) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	ref := fixture.ImageRef(reg.Host, repo, "v1")
	_, layers, err := fixture.PushImage(ctx, ref, tars, opts)
	if err != nil {
		t.Fatalf("pushing %s: %v", ref, err)
	}
	return ref, layers
}
