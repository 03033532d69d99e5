package layer

import (
	"errors"
	"fmt"
	"path"
	"strings"
)

// Overlay whiteout markers as they appear in OCI/Docker layer tars.
const (
	whiteoutPrefix = ".wh."
	whiteoutMeta   = ".wh..wh." // AUFS bookkeeping (.wh..wh..plnk etc.): never shown
	whiteoutOpaque = ".wh..wh..opq"
)

// opaqueXattrs mark a directory opaque for overlayfs: trusted.* for a
// privileged mount, user.* for a rootless (userxattr) one.
var opaqueXattrs = []string{"trusted.overlay.opaque", "user.overlay.opaque"}

// cleanName maps a TOC entry name to its path in the view ("" for the
// root). Names that would land outside the layer are errors rather than
// being silently re-rooted: a TOC that contains them was not made by a
// sane tool, and guessing what it meant could shadow other files.
func cleanName(name string) (string, error) {
	if strings.IndexByte(name, 0) >= 0 {
		return "", fmt.Errorf("name %q contains NUL", name)
	}
	p := path.Clean(name)
	switch {
	case p == "." || p == "/":
		return "", nil // the layer root, written as "./" or "/" by tar tools
	case path.IsAbs(p):
		return "", fmt.Errorf("name %q is absolute", name)
	case p == ".." || strings.HasPrefix(p, "../"):
		return "", fmt.Errorf("name %q escapes the layer root", name)
	}
	return p, nil
}

// cleanTOCName is cleanName for comparisons where an invalid name only
// needs to compare unequal to valid ones.
func cleanTOCName(name string) string {
	p, err := cleanName(name)
	if err != nil {
		return "\x00" + name
	}
	return p
}

// splitPath returns the parent path ("" for the root) and base name of a
// cleaned, non-root path.
func splitPath(p string) (dir, base string) {
	i := strings.LastIndexByte(p, '/')
	if i < 0 {
		return "", p
	}
	return p[:i], p[i+1:]
}

var errNotDir = errors.New("not a directory")
