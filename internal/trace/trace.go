// Package trace finds the files a program opens, in order, by running it
// under strace in a chroot of an image's root file system. poolfs optimize
// and the benchmark use it to choose the files an eStargz layer puts
// before its .prefetch.landmark.
package trace

import (
	"bufio"
	"bytes"
	"debug/elf"
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
)

// rootDir is the extracted root file system a program runs in.
type rootDir struct{ dir string }

var (
	straceOpen = regexp.MustCompile(`^\d+\s+openat\([^,]+, "([^"]+)", ([A-Z_|]+)[^)]*\)\s+= (-?\d+)`)
	straceExec = regexp.MustCompile(`^\d+\s+execve\("([^"]+)", .*\)\s+= (-?\d+)`)
)

// FilesOpened runs argv in a chroot of the rootfs under strace and returns
// the regular files it opened (and executed, with their ELF interpreter),
// as cleaned paths inside the rootfs with symlinks resolved, in first-open
// order. /etc/passwd and /etc/group come first: the OCI runtime reads them
// to set up the process.
func FilesOpened(root string, argv []string) ([]string, error) {
	r := rootDir{dir: root}
	// /proc and /dev as a container has them (the JVM reads /proc).
	var mounted []string
	defer func() {
		for i := len(mounted) - 1; i >= 0; i-- {
			_ = exec.Command("umount", "-l", mounted[i]).Run()
		}
	}()
	for _, m := range [][]string{{"-t", "proc", "proc", "proc"}, {"--rbind", "/dev", "dev"}} {
		target := filepath.Join(r.dir, m[len(m)-1])
		if err := os.MkdirAll(target, 0o755); err != nil {
			return nil, err
		}
		args := append(append([]string{}, m[:len(m)-1]...), target)
		if out, err := exec.Command("mount", args...).CombinedOutput(); err != nil {
			return nil, fmt.Errorf("mount %v: %w: %s", args, err, out)
		}
		mounted = append(mounted, target)
	}
	out, err := os.CreateTemp("", "poolfs-strace-")
	if err != nil {
		return nil, err
	}
	out.Close()
	defer os.Remove(out.Name())
	args := append([]string{"-f", "-qq", "-e", "trace=openat,execve", "-o", out.Name(), "chroot", r.dir}, argv...)
	cmd := exec.Command("strace", args...)
	cmd.Env = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root", "LANG=C"}
	if o, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("strace chroot %s %v: %w\n%s", r.dir, argv, err, o)
	}
	trace, err := os.ReadFile(out.Name())
	if err != nil {
		return nil, err
	}

	seen := map[string]bool{}
	var files []string
	add := func(p string) {
		real, ok := r.resolve(p)
		if !ok || seen[real] || isPseudo(real) {
			return
		}
		fi, err := os.Lstat(filepath.Join(r.dir, real))
		if err != nil || !fi.Mode().IsRegular() {
			return
		}
		seen[real] = true
		files = append(files, real)
	}
	add("/etc/passwd")
	add("/etc/group")
	sc := bufio.NewScanner(bytes.NewReader(trace))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if m := straceExec.FindStringSubmatch(line); m != nil {
			if n, _ := strconv.Atoi(m[2]); n < 0 || m[1] == "/usr/sbin/chroot" || strings.HasSuffix(m[1], "/chroot") {
				continue
			}
			add(m[1])
			if real, ok := r.resolve(m[1]); ok {
				if interp := elfInterp(filepath.Join(r.dir, real)); interp != "" {
					add(interp)
				}
			}
			continue
		}
		if m := straceOpen.FindStringSubmatch(line); m != nil {
			if n, _ := strconv.Atoi(m[3]); n < 0 || strings.Contains(m[2], "O_DIRECTORY") {
				continue
			}
			p := m[1]
			if !strings.HasPrefix(p, "/") {
				continue // relative to some directory fd: rare, ignored
			}
			add(p)
		}
	}
	return files, nil
}

func elfInterp(p string) string {
	f, err := elf.Open(p)
	if err != nil {
		return ""
	}
	defer f.Close()
	for _, prog := range f.Progs {
		if prog.Type == elf.PT_INTERP {
			b := make([]byte, prog.Filesz)
			if _, err := prog.ReadAt(b, 0); err != nil {
				return ""
			}
			return strings.TrimRight(string(b), "\x00")
		}
	}
	return ""
}

// resolve follows symlinks of p inside the rootfs (absolute targets are
// relative to the rootfs) and returns the real path without a leading "/".
func (r rootDir) resolve(p string) (string, bool) {
	parts := strings.Split(strings.TrimPrefix(path.Clean("/"+p), "/"), "/")
	var done []string
	hops := 0
	for len(parts) > 0 {
		part := parts[0]
		parts = parts[1:]
		switch part {
		case "", ".":
			continue
		case "..":
			if len(done) > 0 {
				done = done[:len(done)-1]
			}
			continue
		}
		cur := append(append([]string{}, done...), part)
		fi, err := os.Lstat(filepath.Join(r.dir, filepath.Join(cur...)))
		if err != nil {
			return "", false
		}
		if fi.Mode()&os.ModeSymlink == 0 {
			done = cur
			continue
		}
		if hops++; hops > 40 {
			return "", false
		}
		target, err := os.Readlink(filepath.Join(r.dir, filepath.Join(cur...)))
		if err != nil {
			return "", false
		}
		tparts := strings.Split(target, "/")
		if strings.HasPrefix(target, "/") {
			done = nil
		}
		parts = append(tparts, parts...)
	}
	return strings.Join(done, "/"), len(done) > 0
}

// isPseudo tells the kernel's file systems mounted for the run (/proc,
// /dev, /sys) from files of the image.
func isPseudo(p string) bool {
	for _, d := range []string{"proc", "dev", "sys"} {
		if p == d || strings.HasPrefix(p, d+"/") {
			return true
		}
	}
	return false
}
