// Package mountpoint prepares the directory the daemon mounts on: it tells a
// live mount from one left behind by a killed daemon, and clears the latter.
package mountpoint

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// ErrLive says another process still serves the mount point.
var ErrLive = errors.New("mount point is in use by a live mount")

// Mounted reports whether dir is a mount point, from /proc/self/mountinfo
// (a stat would hang or fail on a dead FUSE mount).
func Mounted(dir string) (bool, error) {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return false, fmt.Errorf("resolving %s: %w", dir, err)
	}
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return false, fmt.Errorf("reading mount table: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) > 4 && unescape(fields[4]) == dir {
			return true, nil
		}
	}
	return false, sc.Err()
}

// unescape undoes the octal escapes mountinfo uses for space, tab, newline
// and backslash.
func unescape(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			var c byte
			if _, err := fmt.Sscanf(s[i+1:i+4], "%03o", &c); err == nil {
				b.WriteByte(c)
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
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
