package integration

import (
	"context"
	"encoding/base64"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/poolfs/poolfs/cache"
	layerfs "github.com/poolfs/poolfs/fs"
	"github.com/poolfs/poolfs/pool"
	"github.com/poolfs/poolfs/remote"
	"github.com/poolfs/poolfs/test/fixture"
)

// mounted is one pool mounted for a test, served in-process so the test can
// look at the pool's state as well as the files.
type mounted struct {
	Dir  string // <ALS root>/.pool
	Pool *pool.Pool
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
	requireFUSE(t)
	log := logrus.New()
	log.SetLevel(logrus.DebugLevel)
	log.SetOutput(testWriter{t})
	entry := logrus.NewEntry(log)

	dir := filepath.Join(t.TempDir(), "als", ".pool")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	disk, err := cache.NewDisk(filepath.Join(t.TempDir(), "cache"), entry)
	if err != nil {
		t.Fatal(err)
	}
	c := cache.NewTiered(cache.NewMemory(256<<20), disk)
	res := remote.New(remote.Options{Insecure: []string{reg.Host}, Log: entry})
	p := pool.New(res, c, entry)
	server, err := layerfs.Mount(dir, pool.NewRoot(p), layerfs.Options())
	if err != nil {
		t.Fatalf("mounting pool: %v", err)
	}
	t.Cleanup(func() {
		if err := server.Unmount(); err != nil {
			t.Logf("unmount: %v; detaching", err)
			_ = syscall.Unmount(dir, syscall.MNT_DETACH)
		}
	})
	return &mounted{Dir: dir, Pool: p}
}

// testWriter sends daemon logs to the test log, shown on failure or -v.
type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
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
	return filepath.Join(append(elems, pool.RootfsPrefix+id)...)
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
