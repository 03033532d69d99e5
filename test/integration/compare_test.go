package integration

import (
	"encoding/hex"
	"testing"

	"github.com/poolfs/poolfs/fs/fstest"
)

// compareTree checks a mounted layer view against its source tar, entry by
// entry (type, mode, owner, size, mtime, link target, device, xattrs, link
// count and inode sharing, content hash).
func compareTree(t *testing.T, dir string, tarBytes []byte) {
	t.Helper()
	fstest.CompareTree(t, dir, tarBytes)
}

// tarContentHash is the sha256 of a regular file's content in the tar.
func tarContentHash(t *testing.T, tarBytes []byte, rel string) [32]byte {
	t.Helper()
	v, err := fstest.TarView(tarBytes)
	if err != nil {
		t.Fatal(err)
	}
	e, ok := v[rel]
	if !ok {
		t.Fatalf("%s not in the tar", rel)
	}
	var sum [32]byte
	b, err := hex.DecodeString(e.SHA256)
	if err != nil || len(b) != len(sum) {
		t.Fatalf("no content hash for %s", rel)
	}
	copy(sum[:], b)
	return sum
}
