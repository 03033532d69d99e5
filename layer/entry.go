package layer

import (
	"sort"
	"strings"
	"time"
	"unsafe"

	digest "github.com/opencontainers/go-digest"
)

// Entry is one inode of the layer view: a fixed-size record in its tree's
// entry table (see tree). Hard links are one Entry listed under several
// names. Entries are read-only; the scalar attributes are fields, the rest
// (names, times, link targets, xattrs, children) are methods that read the
// tree's shared tables.
type Entry struct {
	t        *tree
	Size     int64 // regular files: content size; symlinks: len(LinkName()); else 0
	mtime    int64 // Unix seconds
	nsec     uint32
	idx      uint32 // index in t.entries
	parent   uint32 // directory of the first name (the root is its own)
	nameOff  uint32 // first name: t.strs[nameOff:nameOff+nameLen]
	nameLen  uint32
	a, b     uint32 // dirs: children t.kids[a:a+b]; regular files: chunks t.chunkPtrs[a:a+b]; symlinks: target t.strs[a:a+b]; devices: major, minor
	UID, GID uint32
	Mode     uint32 // permission bits plus setuid/setgid/sticky (07777), no type bits
	NLink    uint32 // regular files etc.: number of names; dirs: 2 + subdirectories
	Type     EntryType
	xattrs   bool // t.xattrs has an entry for idx
}

// entrySize is what one Entry costs in the table.
const entrySize = int64(unsafe.Sizeof(Entry{}))

// Name is the base name under the entry's first parent ("" for the root).
func (e *Entry) Name() string {
	if e.t == nil {
		return ""
	}
	return e.t.strs[e.nameOff : e.nameOff+e.nameLen]
}

// Path is the cleaned path of the entry's first name in the layer, with
// no leading "/" ("" for the root).
func (e *Entry) Path() string {
	if e.t == nil || e.idx == 0 {
		return ""
	}
	var parts []string
	for c := e; c.idx != 0; c = &e.t.entries[c.parent] {
		parts = append(parts, c.Name())
	}
	for i, j := 0, len(parts)-1; i < j; i, j = i+1, j-1 {
		parts[i], parts[j] = parts[j], parts[i]
	}
	return strings.Join(parts, "/")
}

// ModTime is the entry's modification time, in UTC.
func (e *Entry) ModTime() time.Time { return time.Unix(e.mtime, int64(e.nsec)).UTC() }

// LinkName is a symlink's target ("" for other types).
func (e *Entry) LinkName() string {
	if e.Type != TypeSymlink || e.t == nil {
		return ""
	}
	return e.t.strs[e.a : e.a+e.b]
}

// DevMajor and DevMinor are a device's numbers (0 for other types).
func (e *Entry) DevMajor() uint32 {
	if e.Type != TypeChar && e.Type != TypeBlock {
		return 0
	}
	return e.a
}

func (e *Entry) DevMinor() uint32 {
	if e.Type != TypeChar && e.Type != TypeBlock {
		return 0
	}
	return e.b
}

// Xattrs are the entry's extended attributes, including
// trusted.overlay.opaque / user.overlay.opaque = "y" for opaque
// directories; nil if it has none. The map is shared: do not modify it.
func (e *Entry) Xattrs() map[string][]byte {
	if !e.xattrs {
		return nil
	}
	return e.t.xattrs[e.idx]
}

// ID numbers the entry within its view: the same for every name of a hard
// link, unique among the view's entries, 0 for the root, and the same
// each time the view is built from the same TOC.
func (e *Entry) ID() uint32 { return e.idx }

// NumChildren is how many names a directory lists (0 for other types).
func (e *Entry) NumChildren() int {
	if e.Type != TypeDir || e.t == nil {
		return 0
	}
	return int(e.b)
}

// ChildAt is a directory's i-th child in name order, and its name there.
func (e *Entry) ChildAt(i int) (string, *Entry) {
	return e.t.kid(e.t.kids[int(e.a)+i])
}

// Child is the directory's child called name, or nil.
func (e *Entry) Child(name string) *Entry {
	n := e.NumChildren()
	i := sort.Search(n, func(i int) bool {
		cn, _ := e.ChildAt(i)
		return cn >= name
	})
	if i < n {
		if cn, c := e.ChildAt(i); cn == name {
			return c
		}
	}
	return nil
}

// file is a regular file's chunk list; nil for other types and for empty
// files.
func (e *Entry) file() *fileChunks {
	if e.Type != TypeReg || e.b == 0 || e.t == nil {
		return nil
	}
	fc := &fileChunks{chunks: e.t.chunkPtrs[e.a : e.a+e.b : e.a+e.b]}
	if d, ok := e.t.fileDigests[e.idx]; ok {
		fc.digest = d
	} else {
		fc.digest = fc.chunks[0].digest
	}
	return fc
}

// tree is a layer view in a few flat tables, so that an entry costs a
// fixed record plus its name (measured in TestTreeBytesPerEntry), with no
// per-entry maps, strings or pointers for the garbage collector to keep:
// entries in one slice (index 0 is the root); each directory's children as
// a range of kids sorted by name; names and link targets in one string;
// chunks in one slice; xattrs and file digests that differ from their
// only chunk's in side tables, for the entries that have them.
type tree struct {
	entries []Entry
	strs    string
	// kids holds entry indexes, or aliasBit|i for aliases[i]: a name of a
	// hard link other than its entry's first one.
	kids        []uint32
	aliases     []alias
	chunks      []chunk
	chunkPtrs   []*chunk // &chunks[i], so that reads can keep passing *chunk
	xattrs      map[uint32]map[string][]byte
	fileDigests map[uint32]digest.Digest
	prioritized []uint32
	bytes       int64 // what the tables take, for accounting (see Bytes)
}

const aliasBit = 1 << 31

type alias struct {
	nameOff, nameLen, entry uint32
}

func (t *tree) kid(k uint32) (string, *Entry) {
	if k&aliasBit != 0 {
		a := t.aliases[k&^aliasBit]
		return t.strs[a.nameOff : a.nameOff+a.nameLen], &t.entries[a.entry]
	}
	e := &t.entries[k]
	return e.Name(), e
}

func (t *tree) root() *Entry { return &t.entries[0] }

// measure sets t.bytes from the tables' capacities.
func (t *tree) measure() {
	n := int64(cap(t.entries))*entrySize + int64(len(t.strs)) +
		int64(cap(t.kids))*4 + int64(cap(t.aliases))*int64(unsafe.Sizeof(alias{})) +
		int64(cap(t.chunks))*int64(unsafe.Sizeof(chunk{})) + int64(cap(t.chunkPtrs))*8 +
		int64(cap(t.prioritized))*4
	seen := map[string]bool{}
	for i := range t.chunks {
		if d := string(t.chunks[i].digest); d != "" && !seen[d] {
			seen[d] = true
			n += stringBytes(d) // the header is in the chunk
		}
	}
	for _, m := range t.xattrs {
		n += mapCost
		for k, v := range m {
			n += stringCost(k) + int64(len(v)) + 24 + 16
		}
	}
	for _, d := range t.fileDigests {
		n += stringCost(string(d)) + 24
	}
	t.bytes = n
}

// mapCost is a rough price of a small Go map and its slot in another.
const mapCost = 64

// stringCost is a string's header plus its bytes.
func stringCost(s string) int64 { return 16 + stringBytes(s) }

// stringBytes is what a string's bytes take in their size class.
func stringBytes(s string) int64 { return (int64(len(s)) + 15) &^ 15 }
