package layer

import (
	"errors"
	"fmt"
	"math"
	"sort"
	"strings"
	"time"

	"github.com/containerd/stargz-snapshotter/estargz"
	digest "github.com/opencontainers/go-digest"
	"github.com/sirupsen/logrus"
)

// ErrLimit marks a layer refused because its tree would pass a limit
// (Limits): the layer is not broken, and fetching it again cannot help.
var ErrLimit = errors.New("layer over a limit")

// Limits bound what one layer's tree may cost while it is built.
type Limits struct {
	// MaxEntries is the most TOC entries a layer may have; 0: no limit.
	MaxEntries int
	// Reserve is asked for memory as the tree is built (positive n) and
	// told when it is given back (negative n, which must not fail): the
	// tree's tables and, while it is built, what building them takes. An
	// error refuses the layer. nil: no accounting.
	Reserve func(n int64) error
}

// rec is what the build keeps of one non-chunk TOC entry: the TOC is read
// once, as a stream, and the view is made from these afterwards.
type rec struct {
	path    string // cleaned
	link    string // symlink target, or the raw hard link target
	fileDig digest.Digest
	xattrs  map[string][]byte
	mtime   int64
	size    int64
	tocIdx  int
	mode    uint32
	uid     uint32
	gid     uint32
	nsec    uint32
	devMaj  uint32
	devMin  uint32
	chunkA  uint32
	chunkB  uint32
	typ     EntryType // typeHardlink for hard links
	ownDig  bool      // fileDig differs from the only chunk's
	bad     bool      // b.errs has the rec's errors
}

// typeHardlink is a rec's type for a TOC hard link, which is not a type
// of the view.
const typeHardlink EntryType = 255

// recErrs are a rec's errors, kept until the pass that would report them.
type recErrs struct {
	meta error // from the attributes every type has (setMeta's checks)
	typ  error // from the type's own attributes (newEntry's checks)
}

// recCost is a rough price of a rec and what the build's maps keep for it,
// reserved while the tree is built.
const recCost = 320

// builder turns TOC entries, streamed in, into a tree. It works in passes
// once all entries are in, so that the result does not depend on TOC order
// beyond what tar semantics require: the last entry of a name wins; hard
// links resolve by name once all other entries exist; whiteouts apply
// last and never hide an entry of this same layer.
type builder struct {
	log    *logrus.Entry
	limits Limits

	n        int // TOC entries seen
	recs     []rec
	errs     map[int]recErrs // by index in recs
	last     map[string]int  // cleaned name -> index in recs of its last entry
	reserved int64
	pending  int64 // taken but not yet reserved
	interned map[digest.Digest]digest.Digest
	chunks   chunkIndexer

	// The tree being made, and the maps that find things in it.
	t        *tree
	strs     strings.Builder
	dirs     map[string]uint32   // view path -> directory
	children map[childKey]uint32 // kid value under (dir, name)
	entryAt  []uint32            // index in recs -> entry+1 it put in the view (0: none)
	links    map[string]string   // cleaned TOC name of a hard link -> cleaned target name
	opaque   map[string]bool     // dirs holding .wh..wh..opq
}

type childKey struct {
	dir  uint32
	name string
}

type whiteout struct {
	dir, name string
	r         *rec
	i         int
}

// newBuilder starts a tree whose data ends at tocOffset; maxRatio is how far
// the format's compression can expand (see chunkIndexer).
func newBuilder(tocOffset, maxRatio int64, limits Limits, log *logrus.Entry) *builder {
	if log == nil {
		_, log = defaults(nil, nil)
	}
	return &builder{
		log:      log,
		limits:   limits,
		last:     map[string]int{},
		errs:     map[int]recErrs{},
		interned: map[digest.Digest]digest.Digest{},
		chunks:   chunkIndexer{tocOffset: tocOffset, maxRatio: maxRatio, cur: -1},
	}
}

// reserve asks the limits for n more bytes.
func (b *builder) reserve(n int64) error {
	if b.limits.Reserve == nil || n == 0 {
		return nil
	}
	if err := b.limits.Reserve(n); err != nil {
		return err
	}
	b.reserved += n
	return nil
}

// release gives back what the build reserved beyond keep.
func (b *builder) release(keep int64) {
	if b.limits.Reserve != nil && b.reserved != keep {
		_ = b.limits.Reserve(keep - b.reserved)
		b.reserved = keep
	}
}

// reserveEvery is how many bytes the build takes between reservations.
const reserveEvery = 1 << 20

// add takes the next TOC entry.
func (b *builder) add(te *estargz.TOCEntry) error { return b.addEnding(te, 0) }

// addEnding is add with the end offset of a regular file's data, for
// formats that give it (chunkIndexer.exactEnds).
func (b *builder) addEnding(te *estargz.TOCEntry, end int64) error {
	i := b.n
	b.n++
	if b.limits.MaxEntries > 0 && b.n > b.limits.MaxEntries {
		return fmt.Errorf("%w: the TOC has more than %d entries (the entries limit)", ErrLimit, b.limits.MaxEntries)
	}
	if te == nil {
		return fmt.Errorf("entry %d is null", i)
	}
	// What the entry will keep until the tree is built: its rec and
	// maps' share, and its strings, which a hostile TOC makes long.
	b.pending += recCost + int64(len(te.Name)+len(te.LinkName)+len(te.ChunkDigest)+len(te.Digest))
	if b.pending >= reserveEvery {
		if err := b.reserve(b.pending); err != nil {
			return err
		}
		b.pending = 0
	}
	if err := b.chunks.add(i, te, end, b); err != nil {
		return err
	}
	if te.Type == "chunk" {
		return nil
	}
	switch te.Type {
	case "dir", "reg", "symlink", "hardlink", "char", "block", "fifo":
	default:
		return fmt.Errorf("entry %d (%q): unknown type %q", i, te.Name, te.Type)
	}
	p, err := cleanName(te.Name)
	if err != nil {
		return fmt.Errorf("entry %d: %w", i, err)
	}
	if prev, dup := b.last[p]; dup {
		b.log.WithField("path", p).Debugf("TOC entry %d replaces entry %d of the same name", i, b.recs[prev].tocIdx)
	}
	b.last[p] = len(b.recs)
	r := rec{path: p, tocIdx: i, typ: typeHardlink}
	if te.Type != "hardlink" {
		r.typ = entryTypes[te.Type]
	}
	var errs recErrs
	errs.meta = setMeta(&r, te)
	switch te.Type {
	case "reg":
		r.size = te.Size
	case "symlink":
		r.size = int64(len(te.LinkName))
		r.link = te.LinkName
	case "hardlink":
		r.link = te.LinkName
	case "char", "block":
		if te.DevMajor < 0 || te.DevMinor < 0 || te.DevMajor > math.MaxUint32 || te.DevMinor > math.MaxUint32 {
			errs.typ = fmt.Errorf("device number %d,%d out of range", te.DevMajor, te.DevMinor)
		}
		r.devMaj, r.devMin = uint32(te.DevMajor), uint32(te.DevMinor)
	}
	if errs != (recErrs{}) {
		r.bad = true
		b.errs[len(b.recs)] = errs
	}
	b.recs = append(b.recs, r)
	return nil
}

// setMeta checks and keeps the attributes every entry type has.
func setMeta(r *rec, te *estargz.TOCEntry) error {
	if te.UID < 0 || te.GID < 0 || te.UID > math.MaxUint32 || te.GID > math.MaxUint32 {
		return fmt.Errorf("owner %d:%d out of range", te.UID, te.GID)
	}
	if te.ModTime3339 != "" {
		// estargz writes "" for mtime 0; anything else is RFC 3339 seconds.
		t, err := time.Parse(time.RFC3339, te.ModTime3339)
		if err != nil {
			return fmt.Errorf("modtime: %w", err)
		}
		r.mtime, r.nsec = t.Unix(), uint32(t.Nanosecond())
	}
	r.mode = uint32(te.Mode & 0o7777)
	r.uid, r.gid = uint32(te.UID), uint32(te.GID)
	if len(te.Xattrs) > 0 {
		r.xattrs = te.Xattrs // te is the decoder's fresh value, ours to keep
	}
	return nil
}

// build is finish for a build that succeeded: what the build reserved
// becomes the tree's (b's deferred release then leaves it).
func (b *builder) build() (*tree, error) {
	t, err := b.finish()
	if err != nil {
		return nil, err
	}
	if t.bytes > b.reserved {
		if err := b.reserve(t.bytes - b.reserved); err != nil {
			return nil, err
		}
	}
	b.release(t.bytes)
	b.reserved = 0 // kept by the tree now
	return t, nil
}

// finish builds the tree once every TOC entry is in.
func (b *builder) finish() (*tree, error) {
	if err := b.chunks.finish(b); err != nil {
		return nil, err
	}
	t := &tree{entries: make([]Entry, 1, len(b.recs)+1)}
	b.t = t
	t.entries[0] = Entry{t: t, Type: TypeDir, Mode: 0o755}
	b.dirs = map[string]uint32{"": 0}
	b.children = make(map[childKey]uint32, len(b.recs))
	b.links = map[string]string{}
	b.opaque = map[string]bool{}
	b.entryAt = make([]uint32, len(b.recs))
	entryAt := b.entryAt

	// Pass 1: everything but hard links and whiteouts.
	prefetchLandmark := -1
	var hardlinks []int
	var whiteouts []whiteout
	for i := range b.recs {
		r := &b.recs[i]
		if b.last[r.path] != i {
			continue
		}
		p := r.path
		if p == "" {
			if r.typ != TypeDir {
				return nil, fmt.Errorf("entry %d: the layer root is a %q, not a directory", r.tocIdx, r.typName())
			}
			if err := b.errs[i].meta; err != nil {
				return nil, fmt.Errorf("entry %d (root): %w", r.tocIdx, err)
			}
			b.setAttrs(0, r)
			entryAt[i] = 1
			continue
		}
		dir, base := splitPath(p)
		if dir == "" && (base == estargz.PrefetchLandmark || base == estargz.NoPrefetchLandmark) {
			// Landmarks are estargz's bookkeeping, not layer content.
			if base == estargz.PrefetchLandmark {
				prefetchLandmark = r.tocIdx
			}
			continue
		}
		if strings.HasPrefix(base, whiteoutPrefix) {
			if _, err := b.dir(dir); err != nil {
				return nil, fmt.Errorf("entry %d (%q): %w", r.tocIdx, p, err)
			}
			switch {
			case base == whiteoutOpaque:
				b.opaque[dir] = true
			case strings.HasPrefix(base, whiteoutMeta):
			default:
				name := base[len(whiteoutPrefix):]
				if name != "" && name != "." && name != ".." {
					whiteouts = append(whiteouts, whiteout{dir: dir, name: name, r: r, i: i})
				}
			}
			continue
		}
		if r.typ == typeHardlink {
			target, err := cleanName(r.link)
			if err != nil {
				return nil, fmt.Errorf("entry %d (%q): hard link target: %w", r.tocIdx, p, err)
			}
			b.links[p] = target
			hardlinks = append(hardlinks, i)
			continue
		}
		if err := b.entryErr(i); err != nil {
			return nil, fmt.Errorf("entry %d (%q): %w", r.tocIdx, p, err)
		}
		e, err := b.attach(dir, base, newEntryFrom(r), r)
		if err != nil {
			return nil, fmt.Errorf("entry %d (%q): %w", r.tocIdx, p, err)
		}
		entryAt[i] = e + 1
	}

	// Pass 2: hard links, now that every target exists.
	for _, i := range hardlinks {
		r := &b.recs[i]
		target, err := b.resolve(r.path)
		if err != nil {
			return nil, fmt.Errorf("entry %d (%q): %w", r.tocIdx, r.path, err)
		}
		dir, base := splitPath(r.path)
		if err := b.link(dir, base, target); err != nil {
			return nil, fmt.Errorf("entry %d (%q): %w", r.tocIdx, r.path, err)
		}
		entryAt[i] = target + 1
	}

	// Pass 3: whiteouts become 0/0 character devices, unless this layer
	// itself has an entry of that name (the whiteout is then moot: the
	// entry hides the lower one anyway).
	for _, w := range whiteouts {
		if _, taken := b.children[childKey{b.dirs[w.dir], w.name}]; taken {
			b.log.WithField("path", joinPath(w.dir, w.name)).Debug("whiteout ignored: the layer has an entry of that name")
			continue
		}
		if err := b.errs[w.i].meta; err != nil {
			return nil, fmt.Errorf("whiteout %q: %w", joinPath(w.dir, w.name), err)
		}
		e := Entry{Type: TypeChar, Mode: w.r.mode, UID: w.r.uid, GID: w.r.gid, mtime: w.r.mtime, nsec: w.r.nsec}
		// The marker's own xattrs are not the whiteout's: no rec given.
		if _, err := b.attach(w.dir, w.name, e, nil); err != nil {
			return nil, fmt.Errorf("whiteout %q: %w", joinPath(w.dir, w.name), err)
		}
	}

	b.finishDirs()

	if prefetchLandmark >= 0 {
		seen := map[uint32]bool{}
		for i := range b.recs {
			e := entryAt[i]
			if b.recs[i].tocIdx >= prefetchLandmark || e == 0 {
				continue
			}
			if t.entries[e-1].Type == TypeReg && !seen[e] {
				seen[e] = true
				t.prioritized = append(t.prioritized, uint32(e-1))
			}
		}
	}
	// Copies without the builders' spare capacity, up to half of each.
	t.strs = strings.Clone(b.strs.String())
	t.aliases = append([]alias(nil), t.aliases...)
	t.chunks, t.chunkPtrs = b.chunks.chunks, make([]*chunk, len(b.chunks.chunks))
	for i := range t.chunks {
		t.chunkPtrs[i] = &t.chunks[i]
	}
	t.entries = append([]Entry(nil), t.entries...) // drop the spare capacity
	for i := range t.entries {
		t.entries[i].t = t
	}
	t.measure()
	return t, nil
}

// entryErr is the error newEntry reported for recs[i]'s entry.
func (b *builder) entryErr(i int) error {
	r := &b.recs[i]
	if err := b.errs[i].meta; err != nil {
		return err
	}
	if r.typ == TypeReg && r.size > 0 && r.chunkB == 0 {
		return fmt.Errorf("regular file of %d bytes has no chunks", r.size)
	}
	return b.errs[i].typ
}

// typName is the TOC's name of the rec's type.
func (r *rec) typName() string {
	for name, t := range entryTypes {
		if t == r.typ {
			return name
		}
	}
	return "hardlink"
}

var entryTypes = map[string]EntryType{"dir": TypeDir, "reg": TypeReg, "symlink": TypeSymlink, "char": TypeChar, "block": TypeBlock, "fifo": TypeFIFO}

// newEntryFrom makes the view entry for a non-hardlink rec (not yet in the
// table: attach puts it there).
func newEntryFrom(r *rec) Entry {
	e := Entry{Type: r.typ, Mode: r.mode, UID: r.uid, GID: r.gid, mtime: r.mtime, nsec: r.nsec}
	switch e.Type {
	case TypeReg:
		e.Size, e.a, e.b = r.size, r.chunkA, r.chunkB
	case TypeSymlink:
		e.Size = r.size
	case TypeChar, TypeBlock:
		e.a, e.b = r.devMaj, r.devMin
	}
	return e
}

// setAttrs copies a rec's attributes to the entry at i (the root, or an
// implicit directory a directory entry takes over).
func (b *builder) setAttrs(i uint32, r *rec) {
	e := &b.t.entries[i]
	e.Mode, e.UID, e.GID, e.mtime, e.nsec = r.mode, r.uid, r.gid, r.mtime, r.nsec
	b.setXattrs(i, r.xattrs)
}

func (b *builder) setXattrs(i uint32, x map[string][]byte) {
	e := &b.t.entries[i]
	if len(x) == 0 {
		if e.xattrs {
			delete(b.t.xattrs, i)
		}
		e.xattrs = false
		return
	}
	if b.t.xattrs == nil {
		b.t.xattrs = map[uint32]map[string][]byte{}
	}
	b.t.xattrs[i] = x
	e.xattrs = true
}

func (b *builder) addString(s string) (off, n uint32) {
	off = uint32(b.strs.Len())
	b.strs.WriteString(s)
	return off, uint32(len(s))
}

// dir returns the directory at view path p, creating missing ones as
// implicit directories (0755 root:root, mtime 0) the way estargz's reader
// and tar extraction do.
func (b *builder) dir(p string) (uint32, error) {
	if d, ok := b.dirs[p]; ok {
		return d, nil
	}
	cur, end := uint32(0), 0
	for end < len(p) {
		next := strings.IndexByte(p[end:], '/')
		if next < 0 {
			next = len(p)
		} else {
			next += end
		}
		comp, curPath := p[end:next], p[:next]
		end = next + 1
		k, ok := b.children[childKey{cur, comp}]
		switch {
		case !ok:
			child := b.newEntry(Entry{Type: TypeDir, Mode: 0o755}, cur, comp)
			b.children[childKey{cur, comp}] = child
			b.dirs[curPath] = child
			cur = child
			continue
		case k&aliasBit != 0 || b.t.entries[k].Type != TypeDir:
			return 0, fmt.Errorf("%q: %w", curPath, errNotDir)
		}
		cur = k
	}
	return cur, nil
}

// newEntry puts e in the table with its first name.
func (b *builder) newEntry(e Entry, parent uint32, name string) uint32 {
	i := uint32(len(b.t.entries))
	e.idx, e.parent = i, parent
	e.nameOff, e.nameLen = b.addString(name)
	b.t.entries = append(b.t.entries, e)
	return i
}

// attach puts e under base in directory dir and returns its index. Names
// are unique after the last-entry rule, so the only possible occupant is
// an implicit directory created for entries below this name: a directory
// entry takes it over (keeping its children); anything else is a
// conflict. r, if not nil, gives the entry's xattrs and link target.
func (b *builder) attach(dir, base string, e Entry, r *rec) (uint32, error) {
	parent, err := b.dir(dir)
	if err != nil {
		return 0, err
	}
	p := joinPath(dir, base)
	if k, ok := b.children[childKey{parent, base}]; ok {
		if k&aliasBit != 0 || b.t.entries[k].Type != TypeDir || e.Type != TypeDir {
			return 0, fmt.Errorf("%q has entries below it but is not a directory", p)
		}
		b.setAttrs(k, r)
		return k, nil
	}
	i := b.newEntry(e, parent, base)
	if r != nil {
		if e.Type == TypeSymlink {
			ne := &b.t.entries[i]
			ne.a, ne.b = b.addString(r.link)
		}
		if r.ownDig {
			if b.t.fileDigests == nil {
				b.t.fileDigests = map[uint32]digest.Digest{}
			}
			b.t.fileDigests[i] = r.fileDig
		}
		b.setXattrs(i, r.xattrs)
	}
	b.children[childKey{parent, base}] = i
	if e.Type == TypeDir {
		b.dirs[p] = i
	} else {
		b.t.entries[i].NLink++
	}
	return i, nil
}

// link lists the existing (non-directory) entry target under base in dir
// too.
func (b *builder) link(dir, base string, target uint32) error {
	parent, err := b.dir(dir)
	if err != nil {
		return err
	}
	if _, ok := b.children[childKey{parent, base}]; ok {
		return fmt.Errorf("%q has entries below it but is not a directory", joinPath(dir, base))
	}
	off, n := b.addString(base)
	b.t.aliases = append(b.t.aliases, alias{nameOff: off, nameLen: n, entry: target})
	b.children[childKey{parent, base}] = aliasBit | uint32(len(b.t.aliases)-1)
	b.t.entries[target].NLink++
	return nil
}

// resolve follows a hard link (and links to links) to the entry it names.
func (b *builder) resolve(name string) (uint32, error) {
	visited := map[string]bool{name: true}
	target := b.links[name]
	for {
		if i, ok := b.last[target]; ok && b.entryAt[i] != 0 {
			e := b.entryAt[i] - 1
			if b.t.entries[e].Type == TypeDir {
				return 0, fmt.Errorf("hard link to directory %q", target)
			}
			return e, nil
		}
		next, isLink := b.links[target]
		if !isLink {
			return 0, fmt.Errorf("hard link target %q is not in the layer", target)
		}
		if visited[target] {
			return 0, fmt.Errorf("hard link cycle through %q", target)
		}
		visited[target] = true
		target = next
	}
}

// finishDirs lays out each directory's children sorted by name, counts
// directory links and marks opaque directories.
func (b *builder) finishDirs() {
	t := b.t
	type kid struct {
		dir  uint32
		name string
		k    uint32
	}
	all := make([]kid, 0, len(b.children))
	for ck, k := range b.children {
		all = append(all, kid{ck.dir, ck.name, k})
	}
	b.children = nil
	sort.Slice(all, func(i, j int) bool {
		if all[i].dir != all[j].dir {
			return all[i].dir < all[j].dir
		}
		return all[i].name < all[j].name
	})
	t.kids = make([]uint32, len(all))
	for i := range t.entries {
		if t.entries[i].Type == TypeDir {
			t.entries[i].NLink = 2
		}
	}
	for i, k := range all {
		t.kids[i] = k.k
		d := &t.entries[k.dir]
		if d.b == 0 {
			d.a = uint32(i)
		}
		d.b++
		if k.k&aliasBit == 0 && t.entries[k.k].Type == TypeDir {
			d.NLink++
		}
	}
	for p := range b.opaque {
		i := b.dirs[p]
		x := map[string][]byte{}
		for k, v := range b.t.xattrs[i] {
			x[k] = v
		}
		for _, k := range opaqueXattrs {
			x[k] = []byte("y")
		}
		b.setXattrs(i, x)
	}
}

func joinPath(dir, base string) string {
	if dir == "" {
		return base
	}
	return dir + "/" + base
}
