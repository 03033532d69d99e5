package fstest

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"path"
	"sort"
	"strings"
	"testing"
)

// Names with special meaning in layer tars. They are spelled out here
// rather than imported so that this package stays an independent oracle
// for the packages it checks.
const (
	whiteoutPrefix   = ".wh."
	whiteoutMeta     = ".wh..wh."
	whiteoutOpaque   = ".wh..wh..opq"
	prefetchLandmark = ".prefetch.landmark"
	noPrefetchMark   = ".no.prefetch.landmark"
	xattrPAXPrefix   = "SCHILY.xattr."
)

type tarRecord struct {
	hdr    *tar.Header
	name   string // cleaned
	sha256 string
}

// TarView computes the view a layer tar should produce: the last entry of
// a name wins; implicit parent directories are 0755 root:root with mtime 0;
// .wh.NAME becomes a 0/0 character device NAME (unless the tar also has
// NAME), .wh..wh..opq becomes trusted.overlay.opaque=y and
// user.overlay.opaque=y on its directory, other .wh..wh.* entries and the
// eStargz landmarks at the root are hidden; hard links share one inode.
func TarView(tarBytes []byte) (View, error) {
	return tarView(tarBytes, false)
}

// tarView is TarView, or with merged what an overlay mount shows whose only
// lower directory is the tar's view and whose upper directory is empty: the
// whiteouts have nothing to hide and are hidden themselves, and
// trusted.overlay.opaque is overlayfs's own marker, which it does not show.
// (user.overlay.opaque is an ordinary xattr to an overlay mounted without
// userxattr, so it stays.) The root is the upper directory's; it is in the
// view as TarView has it, for the caller to leave out.
func tarView(tarBytes []byte, merged bool) (View, error) {
	records, order, err := readTar(tarBytes)
	if err != nil {
		return nil, err
	}

	v := View{"": {Path: "", Type: "dir", Mode: 0o755}}
	links := map[string]string{} // hard link name -> target name
	type wo struct {
		dir, name string
		hdr       *tar.Header
	}
	var whiteouts []wo
	opaque := map[string]bool{}

	for _, name := range order {
		r := records[name]
		if name == "" {
			v[""] = entryFromHeader("", r)
			continue
		}
		dir, base := splitPath(name)
		if dir == "" && (base == prefetchLandmark || base == noPrefetchMark) {
			continue
		}
		if strings.HasPrefix(base, whiteoutPrefix) {
			if err := ensureDirs(v, dir); err != nil {
				return nil, err
			}
			switch {
			case base == whiteoutOpaque:
				opaque[dir] = true
			case strings.HasPrefix(base, whiteoutMeta):
			default:
				whiteouts = append(whiteouts, wo{dir, base[len(whiteoutPrefix):], r.hdr})
			}
			continue
		}
		if r.hdr.Typeflag == tar.TypeLink {
			links[name] = cleanName(r.hdr.Linkname)
			continue
		}
		if err := ensureDirs(v, dir); err != nil {
			return nil, err
		}
		e := entryFromHeader(name, r)
		if old := v[name]; old != nil {
			if old.Type != "dir" || e.Type != "dir" {
				return nil, fmt.Errorf("%s: has entries below it but is a %s", name, e.Type)
			}
		}
		v[name] = e
	}

	// Hard links: every name of an inode shares one entry's attributes.
	groups := map[string][]string{} // target name -> all names
	for _, name := range sortedKeys(links) {
		target := links[name]
		seen := map[string]bool{name: true}
		for {
			next, isLink := links[target]
			if !isLink {
				break
			}
			if seen[target] {
				return nil, fmt.Errorf("%s: hard link cycle", name)
			}
			seen[target] = true
			target = next
		}
		t := v[target]
		if t == nil || t.Type == "dir" {
			return nil, fmt.Errorf("%s: hard link to missing or non-linkable %q", name, target)
		}
		dir, _ := splitPath(name)
		if err := ensureDirs(v, dir); err != nil {
			return nil, err
		}
		if v[name] != nil {
			return nil, fmt.Errorf("%s: has entries below it but is a hard link", name)
		}
		if groups[target] == nil {
			groups[target] = []string{target}
		}
		groups[target] = append(groups[target], name)
	}
	for target, names := range groups {
		sort.Strings(names)
		for _, n := range names {
			e := *v[target]
			e.Path = n
			e.NLink = uint32(len(names))
			e.Links = names
			v[n] = &e
		}
	}

	if merged {
		whiteouts = nil
	}
	for _, w := range whiteouts {
		p := joinPath(w.dir, w.name)
		if w.name == "" || w.name == "." || w.name == ".." || v[p] != nil {
			continue // this layer's own entry of that name wins
		}
		v[p] = &Entry{
			Path: p, Type: "char",
			Mode: uint32(w.hdr.Mode & 0o7777), UID: uint32(w.hdr.Uid), GID: uint32(w.hdr.Gid),
			ModTime: w.hdr.ModTime.Unix(), NLink: 1,
		}
	}
	for dir := range opaque {
		e := v[dir]
		if e.Xattrs == nil {
			e.Xattrs = map[string]string{}
		}
		if !merged {
			e.Xattrs["trusted.overlay.opaque"] = "y"
		}
		e.Xattrs["user.overlay.opaque"] = "y"
	}

	// Directory link counts: 2 + subdirectories.
	for _, e := range v {
		if e.Type == "dir" {
			e.NLink = 2
		}
	}
	for p, e := range v {
		if p != "" && e.Type == "dir" {
			parent, _ := splitPath(p)
			v[parent].NLink++
		}
	}
	return v, nil
}

// readTar reads every entry, keeping the last one of each cleaned name, and
// returns the names in order of their last appearance.
func readTar(tarBytes []byte) (map[string]*tarRecord, []string, error) {
	tr := tar.NewReader(bytes.NewReader(tarBytes))
	records := map[string]*tarRecord{}
	pos := map[string]int{}
	for i := 0; ; i++ {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, nil, fmt.Errorf("reading tar: %w", err)
		}
		r := &tarRecord{hdr: hdr, name: cleanName(hdr.Name)}
		switch hdr.Typeflag {
		case tar.TypeReg, tar.TypeRegA:
			h := sha256.New()
			if _, err := io.Copy(h, tr); err != nil {
				return nil, nil, fmt.Errorf("reading tar entry %q: %w", hdr.Name, err)
			}
			r.sha256 = hex.EncodeToString(h.Sum(nil))
		case tar.TypeDir, tar.TypeSymlink, tar.TypeLink, tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
		default:
			return nil, nil, fmt.Errorf("tar entry %q: unsupported type %q", hdr.Name, hdr.Typeflag)
		}
		records[r.name] = r
		pos[r.name] = i
	}
	order := sortedKeys(records)
	sort.Slice(order, func(a, b int) bool { return pos[order[a]] < pos[order[b]] })
	return records, order, nil
}

func entryFromHeader(name string, r *tarRecord) *Entry {
	h := r.hdr
	e := &Entry{
		Path:    name,
		Mode:    uint32(h.Mode & 0o7777),
		UID:     uint32(h.Uid),
		GID:     uint32(h.Gid),
		ModTime: h.ModTime.Unix(),
		NLink:   1,
	}
	for k, val := range h.PAXRecords {
		if strings.HasPrefix(k, xattrPAXPrefix) {
			if e.Xattrs == nil {
				e.Xattrs = map[string]string{}
			}
			e.Xattrs[k[len(xattrPAXPrefix):]] = val
		}
	}
	switch h.Typeflag {
	case tar.TypeDir:
		e.Type = "dir"
	case tar.TypeSymlink:
		e.Type = "symlink"
		e.LinkName = h.Linkname
		e.Size = int64(len(h.Linkname))
	case tar.TypeChar, tar.TypeBlock:
		e.Type = "char"
		if h.Typeflag == tar.TypeBlock {
			e.Type = "block"
		}
		e.DevMajor, e.DevMinor = uint32(h.Devmajor), uint32(h.Devminor)
	case tar.TypeFifo:
		e.Type = "fifo"
	default:
		e.Type = "reg"
		e.Size = h.Size
		e.SHA256 = r.sha256
	}
	return e
}

// ensureDirs creates the implicit directories leading to dir.
func ensureDirs(v View, dir string) error {
	if dir == "" {
		return nil
	}
	parts := strings.Split(dir, "/")
	for i := range parts {
		p := strings.Join(parts[:i+1], "/")
		switch e := v[p]; {
		case e == nil:
			v[p] = &Entry{Path: p, Type: "dir", Mode: 0o755}
		case e.Type != "dir":
			return fmt.Errorf("%s: has entries below it but is a %s", p, e.Type)
		}
	}
	return nil
}

func cleanName(name string) string {
	p := path.Clean("/" + name)
	return strings.TrimPrefix(p, "/")
}

func splitPath(p string) (dir, base string) {
	i := strings.LastIndexByte(p, '/')
	if i < 0 {
		return "", p
	}
	return p[:i], p[i+1:]
}

func joinPath(dir, base string) string {
	if dir == "" {
		return base
	}
	return dir + "/" + base
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// TarFile returns the body of the regular file name in the tar (the last
// entry of that name, as extraction would leave it), failing tb if there is
// none.
func TarFile(tb testing.TB, tarBytes []byte, name string) []byte {
	tb.Helper()
	tr := tar.NewReader(bytes.NewReader(tarBytes))
	var body []byte
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			tb.Fatal(err)
		}
		if h.Name == name {
			if body, err = io.ReadAll(tr); err != nil {
				tb.Fatal(err)
			}
		}
	}
	if body == nil {
		tb.Fatalf("no %q in tar", name)
	}
	return body
}
