package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/poolfs/poolfs/internal/trace"
)

// rootfs is a Debian root built with debootstrap, cached under the work
// directory: NAME.tar (what the images are built from) and NAME.rootfs (the
// extracted tree, for strace runs and the on-disk metadata walk).
type rootfs struct {
	name string
	dir  string // extracted tree
	tar  []byte
}

// buildRootfs returns the cached rootfs or makes it: debootstrap minbase
// with the packages, apt caches removed, tarred with numeric owners.
func buildRootfs(work, name, packages string) (*rootfs, error) {
	dir := filepath.Join(work, name+".rootfs")
	tarPath := filepath.Join(work, name+".tar")
	if _, err := os.Stat(tarPath); err != nil {
		start := time.Now()
		logf("building %s rootfs with debootstrap (--include=%s); cached in %s for later runs", name, packages, tarPath)
		tmp := dir + ".tmp"
		if err := os.RemoveAll(tmp); err != nil {
			return nil, err
		}
		logPath := filepath.Join(work, name+".debootstrap.log")
		lf, err := os.Create(logPath)
		if err != nil {
			return nil, err
		}
		cmd := exec.Command("debootstrap", "--variant=minbase", "--include="+packages, "bookworm", tmp)
		cmd.Stdout, cmd.Stderr = lf, lf
		err = cmd.Run()
		lf.Close()
		if err != nil {
			return nil, fmt.Errorf("debootstrap %s: %w (log: %s)", name, err, logPath)
		}
		for _, g := range []string{"var/cache/apt/archives/*.deb", "var/lib/apt/lists/*", "var/cache/apt/*.bin"} {
			m, _ := filepath.Glob(filepath.Join(tmp, g))
			for _, p := range m {
				if err := os.RemoveAll(p); err != nil {
					return nil, err
				}
			}
		}
		if err := runCmd("tar", "-C", tmp, "--numeric-owner", "-cf", tarPath+".part", "."); err != nil {
			return nil, err
		}
		if err := os.Rename(tarPath+".part", tarPath); err != nil {
			return nil, err
		}
		os.RemoveAll(dir)
		if err := os.Rename(tmp, dir); err != nil {
			return nil, err
		}
		logf("  %s rootfs built in %v", name, time.Since(start).Round(time.Second))
	}
	if _, err := os.Stat(filepath.Join(dir, "usr")); err != nil {
		logf("extracting %s into %s", tarPath, dir)
		os.RemoveAll(dir)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, err
		}
		if err := runCmd("tar", "-C", dir, "--numeric-owner", "-xpf", tarPath); err != nil {
			return nil, err
		}
	}
	b, err := os.ReadFile(tarPath)
	if err != nil {
		return nil, err
	}
	return &rootfs{name: name, dir: dir, tar: b}, nil
}

func runCmd(name string, args ...string) error {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %w\n%s", name, strings.Join(args, " "), err, out)
	}
	return nil
}

// filesRead returns the files argv opens in the rootfs (see trace.FilesOpened).
func (r *rootfs) filesRead(argv []string) ([]string, error) {
	return trace.FilesOpened(r.dir, argv)
}
