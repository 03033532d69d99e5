package fs

import (
	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// NewNodeFS is go-fuse's fs.NewNodeFS plus cached negative lookups for
// nodes that ask for them and directory listings kept by the kernel (see
// cachedListings).
//
// The kernel caches a failed lookup only when the reply is success with
// node ID 0 and an entry timeout; an ENOENT error reply is never cached.
// go-fuse v2.12 builds that reply only from Options.NegativeTimeout (which
// poolfs must leave nil: other parts of the mount answer ENOENT for
// transient reasons) and drops the timeout a node's Lookup sets on an
// ENOENT. This wrapper sends an ENOENT lookup that carries an entry timeout
// as the cacheable form. Buffers are zeroed per request, so only lookups
// that set a timeout on purpose are affected.
//
// FLUSH is answered with ENOSYS (see noFlush).
func NewNodeFS(root gofs.InodeEmbedder, opts *gofs.Options) fuse.RawFileSystem {
	return noFlush{negativeEntries{cachedListings{gofs.NewNodeFS(root, opts)}}}
}

// ServeOptions are poolfs's choices for one mount beside go-fuse's.
type ServeOptions struct {
	// Observer is told about every operation (nil: nobody).
	Observer OpObserver
	// FreeOpens makes the kernel open files without asking the daemon
	// (see freeOpens): the mount must be read-only, and gets no
	// passthrough.
	FreeOpens bool
}

// NewNodeFSWith is NewNodeFS served as o says.
func NewNodeFSWith(root gofs.InodeEmbedder, opts *gofs.Options, o ServeOptions) fuse.RawFileSystem {
	raw := NewNodeFS(root, opts)
	if o.FreeOpens {
		raw = freeOpens{raw}
	}
	if o.Observer != nil {
		raw = observed{raw, o.Observer}
	}
	return raw
}

// Mount is go-fuse's fs.Mount with the file system from NewNodeFSWith.
func Mount(dir string, root gofs.InodeEmbedder, opts *gofs.Options, o ServeOptions) (*fuse.Server, error) {
	return serve(dir, NewNodeFSWith(root, opts, o), opts)
}

// serve mounts raw at dir and serves it until unmounted.
func serve(dir string, raw fuse.RawFileSystem, opts *gofs.Options) (*fuse.Server, error) {
	var mo *fuse.MountOptions
	if opts != nil {
		mo = &opts.MountOptions
	}
	server, err := fuse.NewServer(raw, dir, mo)
	if err != nil {
		return nil, err
	}
	go server.Serve()
	if err := server.WaitMount(); err != nil {
		// Like go-fuse's Mount: the serve loop ends on its own when the
		// mount did not happen.
		return nil, err
	}
	return server, nil
}

type negativeEntries struct {
	fuse.RawFileSystem
}

func (f negativeEntries) Lookup(cancel <-chan struct{}, header *fuse.InHeader, name string, out *fuse.EntryOut) fuse.Status {
	st := f.RawFileSystem.Lookup(cancel, header, name, out)
	if st == fuse.ENOENT && out.EntryTimeout() > 0 {
		*out = fuse.EntryOut{EntryValid: out.EntryValid, EntryValidNsec: out.EntryValidNsec}
		return fuse.OK
	}
	return st
}
