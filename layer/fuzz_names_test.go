package layer

import (
	"context"
	"strings"
	"testing"

	digest "github.com/opencontainers/go-digest"

	"github.com/poolfs/poolfs/fs/fstest"
)

// hostileTOCSeeds are TOCs a hostile or broken image could carry: names
// that climb out of the layer or are absolute, data offsets beyond the
// blob, and hard links that point at each other or at themselves.
var hostileTOCSeeds = []string{
	`{"version":1,"entries":[{"name":"../../etc/passwd","type":"reg","size":3,"offset":0,"chunkDigest":"sha256:0000000000000000000000000000000000000000000000000000000000000000"}]}`,
	`{"version":1,"entries":[{"name":"/etc/shadow","type":"symlink","linkName":"/etc/shadow"}]}`,
	`{"version":1,"entries":[{"name":"a/../../b","type":"dir"},{"name":"./../c","type":"fifo"}]}`,
	`{"version":1,"entries":[{"name":"..","type":"dir"},{"name":".","type":"reg"},{"name":"","type":"reg"}]}`,
	`{"version":1,"entries":[{"name":"x","type":"reg","size":100,"offset":9223372036854775000}]}`,
	`{"version":1,"entries":[{"name":"x","type":"reg","size":9223372036854775807,"offset":0}]}`,
	`{"version":1,"entries":[{"name":"x","type":"reg","size":10,"offset":0},{"type":"chunk","offset":99999999,"chunkOffset":5}]}`,
	`{"version":1,"entries":[{"name":"a","type":"hardlink","linkName":"b"},{"name":"b","type":"hardlink","linkName":"a"}]}`,
	`{"version":1,"entries":[{"name":"a","type":"hardlink","linkName":"b"},{"name":"b","type":"hardlink","linkName":"c"},{"name":"c","type":"hardlink","linkName":"a"}]}`,
	`{"version":1,"entries":[{"name":"d","type":"dir"},{"name":"d","type":"hardlink","linkName":"d"}]}`,
	`{"version":1,"entries":[{"name":"l","type":"symlink","linkName":"../../../../"},{"name":"l/x","type":"reg"}]}`,
	`{"version":1,"entries":[{"name":"a","type":"hardlink","linkName":"../../etc/passwd"}]}`,
}

// checkNames asserts the view stays inside the layer whatever the TOC
// said: every name is one plain path element, every path is relative and
// never climbs.
func checkNames(t *testing.T, l *Layer) {
	t.Helper()
	seen := map[*Entry]bool{}
	stack := []*Entry{l.Root()}
	for len(stack) > 0 {
		e := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		if seen[e] {
			continue
		}
		seen[e] = true
		if strings.HasPrefix(e.Path(), "/") {
			t.Fatalf("absolute path %q in the view", e.Path())
		}
		for _, el := range strings.Split(e.Path(), "/") {
			if el == ".." || (el == "." && e.Path() != "") {
				t.Fatalf("path %q in the view has a %q element", e.Path(), el)
			}
		}
		for i := range e.NumChildren() {
			name, c := e.ChildAt(i)
			if name == "" || name == "." || name == ".." || strings.Contains(name, "/") || strings.ContainsRune(name, 0) {
				t.Fatalf("directory %q has a child named %q", e.Path(), name)
			}
			stack = append(stack, c)
		}
	}
}

// FuzzOpenStored feeds arbitrary stored TOC records (as the metadata store
// would hand back after damage) to OpenStored: nothing may panic, a record
// whose JSON does not match its digest is refused, and any view accepted
// stays inside the layer.
func FuzzOpenStored(f *testing.F) {
	data, _ := fstest.EStargz(f, fstest.SampleTar(f))
	blob := fstest.NewMemBlob(data)
	_, toc, err := OpenWithTOC(context.Background(), blob, "", nil, nil)
	if err != nil {
		f.Fatal(err)
	}
	tocJSON := memberJSON(f, toc.Member)
	f.Add(tocJSON, toc.Offset, true)
	f.Add(tocJSON, int64(len(data)), true)
	f.Add(tocJSON, toc.Offset, false)
	for _, s := range hostileTOCSeeds {
		f.Add([]byte(s), toc.Offset, true)
	}
	f.Fuzz(func(t *testing.T, tocJSON []byte, offset int64, rightDigest bool) {
		d := digest.FromBytes(tocJSON)
		if !rightDigest {
			d = digest.FromString("something else")
		}
		l, err := OpenStored(blob, TOC{Digest: d, Offset: offset, JSON: tocJSON}, nil, nil)
		if err != nil {
			return
		}
		if !rightDigest {
			t.Fatal("a stored TOC not matching its digest was accepted")
		}
		checkNames(t, l)
		readAll(t, l)
	})
}
