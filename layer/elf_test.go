package layer

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/containerd/stargz-snapshotter/estargz"

	"github.com/poolfs/poolfs/fs/fstest"
)

// elfLayerFile is one file of the test's root.
type elfLayerFile struct {
	name string // path in the layer
	from string // host file with the content ("" with link or data)
	link string // symlink target
	data []byte
}

// elfRoot is a merged-/usr root as Debian has it, with the host's /bin/ls
// and what its loader reads (interpreter reached through /lib64's
// symlinks, ld.so.cache, libc, libselinux, libpcre2 through a relative
// symlink), plus files the loader never reads around them. It skips the
// test on a host without them.
func elfRoot(t *testing.T) []elfLayerFile {
	t.Helper()
	hostLib := func(name string) string {
		for _, d := range []string{"/usr/lib/x86_64-linux-gnu", "/lib/x86_64-linux-gnu"} {
			if p, err := filepath.EvalSymlinks(filepath.Join(d, name)); err == nil {
				return p
			}
		}
		t.Skipf("host has no %s", name)
		return ""
	}
	ls, err := filepath.EvalSymlinks("/bin/ls")
	if err != nil {
		t.Skip("host has no /bin/ls")
	}
	info, err := parseELF(fileSize(t, ls), hostReader(t, ls))
	if err != nil || info.machine != 62 || !equalStrings(info.needed, []string{"libselinux.so.1", "libc.so.6"}) {
		t.Skipf("host's /bin/ls is not the x86_64 Debian one this test expects (%v, %+v)", err, info)
	}
	pcre := hostLib("libpcre2-8.so.0")
	filler := bytes.Repeat([]byte("not read by the loader "), 4000)
	return []elfLayerFile{
		{name: "bin", link: "usr/bin"},
		{name: "lib", link: "usr/lib"},
		{name: "lib64", link: "usr/lib64"},
		{name: "etc/hostname", data: filler},
		{name: "etc/ld.so.cache", data: []byte("glibc-ld.so.cache1.1 (the loader's cache; its content does not matter here)")},
		{name: "usr/bin/cat", data: filler},
		{name: "usr/bin/ls", from: ls},
		{name: "usr/bin/zz", data: filler},
		{name: "usr/lib64/ld-linux-x86-64.so.2", link: "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"},
		{name: "usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2", from: hostLib("ld-linux-x86-64.so.2")},
		{name: "usr/lib/x86_64-linux-gnu/libacl.so.1", data: filler},
		{name: "usr/lib/x86_64-linux-gnu/libc.so.6", from: hostLib("libc.so.6")},
		{name: "usr/lib/x86_64-linux-gnu/libm.so.6", data: filler},
		{name: "usr/lib/x86_64-linux-gnu/libpcre2-8.so.0", link: filepath.Base(pcre)},
		{name: "usr/lib/x86_64-linux-gnu/" + filepath.Base(pcre), from: pcre},
		{name: "usr/lib/x86_64-linux-gnu/libselinux.so.1", from: hostLib("libselinux.so.1")},
		{name: "usr/lib/x86_64-linux-gnu/libz.so.1", data: filler},
	}
}

func fileSize(t *testing.T, p string) int64 {
	t.Helper()
	st, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	return st.Size()
}

func hostReader(t *testing.T, p string) elfReadFunc {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return bytesReader(b)
}

func bytesReader(b []byte) elfReadFunc {
	return func(off int64, n int) ([]byte, error) {
		if off < 0 || off >= int64(len(b)) {
			return nil, nil
		}
		return b[off:min(int64(len(b)), off+int64(n))], nil
	}
}

func equalStrings(a, b []string) bool { return strings.Join(a, "\x00") == strings.Join(b, "\x00") }

// elfLayer builds files into an eStargz layer (64 KiB chunks, so that the
// parser's reads span several chunks of a file) served from memory, with
// the TOC window kept small so that every chunk read is a blob read.
func elfLayer(t *testing.T, files []elfLayerFile, opts ...Option) (*Layer, *fstest.MemBlob, map[string][]byte) {
	t.Helper()
	return elfLayerBuilt(t, files, nil, opts...)
}

// elfLayerBuilt is elfLayer with options for the eStargz builder.
func elfLayerBuilt(t *testing.T, files []elfLayerFile, build []estargz.Option, opts ...Option) (*Layer, *fstest.MemBlob, map[string][]byte) {
	t.Helper()
	noTail(t)
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	content := map[string][]byte{}
	dirs := map[string]bool{}
	for _, f := range files {
		for d := filepath.Dir(f.name); d != "."; d = filepath.Dir(d) {
			dirs[d] = true
		}
	}
	var sorted []string
	for d := range dirs {
		sorted = append(sorted, d)
	}
	sort.Strings(sorted)
	for _, d := range sorted {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: d + "/", Mode: 0o755}); err != nil {
			t.Fatal(err)
		}
	}
	for _, f := range files {
		if f.link != "" {
			if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeSymlink, Name: f.name, Linkname: f.link, Mode: 0o777}); err != nil {
				t.Fatal(err)
			}
			continue
		}
		data := f.data
		if f.from != "" {
			var err error
			if data, err = os.ReadFile(f.from); err != nil {
				t.Fatal(err)
			}
		}
		content[f.name] = data
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: f.name, Mode: 0o755, Size: int64(len(data))}); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write(data); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	blobBytes, toc := fstest.EStargz(t, buf.Bytes(), append([]estargz.Option{estargz.WithChunkSize(64 << 10)}, build...)...)
	blob := fstest.NewMemBlob(blobBytes)
	l, err := Open(context.Background(), blob, toc, newMemCache(), nil, opts...)
	if err != nil {
		t.Fatal(err)
	}
	return l, blob, content
}

// waitScans waits until no ELF scan runs in l.
func waitScans(t *testing.T, l *Layer) {
	t.Helper()
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(time.Millisecond) {
		if len(l.elfSlots) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("ELF scan still running after 20 s")
		}
	}
}

// filesRead maps the blob reads made so far to the files whose compressed
// ranges they touch.
func filesRead(t *testing.T, l *Layer, blob *fstest.MemBlob, content map[string][]byte) map[string]bool {
	t.Helper()
	out := map[string]bool{}
	for _, r := range blob.Reads() {
		for name := range content {
			s, e := l.CompressedRange(lookup(t, l, name))
			if r[0] < e && r[0]+r[1] > s {
				out[name] = true
			}
		}
	}
	return out
}

// TestELFDeps: reading the start of an executable fetches its interpreter
// (found through two symlinks), the loader's cache and its libraries and
// theirs (resolved in the layer's multiarch directory, one through a
// symlink), and nothing else; the loader's reads of them then cost no
// request, and every byte read is the file's. Off, the read fetches only
// the executable's chunk.
func TestELFDeps(t *testing.T) {
	files := elfRoot(t)
	want := map[string]bool{"usr/bin/ls": true, "etc/ld.so.cache": true,
		"usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2": true, "usr/lib/x86_64-linux-gnu/libc.so.6": true,
		"usr/lib/x86_64-linux-gnu/libselinux.so.1": true}
	for _, f := range files {
		if strings.HasPrefix(f.name, "usr/lib/x86_64-linux-gnu/libpcre2-8.so.0.") {
			want[f.name] = true
		}
	}

	l, blob, content := elfLayer(t, files, WithELFDeps(true))
	blob.ResetStats()
	readFile(t, l, "usr/bin/ls", content["usr/bin/ls"][:4096])
	waitScans(t, l)
	got := filesRead(t, l, blob, content)
	for name := range want {
		if !got[name] {
			t.Errorf("%s was not fetched", name)
		}
	}
	for name := range got {
		if !want[name] {
			t.Errorf("%s was fetched, but the loader never reads it", name)
		}
	}
	blob.ResetStats()
	for name := range want {
		readFile(t, l, name, content[name])
	}
	if calls, _ := blob.Stats(); calls != 0 {
		t.Errorf("the loader's reads after the scan made %d blob reads, want 0", calls)
	}

	off, blobOff, content := elfLayer(t, files)
	blobOff.ResetStats()
	readFile(t, off, "usr/bin/ls", content["usr/bin/ls"][:4096])
	waitScans(t, off)
	if got := filesRead(t, off, blobOff, content); len(got) != 1 || !got["usr/bin/ls"] {
		t.Errorf("with ELF prefetch off, reading ls fetched from %v", got)
	}

	// An optimized layer says what the start reads: no scan.
	prio, blobPrio, content := elfLayerBuilt(t, files, []estargz.Option{estargz.WithPrioritizedFiles([]string{"etc/hostname"})}, WithELFDeps(true))
	blobPrio.ResetStats()
	readFile(t, prio, "usr/bin/ls", content["usr/bin/ls"][:4096])
	waitScans(t, prio)
	if got := filesRead(t, prio, blobPrio, content); len(got) != 1 || !got["usr/bin/ls"] {
		t.Errorf("in a layer with prioritized files, reading ls fetched from %v", got)
	}
}

// TestFetchRuntime: a layer with a loader fetches the loader (through
// /lib64's symlinks), libc, the loader's cache, the time zone (through
// /etc/localtime's symlink), the C.UTF-8 LC_CTYPE and the gconv cache, and
// nothing else; off,
// with prioritized files, or in a layer without a loader, nothing.
func TestFetchRuntime(t *testing.T) {
	if runtime.GOARCH != "amd64" {
		t.Skip("the test's root is x86_64 Debian's")
	}
	files := append(elfRoot(t),
		elfLayerFile{name: "etc/localtime", link: "/usr/share/zoneinfo/Etc/UTC"},
		elfLayerFile{name: "usr/share/zoneinfo/Etc/UTC", data: []byte("TZif2 UTC")},
		elfLayerFile{name: "usr/share/zoneinfo/Etc/GMT", data: []byte("TZif2 GMT")},
		elfLayerFile{name: "usr/lib/locale/C.utf8/LC_CTYPE", data: bytes.Repeat([]byte("ctype "), 50000)},
		elfLayerFile{name: "usr/lib/locale/C.utf8/LC_COLLATE", data: bytes.Repeat([]byte("collate "), 5000)},
		elfLayerFile{name: "usr/lib/x86_64-linux-gnu/gconv/gconv-modules.cache", data: []byte("gconv cache")},
		elfLayerFile{name: "usr/lib/x86_64-linux-gnu/gconv/UTF-16.so", data: []byte("a gconv module")},
		elfLayerFile{name: "usr/share/big", data: bytes.Repeat([]byte("not the runtime "), 100000)},
	)
	sort.Slice(files, func(i, j int) bool { return files[i].name < files[j].name })
	want := map[string]bool{"etc/ld.so.cache": true,
		"usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2": true, "usr/lib/x86_64-linux-gnu/libc.so.6": true,
		"usr/share/zoneinfo/Etc/UTC": true, "usr/lib/locale/C.utf8/LC_CTYPE": true,
		"usr/lib/x86_64-linux-gnu/gconv/gconv-modules.cache": true}
	l, blob, content := elfLayer(t, files, WithELFDeps(true))
	blob.ResetStats()
	st, err := l.FetchRuntime(context.Background())
	if err != nil || st.Files != len(want) {
		t.Fatalf("fetched %+v, %v; want %d files", st, err, len(want))
	}
	got := filesRead(t, l, blob, content)
	if !reflect.DeepEqual(got, want) {
		t.Errorf("fetched %v, want %v", got, want)
	}
	blob.ResetStats()
	for name := range want {
		readFile(t, l, name, content[name])
	}
	if calls, _ := blob.Stats(); calls != 0 {
		t.Errorf("reading the runtime's files after FetchRuntime made %d blob reads, want 0", calls)
	}

	var noLoader []elfLayerFile
	for _, f := range files {
		if !strings.Contains(f.name, "ld-linux") {
			noLoader = append(noLoader, f)
		}
	}
	for name, l := range map[string]*Layer{
		"off": func() *Layer { l, _, _ := elfLayer(t, files); return l }(),
		"prioritized": func() *Layer {
			l, _, _ := elfLayerBuilt(t, files, []estargz.Option{estargz.WithPrioritizedFiles([]string{"etc/hostname"})}, WithELFDeps(true))
			return l
		}(),
		"no loader": func() *Layer { l, _, _ := elfLayer(t, noLoader, WithELFDeps(true)); return l }(),
	} {
		if st, err := l.FetchRuntime(context.Background()); err != nil || st.Files != 0 {
			t.Errorf("%s: fetched %+v, %v; want nothing", name, st, err)
		}
	}
}

// TestELFDepsMalformed: a file that starts like ELF but is not one, or
// names libraries in a damaged way, is read as any other file and costs
// nothing else.
func TestELFDepsMalformed(t *testing.T) {
	filler := bytes.Repeat([]byte("x"), 100<<10)
	hdr := validELFHeader()
	bigPhnum := append([]byte(nil), hdr...)
	binary.LittleEndian.PutUint16(bigPhnum[56:], 60000)
	outside := append([]byte(nil), hdr...)
	binary.LittleEndian.PutUint64(outside[32:], 1<<62)
	files := []elfLayerFile{
		{name: "bad/magic-only", data: []byte("\x7fELF")},
		{name: "bad/phnum", data: append(bigPhnum, filler...)},
		{name: "bad/phoff", data: append(outside, filler...)},
		{name: "bad/truncated", data: hdr[:40]},
		{name: "bad/zz", data: filler},
		{name: "usr/lib/x86_64-linux-gnu/libc.so.6", data: filler},
	}
	l, blob, content := elfLayer(t, files, WithELFDeps(true))
	for _, f := range files[:4] {
		blob.ResetStats()
		readFile(t, l, f.name, content[f.name][:min(len(content[f.name]), 4096)])
		waitScans(t, l)
		if got := filesRead(t, l, blob, content); len(got) != 1 || !got[f.name] {
			t.Errorf("reading %s fetched from %v", f.name, got)
		}
	}
}

// validELFHeader is the 64-byte header of a little-endian x86_64 ET_DYN
// file whose program headers follow it (none yet: e_phnum 1).
func validELFHeader() []byte {
	h := make([]byte, 64)
	copy(h, "\x7fELF\x02\x01\x01")
	le := binary.LittleEndian
	le.PutUint16(h[16:], 3)  // ET_DYN
	le.PutUint16(h[18:], 62) // EM_X86_64
	le.PutUint64(h[32:], 64) // e_phoff
	le.PutUint16(h[54:], 56) // e_phentsize
	le.PutUint16(h[56:], 1)  // e_phnum
	return h
}

// TestParseELFHost: the parser finds what readelf shows for the host's ls.
func TestParseELFHost(t *testing.T) {
	ls, err := filepath.EvalSymlinks("/bin/ls")
	if err != nil {
		t.Skip("host has no /bin/ls")
	}
	info, err := parseELF(fileSize(t, ls), hostReader(t, ls))
	if err != nil {
		t.Fatal(err)
	}
	if info.interp == "" || !strings.Contains(info.interp, "ld-") || len(info.needed) == 0 {
		t.Errorf("parsed %+v", info)
	}
}

// TestParseELFMalformed: damaged inputs give errNotELF-wrapped errors or
// partial results, never a panic.
func TestParseELFMalformed(t *testing.T) {
	for _, b := range elfSeeds() {
		for n := 0; n <= len(b); n += max(1, len(b)/64) {
			if _, err := parseELF(int64(n), bytesReader(b[:n])); err != nil && !errors.Is(err, errNotELF) {
				t.Errorf("%d-byte prefix: error %v does not wrap errNotELF", n, err)
			}
		}
	}
}

// elfSeeds are inputs for the parser: the host's ls if there is one, and a
// small file with every part the parser reads.
func elfSeeds() [][]byte {
	var out [][]byte
	if b, err := os.ReadFile("/bin/ls"); err == nil {
		out = append(out, b)
	}
	return append(out, tinyELF())
}

// tinyELF is a 64-bit little-endian file with PT_LOAD, PT_INTERP and
// PT_DYNAMIC: interpreter /lib/ld.so, needed libx.so and liby.so, runpath
// $ORIGIN/../lib.
func tinyELF() []byte {
	le := binary.LittleEndian
	h := validELFHeader()
	le.PutUint16(h[56:], 3)
	const phoff, interpOff, strOff, dynOff = 64, 64 + 3*56, 300, 400
	strs := "\x00libx.so\x00liby.so\x00$ORIGIN/../lib\x00"
	b := make([]byte, 512)
	copy(b, h)
	ph := func(i int, typ uint32, off, vaddr, filesz uint64) {
		p := b[phoff+i*56:]
		le.PutUint32(p, typ)
		le.PutUint64(p[8:], off)
		le.PutUint64(p[16:], vaddr)
		le.PutUint64(p[32:], filesz)
	}
	ph(0, ptLoad, 0, 0x1000, 512)
	ph(1, ptInterp, interpOff, 0, 11)
	ph(2, ptDynamic, dynOff, 0, 6*16)
	copy(b[interpOff:], "/lib/ld.so\x00")
	copy(b[strOff:], strs)
	dyn := func(i int, tag, val uint64) {
		le.PutUint64(b[dynOff+i*16:], tag)
		le.PutUint64(b[dynOff+i*16+8:], val)
	}
	dyn(0, dtNeeded, 1)
	dyn(1, dtNeeded, 9)
	dyn(2, dtStrtab, 0x1000+strOff)
	dyn(3, dtStrsz, uint64(len(strs)))
	dyn(4, dtRunpath, 17)
	dyn(5, dtNull, 0)
	return b
}

func TestParseELFTiny(t *testing.T) {
	b := tinyELF()
	info, err := parseELF(int64(len(b)), bytesReader(b))
	if err != nil {
		t.Fatal(err)
	}
	if info.interp != "/lib/ld.so" || !equalStrings(info.needed, []string{"libx.so", "liby.so"}) || !equalStrings(info.runpath, []string{"$ORIGIN/../lib"}) {
		t.Errorf("parsed %+v", info)
	}
	if d := searchDirs("opt/app/bin/app", info); d[0] != "/opt/app/bin/../lib" {
		t.Errorf("search dirs %v: want $ORIGIN expanded first", d)
	}
}

// FuzzParseELF: no input makes the parser panic, read outside the file or
// ask for more than its caps.
func FuzzParseELF(f *testing.F) {
	for _, b := range elfSeeds() {
		if len(b) > 64<<10 {
			b = b[:64<<10] // headers and dynamic section of ls are in front
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var asked int
		read := func(off int64, n int) ([]byte, error) {
			if off < 0 || n < 0 || off > int64(len(b)) {
				t.Fatalf("read at %d of %d bytes in a %d-byte file", off, n, len(b))
			}
			asked += n
			return bytesReader(b)(off, n)
		}
		_, _ = parseELF(int64(len(b)), read)
		if asked > 2*elfMaxDynamic+elfMaxStrings+elfMaxPhnum*56+2*elfMaxName+64 {
			t.Fatalf("parser asked for %d bytes", asked)
		}
	})
}

// TestLookupPath: symlinks are followed like the kernel does, loops end.
func TestLookupPath(t *testing.T) {
	l, _, _ := elfLayer(t, []elfLayerFile{
		{name: "lib", link: "usr/lib"},
		{name: "usr/lib/a/f", data: []byte("f")},
		{name: "usr/lib/rel", link: "a/../a/f"},
		{name: "usr/lib/abs", link: "/lib/a/f"},
		{name: "usr/lib/up", link: "../../../../lib/a/f"},
		{name: "loop1", link: "loop2"},
		{name: "loop2", link: "/loop1"},
	})
	for p, ok := range map[string]bool{
		"/lib/a/f": true, "/lib/rel": true, "/lib/abs": true, "/usr/lib/up": true, "lib/a/../a/f": true,
		"/loop1": false, "/loop1/x": false, "/lib/a/f/x": false, "/nope": false,
	} {
		e := l.lookupPath(p)
		if got := e != nil && e.Path() == "usr/lib/a/f"; got != ok {
			t.Errorf("lookupPath(%q) = %v, want the file: %v", p, e, ok)
		}
	}
}

// TestFetchFiles: the small regular files named are fetched, each once;
// missing, large and other files are not.
func TestFetchFiles(t *testing.T) {
	big := make([]byte, smallFileMax+1)
	rnd := rand.New(rand.NewPCG(7, 8))
	for i := range big {
		big[i] = byte(rnd.Uint32())
	}
	l, blob, content := elfLayer(t, []elfLayerFile{
		{name: "etc/big", data: big},
		{name: "etc/group", data: []byte("root:x:0:\n")},
		{name: "etc/hosts", data: []byte("127.0.0.1 localhost\n")},
		{name: "etc/passwd", link: "passwd.real"},
		{name: "etc/passwd.real", data: []byte("root:x:0:0:root:/root:/bin/sh\n")},
	})
	blob.ResetStats()
	st, err := l.FetchFiles(context.Background(), []string{"/etc/passwd", "/etc/group", "/etc/missing", "/etc/big"})
	if err != nil || st.Files != 2 {
		t.Fatalf("FetchFiles: %+v, %v; want 2 files", st, err)
	}
	got := filesRead(t, l, blob, content)
	if len(got) != 2 || !got["etc/passwd.real"] || !got["etc/group"] {
		t.Errorf("fetched %v, want etc/passwd.real and etc/group", got)
	}
}

// modeLayer is an eStargz layer (32 KiB chunks) of the given files of
// incompressible bytes with the given modes, served from memory with no
// tail read.
func modeLayer(t *testing.T, files []elfModeFile, opts ...Option) (*Layer, *fstest.MemBlob, map[string][]byte) {
	t.Helper()
	noTail(t)
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	content := map[string][]byte{}
	rng := rand.NewChaCha8([32]byte{3})
	for _, f := range files {
		data := make([]byte, f.size)
		_, _ = rng.Read(data)
		content[f.name] = data
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: f.name, Mode: f.mode, Size: f.size}); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write(data); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	data, toc := fstest.EStargz(t, buf.Bytes(), estargz.WithChunkSize(32<<10))
	blob := fstest.NewMemBlob(data)
	l, err := Open(context.Background(), blob, toc, newMemCache(), nil, opts...)
	if err != nil {
		t.Fatal(err)
	}
	blob.ResetStats()
	return l, blob, content
}

type elfModeFile struct {
	name string
	mode int64
	size int64
}

// waitCached waits until every chunk of the file at p is in l's cache.
func waitCached(t *testing.T, l *Layer, p string) {
	t.Helper()
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(time.Millisecond) {
		all := true
		for _, c := range lookup(t, l, p).file().chunks {
			all = all && l.cached(c)
		}
		if all {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not all fetched after 20 s", p)
		}
	}
}

// TestFetchProgram: a read that fetches the first chunk of a file with an
// execute bit (a program being loaded) fetches the whole file in that one
// request; the rest is then read without a request. A file with no
// execute bit, a program of one chunk, or any file with ELF prefetch off
// fetches only the chunk read.
func TestFetchProgram(t *testing.T) {
	files := []elfModeFile{
		{"bin/prog", 0o755, 200 << 10},
		{"lib/data", 0o644, 200 << 10},
		{"bin/small", 0o755, 10 << 10},
	}
	l, blob, content := modeLayer(t, files, WithELFDeps(true))
	first := func(p string) (int64, int64) {
		c := lookup(t, l, p).file().chunks[0]
		return c.blobOff, c.blobEnd
	}
	readFile(t, l, "bin/prog", content["bin/prog"][:100])
	waitCached(t, l, "bin/prog")
	start, end := l.CompressedRange(lookup(t, l, "bin/prog"))
	if got := blob.Reads(); len(got) != 1 || got[0] != [2]int64{start, end - start} {
		t.Errorf("reading the start of bin/prog made blob reads %v, want one of its whole range [%d +%d]", got, start, end-start)
	}
	blob.ResetStats()
	readFile(t, l, "bin/prog", content["bin/prog"])
	if calls, _ := blob.Stats(); calls != 0 {
		t.Errorf("reading the rest of bin/prog made %d blob reads, want 0", calls)
	}

	for _, p := range []string{"lib/data", "bin/small"} {
		blob.ResetStats()
		readFile(t, l, p, content[p][:100])
		s, e := first(p)
		if got := blob.Reads(); len(got) != 1 || got[0] != [2]int64{s, e - s} {
			t.Errorf("reading the start of %s made blob reads %v, want one of its first chunk [%d +%d]", p, got, s, e-s)
		}
	}

	off, blobOff, content := modeLayer(t, files)
	readFile(t, off, "bin/prog", content["bin/prog"][:100])
	c := lookup(t, off, "bin/prog").file().chunks[0]
	if got := blobOff.Reads(); len(got) != 1 || got[0] != [2]int64{c.blobOff, c.blobEnd - c.blobOff} {
		t.Errorf("with ELF prefetch off, reading the start of bin/prog made blob reads %v, want one of its first chunk", got)
	}
}
