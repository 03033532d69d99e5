package fs

import (
	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// Options returns the go-fuse options poolfs mounts with. Each call
// returns a fresh value the caller may adjust.
//
//   - NullPermissions: without it go-fuse shows mode 0000 as 0644 (0755 for
//     directories), and the view must show modes exactly.
//   - Long entry and attribute timeouts: views never change.
//   - NegativeTimeout stays nil: other parts of the mount answer ENOENT for
//     transient reasons. Layer directories ask for cached misses themselves
//     (see dirNode.Lookup and NewNodeFS).
func Options() *gofs.Options {
	entry, attr := cacheTimeout, cacheTimeout
	return &gofs.Options{
		MountOptions: fuse.MountOptions{
			AllowOther:  true,
			DirectMount: true,
			FsName:      "poolfs",
			Name:        "poolfs",
			// The kernel checks modes against the caller, as on a local disk:
			// with allow_other and no checks, any local user could read
			// files a layer keeps private (/etc/shadow). Not "ro": the
			// pool must receive create(use) and rmdir(<digest>).
			Options:      []string{"default_permissions"},
			MaxReadAhead: 1 << 20,
			MaxWrite:     1 << 20,
			EnableLocks:  false,
			// Link targets never change: without this every path through a
			// symlink is a READLINK round trip, and each one also marks
			// the link's atime stale, costing a GETATTR on the next stat.
			EnableSymlinkCaching: true,
		},
		EntryTimeout:    &entry,
		AttrTimeout:     &attr,
		NullPermissions: true,
	}
}
