// Package fstest checks a mounted layer view against the tar it came from.
// It is a regular (non-test) package so that every package mounting
// layers can run the same entry-by-entry comparison podman would notice.
package fstest

import (
	"fmt"
	"sort"
	"strings"
)

// Entry is one name of a layer view as stat(2) and friends report it.
type Entry struct {
	Path     string // slash-separated, "" for the root
	Type     string // "dir", "reg", "symlink", "char", "block" or "fifo"
	Mode     uint32 // permission bits incl. setuid/setgid/sticky
	UID, GID uint32
	Size     int64 // compared for "reg" and "symlink" only: directory sizes are file system specific
	ModTime  int64 // seconds since the epoch
	LinkName string
	DevMajor uint32
	DevMinor uint32
	Xattrs   map[string]string
	NLink    uint32
	// Links lists every name of this inode, sorted, when there is more
	// than one (hard links); nil otherwise.
	Links  []string
	SHA256 string // hex digest of a regular file's content
}

// View maps each path of a tree ("" for the root) to its entry.
type View map[string]*Entry

// Diff lists the differences between the view expected from a tar and the
// one observed, one line per differing field, in path order.
func Diff(want, got View) []string {
	paths := map[string]bool{}
	for p := range want {
		paths[p] = true
	}
	for p := range got {
		paths[p] = true
	}
	sorted := make([]string, 0, len(paths))
	for p := range paths {
		sorted = append(sorted, p)
	}
	sort.Strings(sorted)

	var out []string
	for _, p := range sorted {
		w, g := want[p], got[p]
		name := p
		if name == "" {
			name = "/"
		}
		switch {
		case g == nil:
			out = append(out, fmt.Sprintf("%s: missing (want %s)", name, w.Type))
			continue
		case w == nil:
			out = append(out, fmt.Sprintf("%s: unexpected %s", name, g.Type))
			continue
		}
		add := func(field string, got, want any) {
			out = append(out, fmt.Sprintf("%s: %s %v, want %v", name, field, got, want))
		}
		if g.Type != w.Type {
			add("type", g.Type, w.Type)
			continue
		}
		if g.Mode != w.Mode {
			add("mode", fmt.Sprintf("%04o", g.Mode), fmt.Sprintf("%04o", w.Mode))
		}
		if g.UID != w.UID || g.GID != w.GID {
			add("owner", fmt.Sprintf("%d:%d", g.UID, g.GID), fmt.Sprintf("%d:%d", w.UID, w.GID))
		}
		if (w.Type == "reg" || w.Type == "symlink") && g.Size != w.Size {
			add("size", g.Size, w.Size)
		}
		if g.ModTime != w.ModTime {
			add("mtime", g.ModTime, w.ModTime)
		}
		if g.LinkName != w.LinkName {
			add("link target", fmt.Sprintf("%q", g.LinkName), fmt.Sprintf("%q", w.LinkName))
		}
		if g.DevMajor != w.DevMajor || g.DevMinor != w.DevMinor {
			add("device", fmt.Sprintf("%d,%d", g.DevMajor, g.DevMinor), fmt.Sprintf("%d,%d", w.DevMajor, w.DevMinor))
		}
		if d := diffXattrs(g.Xattrs, w.Xattrs); d != "" {
			out = append(out, fmt.Sprintf("%s: xattrs: %s", name, d))
		}
		if g.NLink != w.NLink {
			add("nlink", g.NLink, w.NLink)
		}
		if strings.Join(g.Links, "\x00") != strings.Join(w.Links, "\x00") {
			add("hard links", fmt.Sprintf("%q", g.Links), fmt.Sprintf("%q", w.Links))
		}
		if g.SHA256 != w.SHA256 {
			add("content sha256", g.SHA256, w.SHA256)
		}
	}
	return out
}

func diffXattrs(got, want map[string]string) string {
	var d []string
	keys := map[string]bool{}
	for k := range got {
		keys[k] = true
	}
	for k := range want {
		keys[k] = true
	}
	sorted := make([]string, 0, len(keys))
	for k := range keys {
		sorted = append(sorted, k)
	}
	sort.Strings(sorted)
	for _, k := range sorted {
		g, gok := got[k]
		w, wok := want[k]
		switch {
		case !gok:
			d = append(d, fmt.Sprintf("missing %s", k))
		case !wok:
			d = append(d, fmt.Sprintf("unexpected %s=%q", k, g))
		case g != w:
			d = append(d, fmt.Sprintf("%s=%q, want %q", k, g, w))
		}
	}
	return strings.Join(d, "; ")
}
