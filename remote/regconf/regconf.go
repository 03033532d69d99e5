// Package regconf reads containers-registries.conf(5), version 2, the file
// podman reads to decide where an image is fetched from, and answers that
// question for a reference: mirrors to try, the location it is rewritten
// to, plain HTTP or not, or blocked. It does no I/O on registries.
package regconf

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/BurntSushi/toml"
	"github.com/google/go-containerregistry/pkg/name"
)

// ErrBlocked says registries.conf blocks the registry an image reference
// names; nothing is fetched for it.
var ErrBlocked = errors.New("registry is blocked in registries.conf")

// Default locations of containers-registries.conf(5), as podman reads them.
const (
	DefaultFile = "/etc/containers/registries.conf"
	DefaultDir  = "/etc/containers/registries.conf.d"
)

// Config is the part of containers-registries.conf(5) version 2 that
// decides where an image is fetched from: [[registry]] tables with prefix,
// location, insecure, blocked, mirror-by-digest-only and [[registry.mirror]]
// entries. Everything else in the file (search registries, short names,
// credential helpers) concerns podman's own pulls and is ignored.
//
// The zero value (and nil) has no entries: every reference is fetched from
// the registry it names.
type Config struct {
	entries []Registry
}

// Registry is one [[registry]] table.
type Registry struct {
	Prefix   string // what references must start with; defaults to Location
	Location string // where they are fetched from instead ("" with a wildcard prefix: unchanged)
	Insecure bool
	Blocked  bool
	// MirrorByDigestOnly limits mirrors to references by digest (tags
	// could resolve to something else on a mirror).
	MirrorByDigestOnly bool
	Mirrors            []Mirror
}

// Mirror is one [[registry.mirror]] table.
type Mirror struct {
	Location string
	Insecure bool
	// PullFromMirror is "all" (or ""), "digest-only" or "tag-only".
	PullFromMirror string
}

// registriesFile is the TOML layout of one file.
type registriesFile struct {
	Registry []struct {
		Prefix             string `toml:"prefix"`
		Location           string `toml:"location"`
		Insecure           bool   `toml:"insecure"`
		Blocked            bool   `toml:"blocked"`
		MirrorByDigestOnly bool   `toml:"mirror-by-digest-only"`
		Mirror             []struct {
			Location       string `toml:"location"`
			Insecure       bool   `toml:"insecure"`
			PullFromMirror string `toml:"pull-from-mirror"`
		} `toml:"mirror"`
	} `toml:"registry"`
}

// Load reads the registries configuration the way podman does:
// the file named by $CONTAINERS_REGISTRIES_CONF alone if that is set,
// otherwise DefaultFile followed by DefaultDir/*.conf
// in name order. path, if not empty, replaces the main file (its drop-in
// directory is then path + ".d"). Missing files are no error: without them
// references are fetched from where they point.
func Load(path string) (*Config, error) {
	var files []string
	switch env := os.Getenv("CONTAINERS_REGISTRIES_CONF"); {
	case path != "":
		files = append([]string{path}, dropIns(path+".d")...)
	case env != "":
		files = []string{env}
	default:
		files = append([]string{DefaultFile}, dropIns(DefaultDir)...)
	}
	rs := &Config{}
	for _, f := range files {
		data, err := os.ReadFile(f)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("reading registries configuration: %w", err)
		}
		entries, err := Parse(data)
		if err != nil {
			return nil, fmt.Errorf("registries configuration %s: %w", f, err)
		}
		rs.merge(entries)
	}
	return rs, nil
}

func dropIns(dir string) []string {
	m, _ := filepath.Glob(filepath.Join(dir, "*.conf"))
	sort.Strings(m)
	return m
}

// merge adds entries; one with the prefix of an earlier entry replaces it,
// as a later drop-in file overrides an earlier one in containers/image.
func (rs *Config) merge(entries []Registry) {
	for _, e := range entries {
		replaced := false
		for i := range rs.entries {
			if rs.entries[i].Prefix == e.Prefix {
				rs.entries[i], replaced = e, true
				break
			}
		}
		if !replaced {
			rs.entries = append(rs.entries, e)
		}
	}
}

// Parse parses one registries.conf file and checks its
// [[registry]] tables.
func Parse(data []byte) ([]Registry, error) {
	var f registriesFile
	if _, err := toml.Decode(string(data), &f); err != nil {
		return nil, fmt.Errorf("parsing TOML: %w", err)
	}
	out := make([]Registry, 0, len(f.Registry))
	for i, r := range f.Registry {
		e := Registry{
			Prefix:             strings.TrimRight(r.Prefix, "/"),
			Location:           strings.TrimRight(r.Location, "/"),
			Insecure:           r.Insecure,
			Blocked:            r.Blocked,
			MirrorByDigestOnly: r.MirrorByDigestOnly,
		}
		if e.Prefix == "" {
			if e.Location == "" {
				return nil, fmt.Errorf("registry %d: neither prefix nor location set", i+1)
			}
			e.Prefix = e.Location
		}
		if strings.HasPrefix(e.Prefix, "*.") {
			if strings.ContainsAny(e.Prefix[2:], "/*") {
				return nil, fmt.Errorf("registry %d: wildcard prefix %q must be a bare *.domain", i+1, e.Prefix)
			}
			if e.Location != "" {
				return nil, fmt.Errorf("registry %d: wildcard prefix %q cannot have a location", i+1, e.Prefix)
			}
		} else if strings.Contains(e.Prefix, "*") {
			return nil, fmt.Errorf("registry %d: prefix %q: a wildcard is only allowed as a leading *.", i+1, e.Prefix)
		}
		for j, m := range r.Mirror {
			mc := Mirror{Location: strings.TrimRight(m.Location, "/"), Insecure: m.Insecure, PullFromMirror: m.PullFromMirror}
			if mc.Location == "" {
				return nil, fmt.Errorf("registry %q: mirror %d has no location", e.Prefix, j+1)
			}
			switch mc.PullFromMirror {
			case "", "all", "digest-only", "tag-only":
			default:
				return nil, fmt.Errorf("registry %q: mirror %s: pull-from-mirror %q is not all, digest-only or tag-only", e.Prefix, mc.Location, mc.PullFromMirror)
			}
			e.Mirrors = append(e.Mirrors, mc)
		}
		out = append(out, e)
	}
	return out, nil
}

// Endpoint is one place to fetch an image from: the reference rewritten for
// a mirror or a location, and whether it is reached over plain HTTP.
type Endpoint struct {
	Ref      string
	Insecure bool
	Mirror   bool
}

// Endpoints lists, in the order to try them, where ref (a fully qualified
// reference) is fetched from: the mirrors of the registry entry with the
// longest matching prefix, then the entry's location. A blocked entry
// returns ErrBlocked.
func (rs *Config) Endpoints(ref string) ([]Endpoint, error) {
	parsed, err := name.ParseReference(ref)
	if err != nil {
		return nil, fmt.Errorf("parse image reference %q: %w", ref, err)
	}
	full := podmanName(parsed)
	var e *Registry
	best := -1
	if rs != nil {
		for i := range rs.entries {
			if n := matchPrefix(full, rs.entries[i].Prefix); n > best {
				best, e = n, &rs.entries[i]
			}
		}
	}
	if e == nil {
		return []Endpoint{{Ref: ref}}, nil
	}
	if e.Blocked {
		return nil, fmt.Errorf("%s (prefix %q): %w", ref, e.Prefix, ErrBlocked)
	}
	rewrite := func(location string) string {
		if location == "" || strings.HasPrefix(e.Prefix, "*.") {
			return full
		}
		return location + full[len(e.Prefix):]
	}
	_, byDigest := parsed.(name.Digest)
	var eps []Endpoint
	for _, m := range e.Mirrors {
		digestOnly := e.MirrorByDigestOnly || m.PullFromMirror == "digest-only"
		if (digestOnly && !byDigest) || (m.PullFromMirror == "tag-only" && byDigest) {
			continue
		}
		eps = append(eps, Endpoint{Ref: rewrite(m.Location), Insecure: m.Insecure, Mirror: true})
	}
	return append(eps, Endpoint{Ref: rewrite(e.Location), Insecure: e.Insecure}), nil
}

// podmanName spells a reference as containers/image does, which is what
// registries.conf prefixes are written against: Docker Hub is "docker.io"
// (ggcr says "index.docker.io"), official images keep "library/".
func podmanName(ref name.Reference) string {
	reg := ref.Context().RegistryStr()
	if reg == name.DefaultRegistry {
		reg = "docker.io"
	}
	sep := ":"
	if _, ok := ref.(name.Digest); ok {
		sep = "@"
	}
	return reg + "/" + ref.Context().RepositoryStr() + sep + ref.Identifier()
}

// matchPrefix returns how long a match prefix is for ref, or -1 if it does
// not match: a prefix matches whole path components ("reg/a" matches
// "reg/a:1" and "reg/a/b@sha256:...", not "reg/ab"), and "*.example.com"
// matches any host under example.com.
func matchPrefix(ref, prefix string) int {
	if rest, ok := strings.CutPrefix(prefix, "*."); ok {
		host, _, _ := strings.Cut(ref, "/")
		if strings.HasSuffix(host, "."+rest) {
			return len(prefix)
		}
		return -1
	}
	if !strings.HasPrefix(ref, prefix) {
		return -1
	}
	if len(ref) == len(prefix) {
		return len(prefix)
	}
	switch ref[len(prefix)] {
	case '/', ':', '@':
		return len(prefix)
	}
	return -1
}
