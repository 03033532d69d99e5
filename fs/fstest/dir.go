package fstest

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"testing"

	"golang.org/x/sys/unix"
)

// DirView walks the tree at dir the way a container runtime sees it:
// lstat, readlink, llistxattr/lgetxattr and, if hashContent, the sha256 of
// each regular file. It walks with directory file descriptors (openat) so
// paths longer than PATH_MAX still work.
func DirView(dir string, hashContent bool) (View, error) {
	return dirView(dir, hashContent, false)
}

// dirView is DirView; with listedHidden, a name the directory lists but
// lstat does not find is left out, as overlayfs lists the whiteouts of a
// directory that only its lower layer has while hiding them from lookups.
func dirView(dir string, hashContent, listedHidden bool) (View, error) {
	// A store's diff may be a link to the tree (see alsfs.Options.InPlaceTrees);
	// its clients follow it, as overlayfs does with a lower directory.
	dir, err := filepath.EvalSymlinks(dir)
	if err != nil {
		return nil, fmt.Errorf("resolving %s: %w", dir, err)
	}
	v := View{}
	var root unix.Stat_t
	if err := unix.Lstat(dir, &root); err != nil {
		return nil, fmt.Errorf("lstat %s: %w", dir, err)
	}
	rootEntry, err := entryFromStat("", &root)
	if err != nil {
		return nil, err
	}
	if rootEntry.Xattrs, err = xattrs(dir); err != nil {
		return nil, fmt.Errorf("%s: %w", dir, err)
	}
	v[""] = rootEntry

	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", dir, err)
	}
	w := &walker{view: v, hashContent: hashContent, listedHidden: listedHidden, inodes: map[[2]uint64][]string{}}
	if err := w.walk(fd, ""); err != nil {
		return nil, err
	}
	// Hard links: names sharing (dev, ino).
	for _, names := range w.inodes {
		if len(names) < 2 {
			continue
		}
		sort.Strings(names)
		for _, n := range names {
			v[n].Links = names
		}
	}
	return v, nil
}

type walker struct {
	view         View
	hashContent  bool
	listedHidden bool // see dirView
	inodes       map[[2]uint64][]string
}

// walk records the children of the directory open as fd (at path p) and
// descends into subdirectories. It closes fd.
func (w *walker) walk(fd int, p string) error {
	f := os.NewFile(uintptr(fd), p)
	names, err := f.Readdirnames(-1)
	if err != nil {
		f.Close()
		return fmt.Errorf("readdir %q: %w", p, err)
	}
	defer f.Close()
	sort.Strings(names)
	for _, name := range names {
		cp := joinPath(p, name)
		var st unix.Stat_t
		if err := unix.Fstatat(fd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			if w.listedHidden && errors.Is(err, unix.ENOENT) {
				continue
			}
			return fmt.Errorf("lstat %q: %w", cp, err)
		}
		e, err := entryFromStat(cp, &st)
		if err != nil {
			return err
		}
		// /proc/self/fd/N/name reaches the entry without a long path and
		// without following a final symlink (the l* xattr calls don't).
		procPath := "/proc/self/fd/" + strconv.Itoa(fd) + "/" + name
		if e.Xattrs, err = xattrs(procPath); err != nil {
			return fmt.Errorf("%q: %w", cp, err)
		}
		switch e.Type {
		case "symlink":
			if e.LinkName, err = readlinkat(fd, name); err != nil {
				return fmt.Errorf("readlink %q: %w", cp, err)
			}
		case "reg":
			if w.hashContent {
				if e.SHA256, err = hashAt(fd, name); err != nil {
					return fmt.Errorf("reading %q: %w", cp, err)
				}
			}
		}
		if e.Type != "dir" {
			key := [2]uint64{st.Dev, st.Ino}
			w.inodes[key] = append(w.inodes[key], cp)
		}
		w.view[cp] = e
		if e.Type == "dir" {
			cfd, err := unix.Openat(fd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
			if err != nil {
				return fmt.Errorf("open %q: %w", cp, err)
			}
			if err := w.walk(cfd, cp); err != nil {
				return err
			}
		}
	}
	return nil
}

func entryFromStat(p string, st *unix.Stat_t) (*Entry, error) {
	e := &Entry{
		Path:    p,
		Mode:    st.Mode & 0o7777,
		UID:     st.Uid,
		GID:     st.Gid,
		Size:    st.Size,
		ModTime: st.Mtim.Sec,
		NLink:   uint32(st.Nlink),
	}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFDIR:
		e.Type = "dir"
	case unix.S_IFREG:
		e.Type = "reg"
	case unix.S_IFLNK:
		e.Type = "symlink"
	case unix.S_IFCHR:
		e.Type = "char"
	case unix.S_IFBLK:
		e.Type = "block"
	case unix.S_IFIFO:
		e.Type = "fifo"
	default:
		return nil, fmt.Errorf("%q: unexpected file type %#o", p, st.Mode&unix.S_IFMT)
	}
	if e.Type == "char" || e.Type == "block" {
		e.DevMajor, e.DevMinor = unix.Major(st.Rdev), unix.Minor(st.Rdev)
	}
	return e, nil
}

// xattrs returns all extended attributes of p (not following a final
// symlink), or nil if it has none.
func xattrs(p string) (map[string]string, error) {
	names, err := getSized(func(b []byte) (int, error) { return unix.Llistxattr(p, b) })
	if err != nil {
		if errors.Is(err, unix.ENOTSUP) {
			return nil, nil
		}
		return nil, fmt.Errorf("llistxattr: %w", err)
	}
	var out map[string]string
	for _, name := range bytes.Split(names, []byte{0}) {
		if len(name) == 0 {
			continue
		}
		val, err := getSized(func(b []byte) (int, error) { return unix.Lgetxattr(p, string(name), b) })
		if err != nil {
			return nil, fmt.Errorf("lgetxattr %s: %w", name, err)
		}
		if out == nil {
			out = map[string]string{}
		}
		out[string(name)] = string(val)
	}
	return out, nil
}

// getSized calls an xattr syscall the usual way: ask for the size, then
// fetch, retrying if the value grew in between.
func getSized(call func([]byte) (int, error)) ([]byte, error) {
	for {
		n, err := call(nil)
		if err != nil {
			return nil, err
		}
		if n == 0 {
			return nil, nil
		}
		buf := make([]byte, n)
		n, err = call(buf)
		if errors.Is(err, unix.ERANGE) {
			continue
		}
		if err != nil {
			return nil, err
		}
		return buf[:n], nil
	}
}

func readlinkat(dirfd int, name string) (string, error) {
	for size := 256; ; size *= 2 {
		buf := make([]byte, size)
		n, err := unix.Readlinkat(dirfd, name, buf)
		if err != nil {
			return "", err
		}
		if n < size {
			return string(buf[:n]), nil
		}
	}
}

func hashAt(dirfd int, name string) (string, error) {
	fd, err := unix.Openat(dirfd, name, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return "", err
	}
	f := os.NewFile(uintptr(fd), name)
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// CompareTree checks the tree mounted at mountDir against the view
// tarBytes should produce (see TarView), content included, and reports
// each difference as a test error.
func CompareTree(t testing.TB, mountDir string, tarBytes []byte) {
	t.Helper()
	compareTree(t, mountDir, tarBytes, false)
}

// CompareMergedTree is CompareTree for an overlay mount at mountDir whose
// only lower directory is the tar's view and whose upper directory is
// empty (see tarView); its root, the upper directory, is not
// compared.
func CompareMergedTree(t testing.TB, mountDir string, tarBytes []byte) {
	t.Helper()
	compareTree(t, mountDir, tarBytes, true)
}

func compareTree(t testing.TB, mountDir string, tarBytes []byte, merged bool) {
	t.Helper()
	want, err := tarView(tarBytes, merged)
	if err != nil {
		t.Fatalf("fstest: expected view of tar: %v", err)
	}
	got, err := dirView(mountDir, true, merged)
	if err != nil {
		t.Fatalf("fstest: walking %s: %v", mountDir, err)
	}
	if merged {
		delete(want, "")
		delete(got, "")
	}
	diffs := Diff(want, got)
	const maxReported = 50
	for i, d := range diffs {
		if i == maxReported {
			t.Errorf("fstest: ... and %d more differences", len(diffs)-maxReported)
			break
		}
		t.Errorf("fstest: %s", d)
	}
	t.Logf("fstest: compared %d entries expected from the tar with %d found under %s: %d differences",
		len(want), len(got), mountDir, len(diffs))
}
