package cache

import (
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	digest "github.com/opencontainers/go-digest"
)

// TestDiskKeysStayInside: cache keys come from layer TOCs (chunk digests)
// and blob names, which a hostile image controls. Whatever the key, the
// disk cache creates and opens files only under its own directory, because
// file names are hashes of keys, never the keys themselves.
func TestDiskKeysStayInside(t *testing.T) {
	parent := t.TempDir()
	dir := filepath.Join(parent, "cache")
	d, err := NewDisk(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	content := []byte("chunk")
	keys := []string{
		"../../../etc/passwd",
		"/etc/shadow",
		"sha256:../../../../tmp/x",
		"sha256:" + strings.Repeat("a", 64) + "/../../y",
		"blob:sha256:abc:0/../../../z",
		"a\x00b",
		strings.Repeat("../", 2000),
		"",
		string(digest.FromBytes(content)),
	}
	for _, k := range keys {
		name, path := d.entryPath(k)
		if !isEntryName(name) {
			t.Errorf("key %q maps to file name %q, not a hash", k, name)
		}
		if rel, err := filepath.Rel(dir, path); err != nil || strings.HasPrefix(rel, "..") {
			t.Errorf("key %q maps to %s, outside %s", k, path, dir)
		}
		d.Add(k, content)
		d.Get(k)
	}
	err = filepath.WalkDir(parent, func(p string, e fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p == parent || p == dir || strings.HasPrefix(p, dir+string(os.PathSeparator)) {
			return nil
		}
		t.Errorf("the cache created %s outside its directory", p)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
