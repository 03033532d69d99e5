package fs

import (
	"archive/tar"
	"bytes"
	"context"
	"sync"
	"testing"
	"time"

	"github.com/containerd/stargz-snapshotter/estargz"
	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/poolfs/poolfs/fs/fstest"
	"github.com/poolfs/poolfs/layer"
)

// sampleLayer is fstest.SampleTar as an opened eStargz layer.
type sampleLayer struct {
	tar  []byte
	blob *fstest.MemBlob
	l    *layer.Layer
}

func openSample(t testing.TB, opts ...estargz.Option) *sampleLayer {
	t.Helper()
	tarBytes := fstest.SampleTar(t)
	data, toc := fstest.EStargz(t, tarBytes, opts...)
	blob := fstest.NewMemBlob(data)
	l, err := layer.Open(context.Background(), blob, toc, nil, nil)
	if err != nil {
		t.Fatalf("layer.Open: %v", err)
	}
	return &sampleLayer{tar: tarBytes, blob: blob, l: l}
}

// mount serves root at a fresh directory with opts (Options() if nil)
// through this package's NewNodeFS, unmounting when the test ends.
func mount(t testing.TB, root gofs.InodeEmbedder, opts *gofs.Options) string {
	t.Helper()
	if opts == nil {
		opts = Options()
	}
	return mountRaw(t, NewNodeFS(root, opts), opts)
}

func mountRaw(t testing.TB, raw fuse.RawFileSystem, opts *gofs.Options) string {
	t.Helper()
	dir := t.TempDir()
	server, err := fuse.NewServer(raw, dir, &opts.MountOptions)
	if err != nil {
		t.Fatalf("mounting at %s: %v", dir, err)
	}
	go server.Serve()
	if err := server.WaitMount(); err != nil {
		t.Fatalf("waiting for mount at %s: %v", dir, err)
	}
	t.Cleanup(func() {
		if err := server.Unmount(); err != nil {
			t.Errorf("unmounting %s: %v", dir, err)
		}
	})
	return dir
}

// countingFS counts the kernel's LOOKUP requests per name.
type countingFS struct {
	fuse.RawFileSystem
	mu      sync.Mutex
	lookups map[string]int
}

func (c *countingFS) Lookup(cancel <-chan struct{}, header *fuse.InHeader, name string, out *fuse.EntryOut) fuse.Status {
	c.mu.Lock()
	c.lookups[name]++
	c.mu.Unlock()
	return c.RawFileSystem.Lookup(cancel, header, name, out)
}

func (c *countingFS) count(name string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lookups[name]
}

// fakeReader serves a hand-built view; ReadAt answers with readFn.
type fakeReader struct {
	root   *layer.Entry
	readFn func(e *layer.Entry, p []byte, off int64) (int, error)
}

func (f *fakeReader) Root() *layer.Entry { return f.root }

func (f *fakeReader) ReadAt(ctx context.Context, e *layer.Entry, p []byte, off int64) (int, error) {
	return f.readFn(e, p, off)
}

// tinyView is a root holding one regular file "f" of 100 bytes.
func tinyView(t testing.TB) (*layer.Entry, *layer.Entry) {
	t.Helper()
	root := viewOf(t,
		&tar.Header{Name: "./", Typeflag: tar.TypeDir, Mode: 0o755},
		&tar.Header{Name: "f", Typeflag: tar.TypeReg, Mode: 0o644, Size: 100,
			PAXRecords: map[string]string{"SCHILY.xattr.user.a": "12345", "SCHILY.xattr.user.b": ""}})
	return root, root.Child("f")
}

// viewOf is the root of the view of a layer made of hdrs (regular files
// filled with 'x'), opened as eStargz.
func viewOf(t testing.TB, hdrs ...*tar.Header) *layer.Entry {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, h := range hdrs {
		if h.ModTime.IsZero() {
			h.ModTime = time.Unix(1700000000, 0)
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if h.Typeflag == tar.TypeReg && h.Size > 0 {
			tw.Write(bytes.Repeat([]byte("x"), int(h.Size)))
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	data, toc := fstest.EStargz(t, buf.Bytes())
	l, err := layer.Open(context.Background(), fstest.NewMemBlob(data), toc, nil, nil)
	if err != nil {
		t.Fatalf("layer.Open: %v", err)
	}
	return l.Root()
}
