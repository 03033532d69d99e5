package cache

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/sirupsen/logrus"
)

// Tests run as root, so permissions cannot make writes fail; these put
// files where directories are expected, or inject errors at the temp file.

func TestDiskDirReplacedByFile(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "cache")
	d, hook := openDisk(t, dir)
	if err := os.Remove(dir); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dir, []byte("in the way"), 0o600); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3; i++ {
		v := []byte{byte(i)}
		d.Add(digestKey(v), v) // must neither panic nor fail loudly
		if _, ok := d.Get(digestKey(v)); ok {
			t.Errorf("Get hit after failed Add")
		}
	}
	checkWarnedOnce(t, hook)
	if s := d.Stats(); s.Adds != 0 || s.Bytes != 0 {
		t.Errorf("Stats = %+v after failed Adds", s)
	}
}

func TestDiskWriteFailures(t *testing.T) {
	v := []byte("payload that will not fit")
	key := digestKey(v)
	tests := []struct {
		name  string
		setup func(t *testing.T, d *Disk)
	}{
		{"entry subdir is a file", func(t *testing.T, d *Disk) {
			_, p := d.entryPath(key)
			if err := os.WriteFile(filepath.Dir(p), nil, 0o600); err != nil {
				t.Fatal(err)
			}
		}},
		{"entry path is a dir", func(t *testing.T, d *Disk) {
			_, p := d.entryPath(key)
			if err := os.MkdirAll(filepath.Join(p, "x"), 0o700); err != nil {
				t.Fatal(err)
			}
		}},
		{"temp file creation fails", func(t *testing.T, d *Disk) {
			d.createTemp = func(string, string) (tempFile, error) {
				return nil, &os.PathError{Op: "open", Path: "tmp", Err: syscall.EROFS}
			}
		}},
		{"disk full mid-write", func(t *testing.T, d *Disk) {
			d.createTemp = failingTemp(10, syscall.ENOSPC, nil)
		}},
		{"disk full on trailer", func(t *testing.T, d *Disk) {
			d.createTemp = failingTemp(len(v), syscall.ENOSPC, nil)
		}},
		{"close fails", func(t *testing.T, d *Disk) {
			d.createTemp = failingTemp(1<<30, nil, syscall.EIO)
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			d, hook := openDisk(t, dir)
			tc.setup(t, d)
			for i := 0; i < 3; i++ {
				d.Add(key, v)
			}
			if _, ok := d.Get(key); ok {
				t.Error("Get hit after failed Add")
			}
			if tmp := tempFiles(t, dir); len(tmp) != 0 {
				t.Errorf("partial files left behind: %v", tmp)
			}
			checkWarnedOnce(t, hook)
			if s := d.Stats(); s.Adds != 0 || s.Bytes != 0 {
				t.Errorf("Stats = %+v after failed Adds", s)
			}
			for _, e := range hook.AllEntries() {
				if e.Level > logrus.WarnLevel {
					continue // startup info at debug level
				}
				if e.Data["key"] != key || e.Data["path"] == nil || e.Data["kind"] == nil {
					t.Errorf("log entry without key/path/kind: %v", e.Data)
				}
			}
		})
	}
}

// failingTemp returns a createTemp whose files accept limit bytes and then
// fail writes with writeErr, and fail Close with closeErr. The real file is
// created so the test can check that it is removed.
func failingTemp(limit int, writeErr, closeErr error) func(string, string) (tempFile, error) {
	return func(dir, pattern string) (tempFile, error) {
		f, err := os.CreateTemp(dir, pattern)
		if err != nil {
			return nil, err
		}
		return &limitedFile{File: f, left: limit, writeErr: writeErr, closeErr: closeErr}, nil
	}
}

type limitedFile struct {
	*os.File
	left               int
	writeErr, closeErr error
}

func (f *limitedFile) Write(p []byte) (int, error) {
	if len(p) > f.left {
		n, _ := f.File.Write(p[:f.left])
		f.left = 0
		return n, &os.PathError{Op: "write", Path: f.Name(), Err: f.writeErr}
	}
	f.left -= len(p)
	return f.File.Write(p)
}

func (f *limitedFile) Close() error {
	err := f.File.Close()
	if f.closeErr != nil {
		return &os.PathError{Op: "close", Path: f.Name(), Err: f.closeErr}
	}
	return err
}
