// Package mountpoint prepares the directory the daemon mounts on: it tells a
// live mount from one left behind by a killed daemon, and clears the latter.
package mountpoint

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// ErrLive says another process still serves the mount point.
var ErrLive = errors.New("mount point is in use by a live mount")

// Info is one line of /proc/self/mountinfo.
type Info struct {
	MountPoint string
	FSType     string
	Source     string
}

// Mounts parses /proc/self/mountinfo. Reading it never touches the mounted
// filesystems, so it cannot hang on a dead or stuck FUSE mount.
func Mounts() ([]Info, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, fmt.Errorf("reading mount table: %w", err)
	}
	defer f.Close()
	var out []Info
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		// 36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue
		fields := strings.Fields(sc.Text())
		sep := slices.Index(fields, "-")
		if len(fields) < 5 || sep < 0 || sep+2 >= len(fields) {
			continue
		}
		out = append(out, Info{
			MountPoint: unescape(fields[4]),
			FSType:     fields[sep+1],
			Source:     unescape(fields[sep+2]),
		})
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("reading mount table: %w", err)
	}
	return out, nil
}

// unescape undoes the octal escapes (\040 for a space, ...) mountinfo uses
// for space, tab, newline and backslash.
func unescape(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' {
			if v, ok := octal3(s[i+1:]); ok {
				b.WriteByte(v)
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func octal3(s string) (byte, bool) {
	if len(s) < 3 {
		return 0, false
	}
	var v int
	for _, c := range s[:3] {
		if c < '0' || c > '7' {
			return 0, false
		}
		v = v*8 + int(c-'0')
	}
	return byte(v), v < 256
}

// Mounted reports whether dir is a mount point, from /proc/self/mountinfo
// (a stat would hang or fail on a dead FUSE mount).
func Mounted(dir string) (bool, error) {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return false, fmt.Errorf("resolving %s: %w", dir, err)
	}
	ms, err := Mounts()
	if err != nil {
		return false, err
	}
	for _, m := range ms {
		if m.MountPoint == dir {
			return true, nil
		}
	}
	return false, nil
}

// Prepare makes dir ready to mount on: it creates it, detaches a dead mount
// a killed daemon left there ("transport endpoint is not connected"), and
// refuses with ErrLive when a working mount is there.
func Prepare(dir string) error {
	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
		return fmt.Errorf("creating %s: %w", filepath.Dir(dir), err)
	}
	mounted, err := Mounted(dir)
	if err != nil {
		return err
	}
	if mounted {
		// statfs, not stat: the kernel answers stat of a FUSE root from
		// its attribute cache (poolfs gives long timeouts), so a dead
		// mount looks alive to stat; statfs always goes to the daemon.
		var st unix.Statfs_t
		err := unix.Statfs(dir, &st)
		if err == nil {
			return fmt.Errorf("%s: %w", dir, ErrLive)
		}
		if !errors.Is(err, syscall.ENOTCONN) && !errors.Is(err, syscall.ECONNABORTED) {
			return fmt.Errorf("checking mount at %s: %w", dir, err)
		}
		if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil {
			return fmt.Errorf("clearing dead mount at %s: %w", dir, err)
		}
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("creating %s: %w", dir, err)
	}
	return nil
}
