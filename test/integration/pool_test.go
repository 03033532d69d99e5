package integration

import (
	"archive/tar"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"

	"github.com/poolfs/poolfs/alspath"
	"github.com/poolfs/poolfs/layer"
	"github.com/poolfs/poolfs/pool"
	"github.com/poolfs/poolfs/test/fixture"
)

// TestGrammar2 checks what released containers/storage asks for: by blob
// digest (podman up to 5.0) and by TOC digest (5.1 on), the layer exists
// (diff, info, blob), diff is the tar exactly, info is complete and blob is
// the compressed layer byte for byte; with the trees on their own mount and
// in place.
func TestGrammar2(t *testing.T) {
	reg := fixture.StartRegistry(t)
	tarBytes := fixture.KitchenSinkTar()
	ref, layers := pushImage(t, reg, "test/sink", [][]byte{tarBytes}, fixture.ImageOptions{ChunkSize: 64 << 10})
	for _, inPlace := range []bool{false, true} {
		t.Run(fmt.Sprintf("in_place_trees=%v", inPlace), func(t *testing.T) {
			m := mountPoolOpts(t, reg, mountOpts{InPlaceTrees: inPlace})
			testGrammar2(t, m, ref, layers[0], tarBytes)
			if !inPlace {
				sameTree(t, m, ref, layers[0])
			}
		})
	}
}

func testGrammar2(t *testing.T, m *mounted, ref string, li fixture.LayerInfo, tarBytes []byte) {

	for _, by := range []struct {
		name   string
		digest digest.Digest
	}{{"blob digest", li.Digest}, {"TOC digest", li.TOCDigest}} {
		t.Run(by.name, func(t *testing.T) {
			dir := m.grammar2(ref, by.digest.String())
			for _, f := range []string{"diff", "info", "blob"} {
				if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
					t.Fatalf("the layer must exist for the client: %v", err)
				}
			}
			compareTree(t, filepath.Join(dir, "diff"), tarBytes)
			checkInfo(t, filepath.Join(dir, "info"), li)
		})
	}

	// The blob is served byte for byte: its sha256 is the layer digest.
	blob, err := os.ReadFile(filepath.Join(m.grammar2(ref, li.Digest.String()), "blob"))
	if err != nil {
		t.Fatal(err)
	}
	if int64(len(blob)) != li.Size || digest.FromBytes(blob) != li.Digest {
		t.Errorf("blob: %d bytes, digest %s; want %d bytes, %s", len(blob), digest.FromBytes(blob), li.Size, li.Digest)
	}
}

// sameTree checks that on the trees mount both names of a layer lead to one
// tree: one inode, one set of nodes in memory. (In place, each name has
// nodes of its own.)
func sameTree(t *testing.T, m *mounted, ref string, li fixture.LayerInfo) {
	t.Helper()
	byBlob := tree(t, filepath.Join(m.grammar2(ref, li.Digest.String()), "diff"))
	byTOC := tree(t, filepath.Join(m.grammar2(ref, li.TOCDigest.String()), "diff"))
	a, errA := os.Stat(byBlob)
	b, errB := os.Stat(byTOC)
	if errA != nil || errB != nil || !os.SameFile(a, b) {
		t.Errorf("the tree by blob digest (%s) and by TOC digest (%s) differ: %v, %v", byBlob, byTOC, errA, errB)
	}
}

// TestSecondWalkStaysInKernel checks why the trees have a mount of their
// own: there, a second walk of a layer (stat of every entry, listing of
// every directory) is answered by the kernel alone. In place, on the
// writable pool mount, each directory's atime goes stale when its listing is
// read, and the second walk pays a GETATTR per directory.
func TestSecondWalkStaysInKernel(t *testing.T) {
	reg := fixture.StartRegistry(t)
	var entries []fixture.TarEntry
	for i := range 40 {
		d := fmt.Sprintf("d%02d", i)
		entries = append(entries, fixture.TarEntry{Name: d, Type: tar.TypeDir, Mode: 0o755})
		for j := range 3 {
			entries = append(entries, fixture.TarEntry{Name: fmt.Sprintf("%s/f%d", d, j), Mode: 0o644, Content: []byte(d)})
		}
	}
	ref, layers := pushImage(t, reg, "test/walk", [][]byte{fixture.BuildTar(entries)}, fixture.ImageOptions{})
	for _, c := range []struct {
		inPlace bool
		want    func(getattrs int64) bool
		wants   string
	}{
		{false, func(n int64) bool { return n == 0 }, "none"},
		{true, func(n int64) bool { return n >= 40 }, "one per directory (documents the kernel's behaviour)"},
	} {
		t.Run(fmt.Sprintf("in_place_trees=%v", c.inPlace), func(t *testing.T) {
			m := mountPoolOpts(t, reg, mountOpts{InPlaceTrees: c.inPlace})
			root := tree(t, filepath.Join(m.grammar2(ref, layers[0].Digest.String()), "diff"))
			walk := func() int {
				n := 0
				err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
					if err != nil {
						return err
					}
					n++
					_, err = os.Lstat(p)
					return err
				})
				if err != nil {
					t.Fatal(err)
				}
				return n
			}
			first := walk()
			before := m.GetAttrs.Load()
			if second := walk(); second != first || first != 1+len(entries) {
				t.Fatalf("walks saw %d and %d entries, want %d", first, second, 1+len(entries))
			}
			if n := m.GetAttrs.Load() - before; !c.want(n) {
				t.Errorf("second walk of %d entries sent %d GETATTRs, want %s", first, n, c.wants)
			}
		})
	}
}

func checkInfo(t *testing.T, path string, li fixture.LayerInfo) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var info struct {
		CompressedDigest string         `json:"compressed-diff-digest"`
		CompressedSize   int64          `json:"compressed-size"`
		DiffDigest       string         `json:"diff-digest"`
		TOCDigest        string         `json:"toc-digest"`
		Compression      int            `json:"compression"`
		Flags            map[string]any `json:"flags"`
	}
	if err := json.Unmarshal(b, &info); err != nil {
		t.Fatalf("info is not JSON: %v: %s", err, b)
	}
	want := []struct{ field, got, want string }{
		{"compressed-diff-digest", info.CompressedDigest, li.Digest.String()},
		{"diff-digest", info.DiffDigest, li.DiffID.String()},
		{"toc-digest", info.TOCDigest, li.TOCDigest.String()},
		{"flags.expected-layer-diffid", anyString(info.Flags["expected-layer-diffid"]), li.DiffID.String()},
	}
	for _, w := range want {
		if w.got != w.want {
			t.Errorf("info %s = %q, want %q", w.field, w.got, w.want)
		}
	}
	compression := 2 // gzip
	if li.MediaType == fixture.ZstdLayerMediaType {
		compression = 4
	}
	if info.CompressedSize != li.Size || info.Compression != compression {
		t.Errorf("info compressed-size %d compression %d, want %d and %d", info.CompressedSize, info.Compression, li.Size, compression)
	}
}

func anyString(v any) string { s, _ := v.(string); return s }

// TestGrammar1 checks the pool grammar: annotations in any order, in any
// base64 alphabet, extra ones ignored, the TOC digest used when given.
func TestGrammar1(t *testing.T) {
	reg := fixture.StartRegistry(t)
	tarBytes := fixture.KitchenSinkTar()
	ref, layers := pushImage(t, reg, "test/pool", [][]byte{tarBytes}, fixture.ImageOptions{})
	m := mountPool(t, reg)
	li := layers[0]
	refKV := alspath.RefAnnotation + "=" + ref
	dgKV := alspath.LayerAnnotation + "=" + li.Digest.String()
	tocKV := alspath.TOCDigestAnnotation + "=" + li.TOCDigest.String()

	paths := map[string]string{
		"ref first":        m.grammar1(base64.URLEncoding, "l1", refKV, dgKV),
		"digest first std": m.grammar1(base64.StdEncoding, "l2", dgKV, refKV),
		"unpadded, extras": m.grammar1(base64.RawURLEncoding, "l3", "io.example/x=1", dgKV, "empty=", refKV),
		"with TOC digest":  m.grammar1(base64.URLEncoding, "l4", tocKV, refKV, dgKV),
	}
	for name, p := range paths {
		t.Run(name, func(t *testing.T) {
			if p == "" {
				t.Skip("the standard base64 of one annotation contains '/', which splits a grammar-1 element; clients use the URL-safe alphabet")
			}
			compareTree(t, p, tarBytes)
		})
	}

	// A wrong TOC digest is refused: nothing unverified is served.
	bad := alspath.TOCDigestAnnotation + "=" + digest.FromString("other").String()
	if _, err := os.Stat(m.grammar1(base64.URLEncoding, "l5", refKV, dgKV, bad)); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("layer with a wrong TOC digest: stat error %v, want ENOENT", err)
	}
}

// TestLazy measures what the pool fetches: a walk of every name, attribute,
// link and xattr fetches no file data; reading one file fetches about its
// compressed size.
func TestLazy(t *testing.T) {
	reg := fixture.StartRegistry(t)
	tarBytes := fixture.KitchenSinkTar()
	ref, layers := pushImage(t, reg, "test/lazy", [][]byte{tarBytes}, fixture.ImageOptions{ChunkSize: 64 << 10})
	m := mountPool(t, reg)
	li := layers[0]

	reg.ResetStats()
	diff := filepath.Join(m.grammar2(ref, li.Digest.String()), "diff")
	if _, err := os.Stat(diff); err != nil {
		t.Fatal(err)
	}
	open := reg.Stats()
	t.Logf("opening the layer (manifest, config, footer+TOC): %d requests, %d blob bytes of %d", open.Requests, open.BlobBytes, li.Size)

	reg.ResetStats()
	var entries, biggestSize int64
	var biggest string
	err := filepath.WalkDir(tree(t, diff), func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		entries++
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return err
		}
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFLNK:
			if _, err := os.Readlink(p); err != nil {
				return err
			}
		case unix.S_IFREG:
			if st.Size > biggestSize {
				biggest, biggestSize = p, st.Size
			}
		}
		buf := make([]byte, 64<<10)
		n, err := unix.Llistxattr(p, buf)
		if err != nil {
			return err
		}
		for _, name := range strings.Split(strings.TrimRight(string(buf[:n]), "\x00"), "\x00") {
			if name == "" {
				continue
			}
			if _, err := unix.Lgetxattr(p, name, buf); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	walk := reg.Stats()
	t.Logf("metadata walk of %d entries: %d blob bytes in %d requests", entries, walk.BlobBytes, walk.BlobRequests)
	if walk.BlobBytes != 0 || walk.BlobRequests != 0 {
		t.Errorf("metadata walk fetched %d blob bytes in %d requests, want none", walk.BlobBytes, walk.BlobRequests)
	}

	reg.ResetStats()
	data, err := os.ReadFile(biggest)
	if err != nil {
		t.Fatal(err)
	}
	read := reg.Stats()
	rel, _ := filepath.Rel(tree(t, diff), biggest)
	start, end := compressedRange(t, m, li.Digest, rel)
	t.Logf("reading %s (%d bytes, %d compressed): %d blob bytes in %d requests", rel, len(data), end-start, read.BlobBytes, read.BlobRequests)
	// The blob's last MiB came with the TOC, so part of the file may
	// already be at hand; beyond that, the read fetches its own chunks.
	if read.BlobBytes > (end-start)+(end-start)/10+4096 || read.BlobBytes+open.BlobBytes < end-start {
		t.Errorf("reading one file fetched %d blob bytes (after %d with the TOC), want about its compressed size %d",
			read.BlobBytes, open.BlobBytes, end-start)
	}
	if got, want := sha256.Sum256(data), tarContentHash(t, tarBytes, rel); got != want {
		t.Errorf("content of %s differs from the tar", rel)
	}

	// Read again: served from the cache, nothing fetched.
	reg.ResetStats()
	if _, err := os.ReadFile(biggest); err != nil {
		t.Fatal(err)
	}
	if s := reg.Stats(); s.BlobBytes != 0 {
		t.Errorf("second read fetched %d blob bytes, want 0", s.BlobBytes)
	}
}

func compressedRange(t *testing.T, m *mounted, dg digest.Digest, rel string) (int64, int64) {
	t.Helper()
	for _, l := range m.Pool.Layers() {
		if l.Desc.Digest != dg {
			continue
		}
		e := layerView(t, l).Root()
		for _, name := range strings.Split(rel, "/") {
			e = e.Child(name)
			if e == nil {
				t.Fatalf("%s not in the view", rel)
			}
		}
		return layerView(t, l).CompressedRange(e)
	}
	t.Fatalf("layer %s not open", dg)
	return 0, 0
}

// TestUseAndRelease checks the client's reference counting: create(use)
// and rmdir(<digest>) both fail with ENOENT and move the count.
func TestUseAndRelease(t *testing.T) {
	reg := fixture.StartRegistry(t)
	ref, layers := pushImage(t, reg, "test/use", [][]byte{fixture.KitchenSinkTar()}, fixture.ImageOptions{})
	m := mountPool(t, reg)
	dir := m.grammar2(ref, layers[0].Digest.String())
	for range 2 {
		_, err := os.Create(filepath.Join(dir, "use"))
		if !errors.Is(err, fs.ErrNotExist) {
			t.Fatalf("create(use): %v, want ENOENT", err)
		}
	}
	if got := uses(t, m, layers[0].Digest); got != 2 {
		t.Errorf("uses after two create(use) = %d, want 2", got)
	}
	if err := unix.Rmdir(dir); !errors.Is(err, unix.ENOENT) {
		t.Errorf("rmdir(<digest>): %v, want ENOENT", err)
	}
	if got := uses(t, m, layers[0].Digest); got != 1 {
		t.Errorf("uses after rmdir = %d, want 1", got)
	}
	if _, err := os.Stat(filepath.Join(dir, "diff")); err != nil {
		t.Errorf("layer gone after rmdir: %v", err)
	}
}

func uses(t *testing.T, m *mounted, dg digest.Digest) int64 {
	for _, l := range m.Pool.Layers() {
		if l.Desc.Digest == dg {
			return l.Uses()
		}
	}
	t.Fatalf("layer %s not open", dg)
	return 0
}

// TestReadOnly checks that every change is refused with EROFS, at every
// level of the mount, with the trees on their read-only mount and in place.
func TestReadOnly(t *testing.T) {
	reg := fixture.StartRegistry(t)
	ref, layers := pushImage(t, reg, "test/ro", [][]byte{fixture.KitchenSinkTar()}, fixture.ImageOptions{})
	for _, inPlace := range []bool{false, true} {
		t.Run(fmt.Sprintf("in_place_trees=%v", inPlace), func(t *testing.T) {
			m := mountPoolOpts(t, reg, mountOpts{InPlaceTrees: inPlace})
			dir := m.grammar2(ref, layers[0].Digest.String())
			diff := filepath.Join(dir, "diff")
			if _, err := os.Stat(diff); err != nil {
				t.Fatal(err)
			}
			if fi, _ := os.Lstat(diff); (fi.Mode()&fs.ModeSymlink != 0) == inPlace {
				t.Fatalf("diff has mode %v with in-place trees %v", fi.Mode(), inPlace)
			}
			root := tree(t, diff)
			file := firstRegular(t, diff)
			ops := []struct {
				name string
				op   func() error
			}{
				{"mkdir in pool root", func() error { return os.Mkdir(filepath.Join(m.Dir, "x"), 0o755) }},
				{"create in layer dir", func() error { _, err := os.Create(filepath.Join(dir, "x")); return err }},
				{"mkdir in tree", func() error { return os.Mkdir(filepath.Join(root, "newdir"), 0o755) }},
				{"create in tree", func() error { _, err := os.Create(filepath.Join(root, "newfile")); return err }},
				{"write file", func() error { return os.WriteFile(file, []byte("x"), 0o644) }},
				{"truncate info", func() error { return os.Truncate(filepath.Join(dir, "info"), 0) }},
				{"chmod file", func() error { return os.Chmod(file, 0o777) }},
				{"unlink file", func() error { return os.Remove(file) }},
				{"rename file", func() error { return os.Rename(file, file+".2") }},
				{"symlink in tree", func() error { return os.Symlink("x", filepath.Join(root, "ln")) }},
				{"setxattr", func() error { return unix.Setxattr(file, "user.x", []byte("y"), 0) }},
				{"remove diff", func() error {
					if inPlace {
						return unix.Rmdir(diff)
					}
					return unix.Unlink(diff) // the link
				}},
			}
			if !inPlace {
				ops = append(ops, struct {
					name string
					op   func() error
				}{"rmdir tree", func() error { return unix.Rmdir(root) }})
			}
			for _, o := range ops {
				if err := o.op(); !errors.Is(err, syscall.EROFS) {
					t.Errorf("%s: %v, want EROFS", o.name, err)
				}
			}
		})
	}
}

func firstRegular(t *testing.T, dir string) string {
	t.Helper()
	var found string
	_ = filepath.WalkDir(tree(t, dir), func(p string, d fs.DirEntry, err error) error {
		if err == nil && found == "" && d.Type().IsRegular() {
			if info, err := d.Info(); err == nil && info.Mode().Perm()&0o200 != 0 {
				found = p
			}
		}
		return nil
	})
	if found == "" {
		t.Fatal("no regular file in the layer")
	}
	return found
}

// TestListings: the kernel keeps directory listings (see fs.cachedListings),
// so the grammar directories, which gain children as layers are looked up,
// must show every child looked up so far, even when listed in between.
func TestListings(t *testing.T) {
	reg := fixture.StartRegistry(t)
	tarBytes := fixture.BuildTar([]fixture.TarEntry{{Name: "f", Mode: 0o644, Content: []byte("x")}})
	refA, layersA := pushImage(t, reg, "test/list-a", [][]byte{tarBytes}, fixture.ImageOptions{})
	refB, layersB := pushImage(t, reg, "test/list-b", [][]byte{tarBytes}, fixture.ImageOptions{})
	m := mountPool(t, reg)
	names := func(dir string) []string {
		t.Helper()
		ents, err := os.ReadDir(dir)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, e := range ents {
			out = append(out, e.Name())
		}
		return out
	}
	check := func(dir string, want ...string) {
		t.Helper()
		sort.Strings(want)
		if got := names(dir); !slices.Equal(got, want) {
			t.Errorf("listing of %s: %q, want %q", dir, got, want)
		}
	}
	encA, encB := base64.StdEncoding.EncodeToString([]byte(refA)), base64.StdEncoding.EncodeToString([]byte(refB))
	check(m.Dir)
	a := m.grammar2(refA, layersA[0].Digest.String())
	if _, err := os.Stat(a); err != nil {
		t.Fatal(err)
	}
	check(m.Dir, encA)
	check(filepath.Dir(a), layersA[0].Digest.String())
	check(a, "blob", "diff", "info")
	check(filepath.Join(a, "diff"), "f")

	b := m.grammar2(refB, layersB[0].Digest.String())
	if _, err := os.Stat(b); err != nil {
		t.Fatal(err)
	}
	check(m.Dir, encA, encB)
	// Same layer by its TOC digest: a second child of the listed ref dir.
	if _, err := os.Stat(m.grammar2(refA, layersA[0].TOCDigest.String())); err != nil {
		t.Fatal(err)
	}
	check(filepath.Dir(a), layersA[0].Digest.String(), layersA[0].TOCDigest.String())
	// Grammar 1: annotation directories gain children too.
	refKV := alspath.RefAnnotation + "=" + refA
	dgKV := alspath.LayerAnnotation + "=" + layersA[0].Digest.String()
	l1 := m.grammar1(base64.URLEncoding, "l1", refKV, dgKV)
	if _, err := os.Stat(filepath.Dir(l1)); err != nil {
		t.Fatal(err)
	}
	check(filepath.Dir(l1))
	if _, err := os.Stat(l1); err != nil {
		t.Fatal(err)
	}
	check(filepath.Dir(l1), filepath.Base(l1))
}

// TestConfigWhileTOC: the image config (only needed for the layer's
// DiffID) is fetched while the TOC is, not before it: the registry holds
// the config back until the layer's tail has been asked for, and the
// layer still opens, with the right info.
func TestConfigWhileTOC(t *testing.T) {
	reg := fixture.StartRegistry(t)
	tarBytes := fixture.BuildTar([]fixture.TarEntry{{Name: "f", Mode: 0o644, Content: []byte("x")}})
	ref, layers := pushImage(t, reg, "test/parallel", [][]byte{tarBytes}, fixture.ImageOptions{})
	li := layers[0]
	tailAsked := make(chan struct{})
	var once sync.Once
	var heldConfig atomic.Bool
	reg.SetMiddleware(func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if strings.Contains(r.URL.Path, "/blobs/") {
				if strings.HasSuffix(r.URL.Path, li.Digest.String()) {
					once.Do(func() { close(tailAsked) })
				} else {
					select {
					case <-tailAsked:
						heldConfig.Store(true)
					case <-time.After(5 * time.Second):
					}
				}
			}
			next.ServeHTTP(w, r)
		})
	})
	m := mountPool(t, reg)
	dir := m.grammar2(ref, li.Digest.String())
	checkInfo(t, filepath.Join(dir, "info"), li)
	if !heldConfig.Load() {
		t.Error("the config request was answered before the layer's tail was asked for: the two were fetched one after the other")
	}
}

// TestGrammar2DiffIDFromTheImagesOwnConfig: two images name the same blob
// but their configs give it different diff_ids. Each lookup reports its
// own image's value; the disagreement makes the pool decompress the blob in
// the background, and from then on a lookup through a config that gives
// the wrong value is refused while one with the right value still works.
// Both orders: the wrong config first, and the right one first; eStargz and
// zstd:chunked layers (each format decompresses its own blobs).
func TestGrammar2DiffIDFromTheImagesOwnConfig(t *testing.T) {
	requireFUSE(t)
	reg := fixture.StartRegistry(t)
	tars := [][]byte{fixture.BuildTar([]fixture.TarEntry{
		{Name: "a.txt", Mode: 0o644, Content: []byte("a\n")},
		{Name: "big.bin", Mode: 0o644, Content: fixture.RandomBytes(5, 1<<20)},
	})}
	for _, c := range []struct {
		wrongFirst, zstd bool
	}{{true, false}, {false, false}, {true, true}} {
		wrongFirst := c.wrongFirst
		t.Run(fmt.Sprintf("wrong_first=%v,zstd=%v", wrongFirst, c.zstd), func(t *testing.T) {
			ctx := t.Context()
			m := mountPool(t, reg)
			push := func(repo string, diffID digest.Digest) (string, fixture.LayerInfo) {
				t.Helper()
				img, err := fixture.BuildImage(tars, fixture.ImageOptions{ZstdChunked: c.zstd})
				if err != nil {
					t.Fatal(err)
				}
				if diffID != "" {
					if err := img.SetDiffIDs([]digest.Digest{diffID}); err != nil {
						t.Fatal(err)
					}
				}
				ref := fixture.ImageRef(reg.Host, fmt.Sprintf("%s-%v-%v", repo, wrongFirst, c.zstd), "v1")
				if err := img.Push(ctx, ref); err != nil {
					t.Fatal(err)
				}
				return ref, img.Layers[0].Info
			}
			wrong, wrong2 := digest.FromString("not the layer"), digest.FromString("not the layer either")
			right, li := push("test/right", "")
			liar, _ := push("test/liar", wrong)
			first, second := right, liar
			if wrongFirst {
				first, second = liar, right
			}
			want := map[string]digest.Digest{right: li.DiffID, liar: wrong}
			for _, ref := range []string{first, second} {
				if got := infoDiffID(t, m.grammar2(ref, li.Digest.String())); got != want[ref] {
					t.Errorf("info through %s: diff-digest %s, want its own config's %s", ref, got, want[ref])
				}
			}

			var l *pool.Layer
			for _, c := range m.Pool.Layers() {
				if c.Desc.Digest == li.Digest {
					l = c
				}
			}
			if l == nil {
				t.Fatal("the layer is not open")
			}
			deadline := time.Now().Add(30 * time.Second)
			for l.VerifiedDiffID() == "" && time.Now().Before(deadline) {
				time.Sleep(10 * time.Millisecond)
			}
			if got := l.VerifiedDiffID(); got != li.DiffID {
				t.Fatalf("verified diff_id %q, want %s", got, li.DiffID)
			}

			// New images after the check: the wrong one is refused, the
			// right one is served.
			liar2, _ := push("test/liar2", wrong2)
			if _, err := os.Stat(filepath.Join(m.grammar2(liar2, li.Digest.String()), "info")); !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("lookup through a config with a wrong diff_id after verification: %v, want ENOENT", err)
			}
			right2, _ := push("test/right2", "")
			if got := infoDiffID(t, m.grammar2(right2, li.Digest.String())); got != li.DiffID {
				t.Errorf("info through %s: diff-digest %s, want %s", right2, got, li.DiffID)
			}
		})
	}
}

// infoDiffID reads diff-digest from <dir>/info and checks that the flag
// newer clients read agrees with it.
func infoDiffID(t *testing.T, dir string) digest.Digest {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, "info"))
	if err != nil {
		t.Fatal(err)
	}
	var info struct {
		DiffDigest digest.Digest  `json:"diff-digest"`
		Flags      map[string]any `json:"flags"`
	}
	if err := json.Unmarshal(b, &info); err != nil {
		t.Fatalf("info is not JSON: %v: %s", err, b)
	}
	if f := anyString(info.Flags["expected-layer-diffid"]); f != info.DiffDigest.String() {
		t.Errorf("info: flags.expected-layer-diffid %q, diff-digest %s", f, info.DiffDigest)
	}
	return info.DiffDigest
}

// layerView is the pool layer's view, loaded if it left memory.
func layerView(t *testing.T, l *pool.Layer) *layer.Layer {
	t.Helper()
	v, err := l.View(context.Background())
	if err != nil {
		t.Fatalf("view of %s: %v", l.Desc.Digest, err)
	}
	return v
}
