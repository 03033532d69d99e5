package integration

import (
	"archive/tar"
	"bytes"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/poolfs/poolfs/pool"
	"github.com/poolfs/poolfs/test/fixture"
)

// elfDelay is what each blob request waits in the test's registry: long
// enough that requests the loader makes one after another are far apart,
// and requests sent together are close.
const elfDelay = 200 * time.Millisecond

// TestELFPrefetchRun runs the host's /bin/ls with chroot in a layer that
// holds only it and what its loader reads, through the mount, with read-
// ahead off: with the ELF prefetch, the interpreter, the loader's cache
// and the three libraries (libc, libselinux, libpcre2, the last needed by
// libselinux only) are each fetched once, the libraries at about the same
// time, and nothing else is; without it, the loader asks for the
// libraries one after another.
func TestELFPrefetchRun(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("chroot needs root")
	}
	files, loaderFiles := elfTree(t)
	reg := fixture.StartRegistry(t)
	ref, layers := pushImage(t, reg, "test/elf", [][]byte{elfTar(t, files)}, fixture.ImageOptions{ChunkSize: 64 << 10})
	reg.SetMiddleware(func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if strings.Contains(r.URL.Path, "/blobs/") && r.Header.Get("Range") != "" {
				time.Sleep(elfDelay)
			}
			next.ServeHTTP(w, r)
		})
	})
	libs := []string{"usr/lib/x86_64-linux-gnu/libc.so.6", "usr/lib/x86_64-linux-gnu/libselinux.so.1", loaderFiles[len(loaderFiles)-1]}

	for _, on := range []bool{true, false} {
		t.Run(map[bool]string{true: "on", false: "off"}[on], func(t *testing.T) {
			m := mountPoolOpts(t, reg, mountOpts{Prefetch: pool.PrefetchOptions{NoPrioritized: true, NoELF: !on}})
			diff := filepath.Join(m.grammar2(ref, layers[0].Digest.String()), "diff")
			if _, err := os.Stat(diff); err != nil {
				t.Fatal(err)
			}
			reg.ResetStats()
			out, err := exec.Command("chroot", diff, "/usr/bin/ls", "/usr/lib/x86_64-linux-gnu").CombinedOutput()
			if err != nil || !strings.Contains(string(out), "libselinux.so.1") {
				t.Fatalf("chroot ls: %v\n%s", err, out)
			}
			// Which files each blob request touched, and when it came.
			fetched := map[string][]time.Time{}
			for _, r := range blobRequests(reg, layers[0].Digest) {
				start, end, ok := parseRange(r.Range)
				if !ok {
					t.Fatalf("blob request with Range %q", r.Range)
				}
				for _, name := range append(append([]string(nil), loaderFiles...), "zz/filler", "usr/bin/cat", "usr/lib/x86_64-linux-gnu/libm.so.6") {
					s, e := compressedRange(t, m, layers[0].Digest, name)
					if start < e && end >= s {
						fetched[name] = append(fetched[name], r.Time)
					}
				}
			}
			if t.Failed() || testing.Verbose() {
				t.Logf("requests:\n%s", reg.RequestLog())
			}
			for _, name := range loaderFiles {
				if len(fetched[name]) == 0 {
					t.Errorf("%s was not fetched", name)
				}
			}
			for _, name := range []string{"usr/bin/cat", "usr/lib/x86_64-linux-gnu/libm.so.6"} {
				if len(fetched[name]) > 0 {
					t.Errorf("%s was fetched, but the loader never reads it", name)
				}
			}
			// The loader needs libselinux and libc (ls's own DT_NEEDED) one
			// after the other; the prefetch asks for both at once, each in
			// one request, and for libpcre2 (libselinux's) once
			// libselinux's headers are in.
			for _, name := range libs {
				if len(fetched[name]) == 0 {
					t.Fatalf("%s not fetched", name)
				}
				if on && len(fetched[name]) != 1 {
					t.Errorf("%s fetched by %d requests, want 1", name, len(fetched[name]))
				}
			}
			apart := fetched[libs[0]][0].Sub(fetched[libs[1]][0]).Abs()
			if together := apart < elfDelay/2; together != on {
				t.Errorf("libc and libselinux first asked for %v apart; want them together: %v", apart, on)
			}
		})
	}
}

// elfTree lists the files of a merged-/usr root holding the host's
// /bin/ls and what its loader reads (loaderFiles, libpcre2's real name
// last), plus files nobody reads; it skips the test on a host without
// them.
func elfTree(t *testing.T) (files map[string]string, loaderFiles []string) {
	t.Helper()
	files = map[string]string{ // name in the layer: host file, or "->target"
		"bin":                            "->usr/bin",
		"lib":                            "->usr/lib",
		"lib64":                          "->usr/lib64",
		"usr/lib64/ld-linux-x86-64.so.2": "->/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
	}
	for _, f := range []string{"/usr/bin/ls", "/etc/ld.so.cache",
		"/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2", "/usr/lib/x86_64-linux-gnu/libc.so.6",
		"/usr/lib/x86_64-linux-gnu/libselinux.so.1", "/usr/lib/x86_64-linux-gnu/libpcre2-8.so.0"} {
		real, err := filepath.EvalSymlinks(f)
		if err != nil {
			t.Skipf("host has no %s", f)
		}
		name := strings.TrimPrefix(f, "/")
		if filepath.Base(real) != filepath.Base(f) { // libpcre2: a symlink to its real name
			files[name] = "->" + filepath.Base(real)
			name = filepath.Join(filepath.Dir(name), filepath.Base(real))
		}
		files[name] = real
		loaderFiles = append(loaderFiles, name)
	}
	out, err := exec.Command("readelf", "-d", "/usr/bin/ls").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "[libselinux.so.1]") {
		t.Skipf("host's ls is not the one this test expects (readelf: %v)", err)
	}
	files["usr/bin/cat"] = "filler"
	files["usr/lib/x86_64-linux-gnu/libm.so.6"] = "filler"
	files["zz/filler"] = "random" // last in the blob: the TOC window holds it, not the loader's files
	return files, loaderFiles
}

// elfTar writes files (see elfTree) as a layer tar, in name order.
func elfTar(t *testing.T, files map[string]string) []byte {
	t.Helper()
	var names []string
	dirs := map[string]bool{}
	for name := range files {
		names = append(names, name)
		for d := filepath.Dir(name); d != "."; d = filepath.Dir(d) {
			if !dirs[d] {
				dirs[d] = true
				names = append(names, d+"/")
			}
		}
	}
	sort.Strings(names)
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, name := range names {
		src := files[name]
		var data []byte
		hdr := &tar.Header{Name: name, Mode: 0o755, Typeflag: tar.TypeReg}
		switch {
		case strings.HasSuffix(name, "/"):
			hdr.Typeflag = tar.TypeDir
		case strings.HasPrefix(src, "->"):
			hdr.Typeflag, hdr.Linkname = tar.TypeSymlink, strings.TrimPrefix(src, "->")
		case src == "filler":
			data = bytes.Repeat([]byte("never read by the loader "), 4000)
		case src == "random":
			data = make([]byte, 3<<20)
			rnd := rand.New(rand.NewPCG(5, 6))
			for i := range data {
				data[i] = byte(rnd.Uint32())
			}
		default:
			var err error
			if data, err = os.ReadFile(src); err != nil {
				t.Fatal(err)
			}
		}
		hdr.Size = int64(len(data))
		if err := tw.WriteHeader(hdr); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write(data); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// parseRange reads a "bytes=START-END" header (END inclusive).
func parseRange(h string) (start, end int64, ok bool) {
	a, b, ok := strings.Cut(strings.TrimPrefix(h, "bytes="), "-")
	if !ok {
		return 0, 0, false
	}
	start, err1 := strconv.ParseInt(a, 10, 64)
	end, err2 := strconv.ParseInt(b, 10, 64)
	return start, end, err1 == nil && err2 == nil
}
