package layer

import (
	"fmt"
	"math"
	"sort"
	"strings"
	"time"

	"github.com/containerd/stargz-snapshotter/estargz"
	"github.com/sirupsen/logrus"
)

// view is the result of building the tree from a TOC.
type view struct {
	root        *Entry
	prioritized []*Entry
}

// treeBuilder turns TOC entries into the layer view. It works in passes so
// that the result does not depend on TOC order beyond what tar semantics
// require: the last entry of a name wins; hard links resolve by name once
// all other entries exist; whiteouts apply last and never hide an entry of
// this same layer.
type treeBuilder struct {
	log     *logrus.Entry
	root    *Entry
	dirs    map[string]*Entry // view path -> directory
	byName  map[string]*Entry // cleaned TOC name -> entry, for hard link targets
	links   map[string]string // cleaned TOC name of a hard link -> cleaned target name
	opaque  map[string]bool   // dirs holding .wh..wh..opq
	entryAt []*Entry          // TOC index -> entry it put in the view (nil: none)
}

type whiteout struct {
	dir, name string
	te        *estargz.TOCEntry
}

func buildView(entries []*estargz.TOCEntry, files map[int]*fileChunks, log *logrus.Entry) (*view, error) {
	root := &Entry{Type: TypeDir, Mode: 0o755, ModTime: epoch, Children: map[string]*Entry{}}
	b := &treeBuilder{
		log:     log,
		root:    root,
		dirs:    map[string]*Entry{"": root},
		byName:  make(map[string]*Entry, len(entries)),
		links:   map[string]string{},
		opaque:  map[string]bool{},
		entryAt: make([]*Entry, len(entries)),
	}

	// Pass 0: clean names; the last entry of each name is the one tar
	// extraction would leave behind.
	names := make([]string, len(entries))
	last := make(map[string]int, len(entries))
	for i, te := range entries {
		if te.Type == "chunk" {
			continue
		}
		switch te.Type {
		case "dir", "reg", "symlink", "hardlink", "char", "block", "fifo":
		default:
			return nil, fmt.Errorf("entry %d (%q): unknown type %q", i, te.Name, te.Type)
		}
		p, err := cleanName(te.Name)
		if err != nil {
			return nil, fmt.Errorf("entry %d: %w", i, err)
		}
		if prev, dup := last[p]; dup {
			log.WithField("path", p).Debugf("TOC entry %d replaces entry %d of the same name", i, prev)
		}
		names[i] = p
		last[p] = i
	}

	// Pass 1: everything but hard links and whiteouts.
	prefetchLandmark := -1
	var hardlinks []int
	var whiteouts []whiteout
	for i, te := range entries {
		if te.Type == "chunk" || last[names[i]] != i {
			continue
		}
		p := names[i]
		if p == "" {
			if te.Type != "dir" {
				return nil, fmt.Errorf("entry %d: the layer root is a %q, not a directory", i, te.Type)
			}
			if err := setMeta(root, te); err != nil {
				return nil, fmt.Errorf("entry %d (root): %w", i, err)
			}
			b.entryAt[i] = root
			continue
		}
		dir, base := splitPath(p)
		if dir == "" && (base == estargz.PrefetchLandmark || base == estargz.NoPrefetchLandmark) {
			// Landmarks are estargz's bookkeeping, not layer content.
			if base == estargz.PrefetchLandmark {
				prefetchLandmark = i
			}
			continue
		}
		if strings.HasPrefix(base, whiteoutPrefix) {
			if _, err := b.dir(dir); err != nil {
				return nil, fmt.Errorf("entry %d (%q): %w", i, p, err)
			}
			switch {
			case base == whiteoutOpaque:
				b.opaque[dir] = true
			case strings.HasPrefix(base, whiteoutMeta):
			default:
				name := base[len(whiteoutPrefix):]
				if name != "" && name != "." && name != ".." {
					whiteouts = append(whiteouts, whiteout{dir: dir, name: name, te: te})
				}
			}
			continue
		}
		if te.Type == "hardlink" {
			target, err := cleanName(te.LinkName)
			if err != nil {
				return nil, fmt.Errorf("entry %d (%q): hard link target: %w", i, p, err)
			}
			b.links[p] = target
			hardlinks = append(hardlinks, i)
			continue
		}
		e, err := newEntry(te, p, files[i])
		if err != nil {
			return nil, fmt.Errorf("entry %d (%q): %w", i, p, err)
		}
		if e, err = b.attach(dir, base, e); err != nil {
			return nil, fmt.Errorf("entry %d (%q): %w", i, p, err)
		}
		b.byName[p] = e
		b.entryAt[i] = e
	}

	// Pass 2: hard links, now that every target exists.
	for _, i := range hardlinks {
		p := names[i]
		target, err := b.resolve(p)
		if err != nil {
			return nil, fmt.Errorf("entry %d (%q): %w", i, p, err)
		}
		dir, base := splitPath(p)
		if _, err := b.attach(dir, base, target); err != nil {
			return nil, fmt.Errorf("entry %d (%q): %w", i, p, err)
		}
		b.entryAt[i] = target
	}

	// Pass 3: whiteouts become 0/0 character devices, unless this layer
	// itself has an entry of that name (the whiteout is then moot: the
	// entry hides the lower one anyway).
	for _, w := range whiteouts {
		parent := b.dirs[w.dir]
		if _, taken := parent.Children[w.name]; taken {
			log.WithField("path", joinPath(w.dir, w.name)).Debug("whiteout ignored: the layer has an entry of that name")
			continue
		}
		e := &Entry{Type: TypeChar}
		if err := setMeta(e, w.te); err != nil {
			return nil, fmt.Errorf("whiteout %q: %w", joinPath(w.dir, w.name), err)
		}
		e.Xattrs = nil // the marker's own xattrs are not the whiteout's
		if _, err := b.attach(w.dir, w.name, e); err != nil {
			return nil, fmt.Errorf("whiteout %q: %w", joinPath(w.dir, w.name), err)
		}
	}

	b.finish()

	v := &view{root: root}
	if prefetchLandmark >= 0 {
		seen := map[*Entry]bool{}
		for i := 0; i < prefetchLandmark; i++ {
			if e := b.entryAt[i]; e != nil && e.Type == TypeReg && !seen[e] {
				seen[e] = true
				v.prioritized = append(v.prioritized, e)
			}
		}
	}
	return v, nil
}

var epoch = time.Unix(0, 0).UTC()

// dir returns the directory at view path p, creating missing ones as
// implicit directories (0755 root:root, mtime 0) the way estargz's reader
// and tar extraction do.
func (b *treeBuilder) dir(p string) (*Entry, error) {
	if d, ok := b.dirs[p]; ok {
		return d, nil
	}
	cur, curPath := b.root, ""
	for _, comp := range strings.Split(p, "/") {
		curPath = joinPath(curPath, comp)
		child := cur.Children[comp]
		switch {
		case child == nil:
			child = &Entry{Name: comp, Path: curPath, Type: TypeDir, Mode: 0o755, ModTime: epoch, Children: map[string]*Entry{}}
			cur.Children[comp] = child
			b.dirs[curPath] = child
		case child.Type != TypeDir:
			return nil, fmt.Errorf("%q: %w", curPath, errNotDir)
		}
		cur = child
	}
	return cur, nil
}

// attach puts e under base in directory dir and returns the entry now
// there. Names are unique after pass 0, so the only possible occupant is an
// implicit directory created for entries below this name: a directory entry
// takes it over (keeping its children); anything else is a conflict.
func (b *treeBuilder) attach(dir, base string, e *Entry) (*Entry, error) {
	parent, err := b.dir(dir)
	if err != nil {
		return nil, err
	}
	p := joinPath(dir, base)
	if old := parent.Children[base]; old != nil {
		if old.Type != TypeDir || e.Type != TypeDir {
			return nil, fmt.Errorf("%q has entries below it but is not a directory", p)
		}
		children := old.Children
		*old = *e
		old.Name, old.Path, old.Children = base, p, children
		return old, nil
	}
	if e.Path == "" {
		e.Name, e.Path = base, p // the first name of a hard-linked inode
	}
	parent.Children[base] = e
	if e.Type == TypeDir {
		b.dirs[p] = e
	} else {
		e.NLink++
	}
	return e, nil
}

// resolve follows a hard link (and links to links) to the entry it names.
func (b *treeBuilder) resolve(name string) (*Entry, error) {
	visited := map[string]bool{name: true}
	target := b.links[name]
	for {
		if e, ok := b.byName[target]; ok {
			if e.Type == TypeDir {
				return nil, fmt.Errorf("hard link to directory %q", target)
			}
			return e, nil
		}
		next, isLink := b.links[target]
		if !isLink {
			return nil, fmt.Errorf("hard link target %q is not in the layer", target)
		}
		if visited[target] {
			return nil, fmt.Errorf("hard link cycle through %q", target)
		}
		visited[target] = true
		target = next
	}
}

// finish sorts directory listings, counts directory links and marks
// opaque directories.
func (b *treeBuilder) finish() {
	for p, d := range b.dirs {
		d.Names = make([]string, 0, len(d.Children))
		d.NLink = 2
		for name, c := range d.Children {
			d.Names = append(d.Names, name)
			if c.Type == TypeDir {
				d.NLink++
			}
		}
		sort.Strings(d.Names)
		if b.opaque[p] {
			if d.Xattrs == nil {
				d.Xattrs = map[string][]byte{}
			}
			for _, k := range opaqueXattrs {
				d.Xattrs[k] = []byte("y")
			}
		}
	}
}

// newEntry makes the view entry for a non-hardlink TOC entry.
func newEntry(te *estargz.TOCEntry, p string, fc *fileChunks) (*Entry, error) {
	e := &Entry{}
	if err := setMeta(e, te); err != nil {
		return nil, err
	}
	switch te.Type {
	case "dir":
		e.Type = TypeDir
		e.Children = map[string]*Entry{}
	case "reg":
		e.Type = TypeReg
		e.Size = te.Size
		e.file = fc
		if te.Size > 0 && fc == nil {
			return nil, fmt.Errorf("regular file of %d bytes has no chunks", te.Size)
		}
	case "symlink":
		e.Type = TypeSymlink
		e.LinkName = te.LinkName
		e.Size = int64(len(te.LinkName))
	case "char", "block":
		e.Type = TypeChar
		if te.Type == "block" {
			e.Type = TypeBlock
		}
		if te.DevMajor < 0 || te.DevMinor < 0 || te.DevMajor > math.MaxUint32 || te.DevMinor > math.MaxUint32 {
			return nil, fmt.Errorf("device number %d,%d out of range", te.DevMajor, te.DevMinor)
		}
		e.DevMajor, e.DevMinor = uint32(te.DevMajor), uint32(te.DevMinor)
	case "fifo":
		e.Type = TypeFIFO
	default:
		return nil, fmt.Errorf("unexpected type %q", te.Type)
	}
	return e, nil
}

// setMeta copies the attributes every entry type has.
func setMeta(e *Entry, te *estargz.TOCEntry) error {
	if te.UID < 0 || te.GID < 0 || te.UID > math.MaxUint32 || te.GID > math.MaxUint32 {
		return fmt.Errorf("owner %d:%d out of range", te.UID, te.GID)
	}
	mtime := epoch
	if te.ModTime3339 != "" {
		// estargz writes "" for mtime 0; anything else is RFC 3339 seconds.
		t, err := time.Parse(time.RFC3339, te.ModTime3339)
		if err != nil {
			return fmt.Errorf("modtime: %w", err)
		}
		mtime = t.UTC()
	}
	e.Mode = uint32(te.Mode & 0o7777)
	e.UID, e.GID = uint32(te.UID), uint32(te.GID)
	e.ModTime = mtime
	e.Xattrs = nil
	if len(te.Xattrs) > 0 {
		e.Xattrs = make(map[string][]byte, len(te.Xattrs))
		for k, v := range te.Xattrs {
			e.Xattrs[k] = v
		}
	}
	return nil
}

func joinPath(dir, base string) string {
	if dir == "" {
		return base
	}
	return dir + "/" + base
}
