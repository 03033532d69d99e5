// Package alsfs serves a pool as poolfs's additional layer store: the FUSE
// mount at <ROOT>/.pool that answers the paths of both grammars (package
// alspath) with the pool's layers (package pool), each a directory of
// diff, info and blob or a rootfs.<ID>, and the read-only mount at
// <ROOT>/.trees that serves the layers' trees. A layer's tree itself is
// package fs's; who may reach the store is Access's.
package alsfs

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fuse"
	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"

	"github.com/poolfs/poolfs/alspath"
	layerfs "github.com/poolfs/poolfs/fs"
	"github.com/poolfs/poolfs/internal/mountpoint"
	"github.com/poolfs/poolfs/pool"
)

// Options says how Mount serves a pool.
type Options struct {
	// Access says who besides root may reach the store (the zero value:
	// nobody).
	Access Access
	// InPlaceTrees serves the layers' trees inside the pool's mount, as
	// one writable mount, rather than on a read-only one of their own.
	InPlaceTrees bool
	// Observer is told about the operations of both mounts (nil: nobody).
	Observer layerfs.OpObserver
	// Log gets a line per refused lookup and per problem (nil: the
	// standard logger).
	Log *logrus.Entry
}

// als is what the nodes of a pool's mounts share.
type als struct {
	pool   *pool.Pool
	access Access
	log    *logrus.Entry
	// trees is the name of the trees mount, beside the pool's mount in
	// the ALS root ("": trees are served in place; see treeNode).
	trees string

	mu      sync.Mutex
	prefers map[*pool.Layer]bool // see prefersOpens
}

// get is pool.Get for a lookup: its caller must be one Access lets make
// the daemon contact a registry (ErrAccess).
func (a *als) get(ctx context.Context, key pool.LayerKey) (*pool.Layer, error) {
	if err := a.access.check(ctx); err != nil {
		return nil, err
	}
	return a.pool.Get(ctx, key)
}

// Mounts are a pool's FUSE mounts under one ALS root.
type Mounts struct {
	PoolDir  string // <root>/.pool
	TreesDir string // <root>/.trees; "" with InPlaceTrees
	pool     *fuse.Server
	trees    *fuse.Server
}

// Mount serves p at <root>/.pool and, unless o.InPlaceTrees, its trees at
// <root>/.trees, clearing mounts a killed daemon left there. It creates
// root with o.Access, or warns if an existing one lets in more (see
// PrepareRoot).
func Mount(root string, p *pool.Pool, o Options) (*Mounts, error) {
	if o.Log == nil {
		o.Log = logrus.NewEntry(logrus.StandardLogger())
	}
	if err := PrepareRoot(root, o.Access, o.Log); err != nil {
		return nil, err
	}
	a := &als{pool: p, access: o.Access, log: o.Log, prefers: map[*pool.Layer]bool{}}
	m := &Mounts{PoolDir: filepath.Join(root, alspath.MountDir)}
	if !o.InPlaceTrees {
		m.TreesDir = filepath.Join(root, alspath.TreesDir)
		a.trees = alspath.TreesDir
		if err := mountpoint.Prepare(m.TreesDir); err != nil {
			return nil, err
		}
		opts := layerfs.Options()
		// A read-only superblock is the point of this mount: see trees.go.
		opts.DirectMountFlags = syscall.MS_NOSUID | syscall.MS_NODEV | syscall.MS_RDONLY
		opts.FsName = "poolfs-trees"
		// Opens cost nothing there: layers that would rather have
		// passthrough are served in place instead (see treeNode).
		srv, err := layerfs.Mount(m.TreesDir, newTrees(a), opts, layerfs.ServeOptions{Observer: o.Observer, FreeOpens: true})
		if err != nil {
			return nil, fmt.Errorf("mounting layer trees at %s: %w", m.TreesDir, err)
		}
		m.trees = srv
	}
	if err := mountpoint.Prepare(m.PoolDir); err != nil {
		m.unmountTrees()
		return nil, err
	}
	srv, err := layerfs.Mount(m.PoolDir, newRoot(a), layerfs.Options(), layerfs.ServeOptions{Observer: o.Observer})
	if err != nil {
		m.unmountTrees()
		return nil, fmt.Errorf("mounting pool at %s: %w", m.PoolDir, err)
	}
	m.pool = srv
	return m, nil
}

// Wait returns when the pool's mount is gone (Unmount, or umount from
// outside).
func (m *Mounts) Wait() { m.pool.Wait() }

// Unmount detaches both mounts. Running containers keep their overlay
// lower directories on the trees mount busy; it is then detached lazily
// and lives on until they stop.
func (m *Mounts) Unmount() error {
	err := unmount(m.pool, m.PoolDir)
	return errors.Join(err, m.unmountTrees())
}

func (m *Mounts) unmountTrees() error {
	if m.trees == nil {
		return nil
	}
	return unmount(m.trees, m.TreesDir)
}

// unmount detaches a mount, retrying while the kernel says it is busy and
// falling back to a lazy detach so that no dead mount is left behind. A
// mount already gone (unmounted from outside) is not an error.
func unmount(server *fuse.Server, dir string) error {
	if mounted, err := mountpoint.Mounted(dir); err == nil && !mounted {
		return nil
	}
	var err error
	for range 10 {
		if err = server.Unmount(); err == nil {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	if lerr := unix.Unmount(dir, unix.MNT_DETACH); lerr != nil {
		return fmt.Errorf("unmounting %s: %w (lazy detach: %v)", dir, err, lerr)
	}
	return nil
}
