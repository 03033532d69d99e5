package pool

import (
	"errors"
	"fmt"
	"path/filepath"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/poolfs/poolfs/alspath"
	layerfs "github.com/poolfs/poolfs/fs"
	"github.com/poolfs/poolfs/internal/mountpoint"
)

// MountOptions says how Mount serves a pool.
type MountOptions struct {
	// InPlaceTrees serves the layers' trees inside the pool's mount, as
	// one writable mount, rather than on a read-only one of their own.
	InPlaceTrees bool
	// Observer is told about the operations of both mounts (nil: nobody).
	Observer layerfs.OpObserver
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
// root with the pool's Access, or warns if an existing one lets in more
// (see PrepareRoot). It must be called before p serves anything (it sets
// the pool's trees mount).
func Mount(root string, p *Pool, o MountOptions) (*Mounts, error) {
	if err := PrepareRoot(root, p.access, p.log); err != nil {
		return nil, err
	}
	m := &Mounts{PoolDir: filepath.Join(root, alspath.MountDir)}
	if !o.InPlaceTrees {
		m.TreesDir = filepath.Join(root, alspath.TreesDir)
		if err := mountpoint.Prepare(m.TreesDir); err != nil {
			return nil, err
		}
		opts := layerfs.Options()
		// A read-only superblock is the point of this mount: see trees.go.
		opts.DirectMountFlags = syscall.MS_NOSUID | syscall.MS_NODEV | syscall.MS_RDONLY
		opts.FsName = "poolfs-trees"
		// Opens cost nothing there: layers that would rather have
		// passthrough are served in place instead (see treeNode).
		srv, err := layerfs.Mount(m.TreesDir, NewTrees(p), opts, layerfs.ServeOptions{Observer: o.Observer, FreeOpens: true})
		if err != nil {
			return nil, fmt.Errorf("mounting layer trees at %s: %w", m.TreesDir, err)
		}
		m.trees = srv
		p.SetTreesMount(alspath.TreesDir)
	}
	if err := mountpoint.Prepare(m.PoolDir); err != nil {
		m.unmountTrees()
		return nil, err
	}
	srv, err := layerfs.Mount(m.PoolDir, NewRoot(p), layerfs.Options(), layerfs.ServeOptions{Observer: o.Observer})
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
