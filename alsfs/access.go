package alsfs

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fuse"
	"github.com/sirupsen/logrus"

	"github.com/poolfs/poolfs/layer"
)

// Access says who besides root may reach the store, like the modes of
// podman's own store (/var/lib/containers/storage is 0700). The zero value
// is root only.
//
// The kernel enforces it: ROOT and the mounts' own directories and files
// carry these modes, and both mounts use default_permissions, so a lookup
// by anyone else is refused before it reaches the daemon. The daemon checks
// the caller again before a lookup can make it contact a registry (see
// als.get), for callers the kernel lets through on capabilities alone.
type Access struct {
	// Group lets the members of group GID read the store and make the
	// daemon fetch on their behalf (for rootless podman users who share it).
	Group bool
	GID   uint32
}

// ErrAccess says the caller of a lookup may not make the daemon contact a
// registry; the lookup fails with EACCES.
var ErrAccess = errors.New("caller may not make the daemon fetch")

// dirMode is the permission of ROOT and of the mounts' own directories.
func (a Access) dirMode() uint32 {
	if a.Group {
		return 0o750
	}
	return 0o700
}

// mountDirAttr is the attribute of the mounts' own (read-only) directories.
func (a Access) mountDirAttr(out *fuse.Attr) {
	out.Mode = syscall.S_IFDIR | a.dirMode()&0o555
	out.Nlink = 2
	out.Owner = a.owner()
}

// fileAttr is the attribute of the pool's own files (info, blob):
// group-readable only if groupRead and the group is let in.
func (a Access) fileAttr(out *fuse.Attr, size int64, groupRead bool) {
	out.Mode = syscall.S_IFREG | 0o400
	if a.Group && groupRead {
		out.Mode |= 0o040
	}
	out.Owner = a.owner()
	out.Nlink = 1
	out.Size = uint64(size)
	out.Blocks = (uint64(size) + 511) / 512
	out.Blksize = 4096
}

func (a Access) owner() fuse.Owner {
	if a.Group {
		return fuse.Owner{Gid: a.GID}
	}
	return fuse.Owner{}
}

// check refuses a FUSE request (ctx) from a caller other than root or, if
// let in, a member of the group. Requests that do not come from FUSE (the
// daemon's own, tests calling Get) pass.
func (a Access) check(ctx context.Context) error {
	c, ok := fuse.FromContext(ctx)
	if !ok || c.Uid == 0 {
		return nil
	}
	if a.Group {
		if c.Gid == a.GID {
			return nil
		}
		// The request carries the fs uid and gid only; supplementary
		// groups are the caller's (a thread's /proc entry works too).
		groups, err := procGroups(c.Pid)
		if err == nil && groups[a.GID] {
			return nil
		}
		if err != nil {
			return fmt.Errorf("%w (uid %d, gid %d, pid %d; its groups: %v)", ErrAccess, c.Uid, c.Gid, c.Pid, err)
		}
	}
	return fmt.Errorf("%w (uid %d, gid %d, pid %d)", ErrAccess, c.Uid, c.Gid, c.Pid)
}

// procGroups reads the supplementary groups of process (or thread) pid.
func procGroups(pid uint32) (map[uint32]bool, error) {
	if pid == 0 {
		return nil, errors.New("no pid in the request")
	}
	b, err := os.ReadFile("/proc/" + strconv.FormatUint(uint64(pid), 10) + "/status")
	if err != nil {
		return nil, err
	}
	return parseGroups(b)
}

// parseGroups reads the Groups line of a /proc/<pid>/status.
func parseGroups(status []byte) (map[uint32]bool, error) {
	sc := bufio.NewScanner(bytes.NewReader(status))
	for sc.Scan() {
		rest, ok := bytes.CutPrefix(sc.Bytes(), []byte("Groups:"))
		if !ok {
			continue
		}
		out := map[uint32]bool{}
		for _, f := range bytes.Fields(rest) {
			g, err := strconv.ParseUint(string(f), 10, 32)
			if err != nil {
				return nil, fmt.Errorf("bad group %q in the Groups line", f)
			}
			out[uint32(g)] = true
		}
		return out, nil
	}
	return nil, errors.New("no Groups line")
}

// PrepareRoot creates ROOT with a's mode (and group), or, if it exists,
// warns when its mode lets in more than a does, or keeps out the group a
// lets in. An existing ROOT is not changed: the mounts' own directories
// carry a's modes whatever ROOT's are, and ROOT is the administrator's.
func PrepareRoot(root string, a Access, log *logrus.Entry) error {
	fi, err := os.Stat(root)
	if errors.Is(err, fs.ErrNotExist) {
		if err := os.MkdirAll(filepath.Dir(root), 0o755); err != nil {
			return fmt.Errorf("creating ROOT's parent %s: %w", filepath.Dir(root), err)
		}
		if err := os.Mkdir(root, os.FileMode(a.dirMode())); err != nil {
			return fmt.Errorf("creating ROOT %s: %w", root, err)
		}
		// Mkdir's mode went through the umask, and the group is set
		// only now: set both exactly.
		if a.Group {
			if err := os.Chown(root, 0, int(a.GID)); err != nil {
				return fmt.Errorf("giving ROOT %s to group %d: %w", root, a.GID, err)
			}
		}
		if err := os.Chmod(root, os.FileMode(a.dirMode())); err != nil {
			return fmt.Errorf("setting the mode of ROOT %s: %w", root, err)
		}
		return nil
	}
	if err != nil {
		return fmt.Errorf("checking ROOT %s: %w", root, err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("ROOT %s is not a directory", root)
	}
	log = log.WithFields(logrus.Fields{"path": root, "mode": fmt.Sprintf("%#o", fi.Mode().Perm())})
	st, _ := fi.Sys().(*syscall.Stat_t)
	perm := uint32(fi.Mode().Perm())
	switch {
	case perm&0o007 != 0:
		log.Warn("ROOT is open to every local user; podman's own store is 0700 (chmod it; the mounts inside stay closed to them)")
	case perm&0o070 != 0 && !a.Group:
		log.Warn("ROOT is open to its group, but no group is let in (--group); chmod it 0700")
	case perm&0o070 != 0 && st != nil && st.Gid != a.GID:
		log.WithField("gid", st.Gid).Warn("ROOT is open to a group other than the one let in (--group)")
	case a.Group && (perm&0o050 != 0o050 || st != nil && st.Gid != a.GID):
		log.WithField("want_gid", a.GID).Warn("the group let in (--group) cannot reach ROOT; chgrp it and chmod it 0750")
	}
	return nil
}

// worldReadable reports whether every file and directory of the layer may
// be read by anyone (mode o+r, and o+x for directories): only then does
// the blob, which holds all of them, expose nothing more than the tree.
func worldReadable(root *layer.Entry) bool {
	seen := map[*layer.Entry]bool{}
	var walk func(e *layer.Entry) bool
	walk = func(e *layer.Entry) bool {
		if seen[e] {
			return true
		}
		seen[e] = true
		switch e.Type {
		case layer.TypeDir:
			if e.Mode&0o005 != 0o005 {
				return false
			}
			for i := range e.NumChildren() {
				if _, c := e.ChildAt(i); !walk(c) {
					return false
				}
			}
		case layer.TypeReg:
			if e.Mode&0o004 == 0 {
				return false
			}
		}
		return true
	}
	return walk(root)
}
