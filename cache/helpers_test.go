package cache

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sirupsen/logrus"
	logtest "github.com/sirupsen/logrus/hooks/test"
)

// digestKey is the content key of b, as layers use it.
func digestKey(b []byte) string {
	s := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(s[:])
}

// fill returns n bytes that differ with seed, so swapped entries differ.
func fill(n int, seed byte) []byte {
	return bytes.Repeat([]byte{seed}, n)
}

func openDisk(t *testing.T, dir string) (*Disk, *logtest.Hook) {
	t.Helper()
	logger, hook := logtest.NewNullLogger()
	logger.SetLevel(logrus.DebugLevel)
	d, err := NewDisk(dir, logrus.NewEntry(logger))
	if err != nil {
		t.Fatalf("NewDisk(%s): %v", dir, err)
	}
	return d, hook
}

// files lists the regular files under root, relative to it.
func files(t *testing.T, root string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(root, func(p string, e fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !e.IsDir() {
			rel, _ := filepath.Rel(root, p)
			out = append(out, rel)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("walking %s: %v", root, err)
	}
	return out
}

// diskBytes sums the sizes of the regular files under root.
func diskBytes(t *testing.T, root string) int64 {
	t.Helper()
	var n int64
	for _, f := range files(t, root) {
		fi, err := os.Stat(filepath.Join(root, f))
		if err != nil {
			t.Fatal(err)
		}
		n += fi.Size()
	}
	return n
}

func tempFiles(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	for _, f := range files(t, dir) {
		if strings.HasPrefix(filepath.Base(f), tempPrefix) {
			out = append(out, f)
		}
	}
	return out
}

// checkWarnedOnce fails unless some failure was warned about and no kind of
// failure was warned about twice.
func checkWarnedOnce(t *testing.T, hook *logtest.Hook) {
	t.Helper()
	seen := map[any]int{}
	for _, e := range hook.AllEntries() {
		if e.Level == logrus.WarnLevel {
			seen[e.Data["kind"]]++
		}
	}
	if len(seen) == 0 {
		t.Error("failure not logged at warning level")
	}
	for k, n := range seen {
		if n > 1 {
			t.Errorf("%d warnings of kind %v, want 1", n, k)
		}
	}
}
