package fs

import (
	"time"

	"github.com/hanwen/go-fuse/v2/fuse"
)

// OpObserver is told about every FUSE operation of the kinds a layer store
// sees (lookups, attributes, opens, flushes, releases, reads, directory
// listings, xattrs, readlink, statfs and the create/rmdir of the use
// protocol): its name, how long poolfs took to answer, and the answer. It
// must not block; metrics are its use.
type OpObserver func(op string, took time.Duration, st fuse.Status)

// observed wraps a RawFileSystem, timing the operations it overrides; the
// rest pass straight through the embedded value.
type observed struct {
	fuse.RawFileSystem
	obs OpObserver
}

func (o observed) done(op string, start time.Time, st fuse.Status) fuse.Status {
	o.obs(op, time.Since(start), st)
	return st
}

func (o observed) Lookup(cancel <-chan struct{}, h *fuse.InHeader, name string, out *fuse.EntryOut) fuse.Status {
	t := time.Now()
	return o.done("lookup", t, o.RawFileSystem.Lookup(cancel, h, name, out))
}

func (o observed) GetAttr(cancel <-chan struct{}, in *fuse.GetAttrIn, out *fuse.AttrOut) fuse.Status {
	t := time.Now()
	return o.done("getattr", t, o.RawFileSystem.GetAttr(cancel, in, out))
}

func (o observed) Open(cancel <-chan struct{}, in *fuse.OpenIn, out *fuse.OpenOut) fuse.Status {
	t := time.Now()
	return o.done("open", t, o.RawFileSystem.Open(cancel, in, out))
}

func (o observed) Flush(cancel <-chan struct{}, in *fuse.FlushIn) fuse.Status {
	t := time.Now()
	return o.done("flush", t, o.RawFileSystem.Flush(cancel, in))
}

// Release has no answer; it is reported as OK.
func (o observed) Release(cancel <-chan struct{}, in *fuse.ReleaseIn) {
	t := time.Now()
	o.RawFileSystem.Release(cancel, in)
	o.done("release", t, fuse.OK)
}

func (o observed) Read(cancel <-chan struct{}, in *fuse.ReadIn, buf []byte) (fuse.ReadResult, fuse.Status) {
	t := time.Now()
	r, st := o.RawFileSystem.Read(cancel, in, buf)
	return r, o.done("read", t, st)
}

func (o observed) OpenDir(cancel <-chan struct{}, in *fuse.OpenIn, out *fuse.OpenOut) fuse.Status {
	t := time.Now()
	return o.done("opendir", t, o.RawFileSystem.OpenDir(cancel, in, out))
}

func (o observed) ReadDir(cancel <-chan struct{}, in *fuse.ReadIn, out *fuse.DirEntryList) fuse.Status {
	t := time.Now()
	return o.done("readdir", t, o.RawFileSystem.ReadDir(cancel, in, out))
}

func (o observed) ReadDirPlus(cancel <-chan struct{}, in *fuse.ReadIn, out *fuse.DirEntryList) fuse.Status {
	t := time.Now()
	return o.done("readdirplus", t, o.RawFileSystem.ReadDirPlus(cancel, in, out))
}

func (o observed) Readlink(cancel <-chan struct{}, h *fuse.InHeader) ([]byte, fuse.Status) {
	t := time.Now()
	b, st := o.RawFileSystem.Readlink(cancel, h)
	return b, o.done("readlink", t, st)
}

func (o observed) GetXAttr(cancel <-chan struct{}, h *fuse.InHeader, attr string, dest []byte) (uint32, fuse.Status) {
	t := time.Now()
	n, st := o.RawFileSystem.GetXAttr(cancel, h, attr, dest)
	return n, o.done("getxattr", t, st)
}

func (o observed) ListXAttr(cancel <-chan struct{}, h *fuse.InHeader, dest []byte) (uint32, fuse.Status) {
	t := time.Now()
	n, st := o.RawFileSystem.ListXAttr(cancel, h, dest)
	return n, o.done("listxattr", t, st)
}

func (o observed) Create(cancel <-chan struct{}, in *fuse.CreateIn, name string, out *fuse.CreateOut) fuse.Status {
	t := time.Now()
	return o.done("create", t, o.RawFileSystem.Create(cancel, in, name, out))
}

func (o observed) Rmdir(cancel <-chan struct{}, h *fuse.InHeader, name string) fuse.Status {
	t := time.Now()
	return o.done("rmdir", t, o.RawFileSystem.Rmdir(cancel, h, name))
}

func (o observed) StatFs(cancel <-chan struct{}, h *fuse.InHeader, out *fuse.StatfsOut) fuse.Status {
	t := time.Now()
	return o.done("statfs", t, o.RawFileSystem.StatFs(cancel, h, out))
}
