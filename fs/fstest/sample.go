package fstest

import (
	"archive/tar"
	"bytes"
	"io"
	"math/rand"
	"strings"
	"testing"
	"time"

	"github.com/containerd/stargz-snapshotter/estargz"
	digest "github.com/opencontainers/go-digest"
)

// Paths in SampleTar that tests single out.
const (
	SampleBigFile   = "bin/big"   // several 4 KiB chunks of mostly incompressible data
	SampleZeroFile  = "bin/zeros" // several identical chunks
	SampleModeZero  = "secret"    // mode 0000
	SampleHardLink  = "etc/sh-link"
	SampleLinkedTo  = "bin/sh"
	SampleXattrFile = "etc/xattrs"
)

// SampleMTime is the mtime of SampleTar entries that do not test mtimes.
var SampleMTime = time.Unix(1700000000, 0)

// SampleTar returns a layer tar with every kind of entry a layer view must
// reproduce: all tar types, hard links (across directories and to a
// symlink), setuid/setgid/sticky, mode 0000, odd owners, mtime 0 and year
// 2200, xattrs with binary values, a 300-byte name, a ~4000-byte path,
// UTF-8 names, implicit parents, whiteouts (including one the layer
// overrides), an opaque directory, empty files and directories, a
// duplicated name, and files large enough for several 4 KiB chunks.
func SampleTar(tb testing.TB) []byte {
	tb.Helper()
	rnd := rand.New(rand.NewSource(1))
	big := make([]byte, 40000)
	rnd.Read(big)
	big = append(big, []byte(strings.Repeat("compressible text\n", 600))...)
	// VFS_CAP_REVISION_2 with the effective flag and CAP_NET_RAW permitted.
	capNetRaw := []byte{0x01, 0, 0, 0x02, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}

	deep := "deep"
	for len(deep) < 3980 {
		deep += "/d123456789"
	}
	deep += "/leaf.txt"

	type ent struct {
		hdr  tar.Header
		body []byte
	}
	dir := func(name string, mode int64) ent {
		return ent{hdr: tar.Header{Typeflag: tar.TypeDir, Name: name, Mode: mode}}
	}
	reg := func(name string, mode int64, body string) ent {
		return ent{hdr: tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: mode}, body: []byte(body)}
	}
	link := func(name, target string) ent {
		return ent{hdr: tar.Header{Typeflag: tar.TypeLink, Name: name, Linkname: target}}
	}
	sym := func(name, target string) ent {
		return ent{hdr: tar.Header{Typeflag: tar.TypeSymlink, Name: name, Linkname: target, Mode: 0o777}}
	}
	with := func(e ent, f func(h *tar.Header)) ent { f(&e.hdr); return e }
	xattrs := func(kv ...string) func(h *tar.Header) {
		return func(h *tar.Header) {
			h.PAXRecords = map[string]string{}
			for i := 0; i < len(kv); i += 2 {
				h.PAXRecords[xattrPAXPrefix+kv[i]] = kv[i+1]
			}
		}
	}

	entries := []ent{
		with(dir("./", 0o751), func(h *tar.Header) { h.ModTime = time.Unix(1600000000, 0) }),
		dir("bin/", 0o755),
		reg("bin/sh", 0o755, "#!/bin/sh\necho hello\n"),
		link("bin/sh2", "bin/sh"),
		{hdr: tar.Header{Typeflag: tar.TypeReg, Name: SampleBigFile, Mode: 0o644}, body: big},
		{hdr: tar.Header{Typeflag: tar.TypeReg, Name: SampleZeroFile, Mode: 0o644}, body: make([]byte, 5*4096+100)},
		with(reg("bin/ping", 0o755, "ping"), xattrs("security.capability", string(capNetRaw))),
		with(dir("etc/", 0o755), xattrs("user.dir", "1")),
		reg("etc/passwd", 0o644, "root:x:0:0:root:/root:/bin/sh\n"),
		link(SampleHardLink, SampleLinkedTo),
		with(reg(SampleXattrFile, 0o600, "x"), xattrs(
			"user.foo", "bar", "user.bin", "\x00\x01\xfe\xff", "trusted.t", "1", "user.empty", "")),
		reg("etc/.wh.removed", 0, ""),
		reg("etc/.wh.passwd", 0o644, ""), // moot: this layer has etc/passwd
		dir("opq/", 0o755),
		reg("opq/.wh..wh..opq", 0, ""),
		reg("opq/keep", 0o644, "kept"),
		with(reg("implicit-wo/.wh.gone", 0o600, ""), func(h *tar.Header) { h.Uid = 7; h.Gid = 8 }),
		reg("implicit/a/b/c.txt", 0o644, "implicit parents"),
		reg("usr/bin/sudo", 0o4755, "sudo"),
		with(reg("usr/bin/wall", 0o2755, "wall"), func(h *tar.Header) { h.Gid = 5 }),
		dir("tmp/", 0o1777),
		reg(SampleModeZero, 0, "top secret"),
		with(reg("owned", 0o640, "mine"), func(h *tar.Header) { h.Uid = 1234; h.Gid = 5678 }),
		with(reg("old", 0o644, "old"), func(h *tar.Header) { h.ModTime = time.Unix(0, 0) }),
		with(reg("future", 0o644, "future"), func(h *tar.Header) { h.ModTime = time.Date(2200, 1, 2, 3, 4, 5, 0, time.UTC) }),
		with(ent{hdr: tar.Header{Typeflag: tar.TypeChar, Name: "dev/null", Mode: 0o666}}, func(h *tar.Header) { h.Devmajor, h.Devminor = 1, 3 }),
		with(ent{hdr: tar.Header{Typeflag: tar.TypeBlock, Name: "dev/sda", Mode: 0o660}}, func(h *tar.Header) { h.Devmajor, h.Devminor, h.Gid = 8, 0, 6 }),
		with(ent{hdr: tar.Header{Typeflag: tar.TypeChar, Name: "dev/big", Mode: 0o600}}, func(h *tar.Header) { h.Devmajor, h.Devminor = 300, 70000 }),
		{hdr: tar.Header{Typeflag: tar.TypeFifo, Name: "run/fifo", Mode: 0o644}},
		sym("lib", "usr/lib"),
		sym("abs", "/etc/passwd"),
		sym("dangling", "nowhere/at/all"),
		link("lib-hard", "lib"),
		reg("empty", 0o644, ""),
		with(dir("emptydir/", 0o700), func(h *tar.Header) { h.Uid = 1234 }),
		reg("dup", 0o644, "first"),
		reg("dup", 0o600, "second"),
		reg("utf8/héllo wörld ✓.txt", 0o644, "utf-8"),
		reg("utf8/日本語/ファイル", 0o644, "nihongo"),
		reg("long/"+strings.Repeat("ñ", 150), 0o644, "300-byte name"),
		reg(deep, 0o644, "deep"),
	}

	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		h := e.hdr
		if h.ModTime.IsZero() {
			h.ModTime = SampleMTime
		}
		if h.Typeflag == tar.TypeReg {
			h.Size = int64(len(e.body))
		}
		h.Format = tar.FormatPAX
		if err := tw.WriteHeader(&h); err != nil {
			tb.Fatalf("writing tar header %q: %v", h.Name, err)
		}
		if _, err := tw.Write(e.body); err != nil {
			tb.Fatalf("writing tar entry %q: %v", h.Name, err)
		}
	}
	if err := tw.Close(); err != nil {
		tb.Fatalf("closing tar: %v", err)
	}
	return buf.Bytes()
}

// EStargz converts a layer tar to an eStargz blob with estargz.Build (4 KiB
// chunks unless opts say otherwise) and returns it with its TOC digest.
func EStargz(tb testing.TB, tarBytes []byte, opts ...estargz.Option) ([]byte, digest.Digest) {
	tb.Helper()
	opts = append([]estargz.Option{estargz.WithChunkSize(4096)}, opts...)
	blob, err := estargz.Build(io.NewSectionReader(bytes.NewReader(tarBytes), 0, int64(len(tarBytes))), opts...)
	if err != nil {
		tb.Fatalf("building eStargz: %v", err)
	}
	defer blob.Close()
	data, err := io.ReadAll(blob)
	if err != nil {
		tb.Fatalf("reading eStargz blob: %v", err)
	}
	return data, blob.TOCDigest()
}
