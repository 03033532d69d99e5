package fs

import (
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/poolfs/poolfs/layer"
)

// noFlush answers FLUSH with ENOSYS. The kernel then stops sending FLUSH
// for the whole connection (fc->no_flush); otherwise every close(2) of a
// file waits for one round trip to the daemon, which has nothing to flush:
// nothing on a poolfs mount is written through a file handle.
type noFlush struct {
	fuse.RawFileSystem
}

func (n noFlush) Flush(cancel <-chan struct{}, in *fuse.FlushIn) fuse.Status {
	return fuse.ENOSYS
}

// freeOpens answers OPEN with ENOSYS. The kernel then stops sending OPEN
// and RELEASE for the whole connection (fc->no_open, FUSE_NO_OPEN_SUPPORT)
// and treats every file as opened with FOPEN_KEEP_CACHE: opening a file
// whose pages the kernel holds costs no round trip at all, as on a local
// disk. The round trips of OPEN, FLUSH and RELEASE cost about 40 µs a file
// on the development machine (reading 6000 cached 3 KB files took 64 µs a
// file with them, 22 µs without, 20 µs on ext4).
//
// The price: reads come without a handle (Fh 0, which go-fuse maps to no
// file; fileNode.Read needs none), and passthrough is impossible on the
// connection, since a backing file can only be named in an OPEN reply.
// Which layers are better served so is PrefersOpens's call. A mount
// serving freeOpens must be read-only: no OPEN means no EROFS for opens
// that could write; the kernel refuses them itself on a read-only
// superblock.
type freeOpens struct {
	fuse.RawFileSystem
}

func (f freeOpens) Open(cancel <-chan struct{}, in *fuse.OpenIn, out *fuse.OpenOut) fuse.Status {
	return fuse.ENOSYS
}

// Release never comes once OPEN failed with ENOSYS; a handle-less release
// is dropped rather than passed to go-fuse, which has no handle 0.
func (f freeOpens) Release(cancel <-chan struct{}, in *fuse.ReleaseIn) {
	if in.Fh != 0 {
		f.RawFileSystem.Release(cancel, in)
	}
}

// What an open and passthrough are worth, for PrefersOpens. Measured on
// the development machine (2 busy cores): an OPEN with its RELEASE costs
// about 40 µs over a local disk's open; a 512 MiB cached file read with
// the page cache dropped took 0.2–0.3 s through passthrough and 0.6–1.2 s
// through the daemon, so passthrough saves about 1 ms per MiB.
const (
	openCostNs          = 40_000
	passthroughGainNsMB = 1_000_000
)

// PrefersOpens reports whether the view rooted at root is better served
// on a mount that sees every open, where its files of at least minWhole
// bytes can be read through passthrough once cached, than on a freeOpens
// mount, where opens cost nothing but every read the page cache misses
// goes through the daemon. It weighs the opens of the view's other
// regular files against the passthrough gain on the bytes of its large
// ones, as if the whole view were read once: a layer of one big file
// prefers opens, a root file system of thousands of small files does not.
// Hard-linked files count once.
func PrefersOpens(root *layer.Entry, minWhole int64) bool {
	if minWhole <= 0 {
		return false
	}
	var small, large int64 // files below minWhole, bytes of those at or above
	eachEntry(root, func(e *layer.Entry) {
		switch {
		case e.Type != layer.TypeReg:
		case e.Size >= minWhole:
			large += e.Size
		default:
			small++
		}
	})
	return large*passthroughGainNsMB>>20 > small*openCostNs
}
