// Package config reads poolfs's TOML configuration file. Every setting in
// the file is also a command-line flag of `poolfs serve`; the file only
// supplies values for flags the command line did not set, so the flag
// definitions (with their defaults) stay the single source of defaults.
package config

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
	"github.com/sirupsen/logrus"
)

// DefaultPath is read when --config is not given; it may be missing.
const DefaultPath = "/etc/poolfs/config.toml"

// File is the configuration file's layout. Pointers tell "not in the file"
// apart from a zero value.
type File struct {
	Root               *string   `toml:"root"`
	LogLevel           *string   `toml:"log_level"`
	LogFormat          *string   `toml:"log_format"`
	InsecureRegistries []string  `toml:"insecure_registries"`
	RegistriesConf     *string   `toml:"registries_conf"`
	FetchTimeout       *Duration `toml:"fetch_timeout"`
	ProfileLookup      *bool     `toml:"profile_lookup"`
	ControlSocket      *string   `toml:"control_socket"`
	MetricsAddress     *string   `toml:"metrics_address"`
	Group              *string   `toml:"group"`
	TagRecheck         *Duration `toml:"tag_recheck"`
	ImageStore         struct {
		Pinned []string `toml:"pinned"`
	} `toml:"image_store"`
	Cache struct {
		Dir        *string `toml:"dir"`
		MaxSize    *Size   `toml:"max_size"`
		MemorySize *Size   `toml:"memory_size"`
	} `toml:"cache"`
	Trees struct {
		MaxEntries *int      `toml:"max_entries"`
		MaxMemory  *Size     `toml:"max_memory"`
		Idle       *Duration `toml:"idle"`
	} `toml:"trees"`
}

// Setting is one value from the file in the form of the flag it stands for.
type Setting struct {
	Key    string   // the file's key, e.g. "cache.max_size"
	Flag   string   // the serve flag, e.g. "cache-max-size"; "" for root (a positional argument)
	Values []string // flag syntax; several for repeatable flags
}

// Load reads path. A missing file is an error only if explicit (the user
// named it); otherwise it is an empty configuration. Unknown keys and bad
// values are errors that name the file and the key.
func Load(path string, explicit bool) (*File, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) && !explicit {
		return &File{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading config: %w", err)
	}
	f, err := Parse(data)
	if err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	return f, nil
}

// Parse decodes and checks one configuration.
func Parse(data []byte) (*File, error) {
	var f File
	md, err := toml.Decode(string(data), &f)
	if err != nil {
		var perr toml.ParseError
		if errors.As(err, &perr) {
			// One line naming the key: the multi-line rendering with a
			// caret does not survive log collectors.
			msg := strings.TrimPrefix(perr.Message, "toml: ")
			if perr.LastKey != "" {
				return nil, fmt.Errorf("line %d: %s: %s", perr.Position.Line, perr.LastKey, msg)
			}
			return nil, fmt.Errorf("line %d: %s", perr.Position.Line, msg)
		}
		return nil, err
	}
	if und := md.Undecoded(); len(und) > 0 {
		keys := make([]string, len(und))
		for i, k := range und {
			keys[i] = k.String()
		}
		return nil, fmt.Errorf("unknown key %s", strings.Join(keys, ", "))
	}
	if err := f.check(); err != nil {
		return nil, err
	}
	return &f, nil
}

func (f *File) check() error {
	if f.LogLevel != nil {
		if _, err := logrus.ParseLevel(*f.LogLevel); err != nil {
			return fmt.Errorf("log_level: %q is not one of debug, info, warn, error", *f.LogLevel)
		}
	}
	if f.LogFormat != nil && *f.LogFormat != "text" && *f.LogFormat != "json" {
		return fmt.Errorf("log_format: %q is neither text nor json", *f.LogFormat)
	}
	if f.FetchTimeout != nil && f.FetchTimeout.D <= 0 {
		return fmt.Errorf("fetch_timeout: %s is not a positive duration", f.FetchTimeout.D)
	}
	for _, p := range []struct {
		key string
		v   *string
	}{{"root", f.Root}, {"cache.dir", f.Cache.Dir}, {"control_socket", f.ControlSocket}, {"registries_conf", f.RegistriesConf}} {
		if p.v != nil && !strings.HasPrefix(*p.v, "/") {
			return fmt.Errorf("%s: %q is not an absolute path", p.key, *p.v)
		}
	}
	if f.Group != nil && *f.Group == "" {
		return errors.New("group: empty (leave the key out for a store only root can reach)")
	}
	if f.TagRecheck != nil && f.TagRecheck.D <= 0 {
		return fmt.Errorf("tag_recheck: %s is not a positive duration", f.TagRecheck.D)
	}
	if f.Cache.MemorySize != nil && f.Cache.MemorySize.Percent != 0 {
		return fmt.Errorf("cache.memory_size: a percentage is only allowed for cache.max_size")
	}
	if f.Trees.MaxEntries != nil && *f.Trees.MaxEntries < 0 {
		return fmt.Errorf("trees.max_entries: %d is negative", *f.Trees.MaxEntries)
	}
	if f.Trees.MaxMemory != nil && f.Trees.MaxMemory.Percent != 0 {
		return fmt.Errorf("trees.max_memory: a percentage is only allowed for cache.max_size")
	}
	if f.Trees.Idle != nil && f.Trees.Idle.D < 0 {
		return fmt.Errorf("trees.idle: %s is negative", f.Trees.Idle.D)
	}
	if f.MetricsAddress != nil {
		if err := CheckListenAddress(*f.MetricsAddress); err != nil {
			return fmt.Errorf("metrics_address: %w", err)
		}
	}
	return nil
}

// CheckListenAddress accepts "" (off), "host:port" and "unix:/path".
func CheckListenAddress(a string) error {
	if a == "" {
		return nil
	}
	if p, ok := strings.CutPrefix(a, "unix:"); ok {
		if !strings.HasPrefix(p, "/") {
			return fmt.Errorf("%q: the unix socket path must be absolute", a)
		}
		return nil
	}
	i := strings.LastIndexByte(a, ':')
	if i < 0 {
		return fmt.Errorf("%q is neither host:port nor unix:/path", a)
	}
	if _, err := strconv.ParseUint(a[i+1:], 10, 16); err != nil {
		return fmt.Errorf("%q: bad port", a)
	}
	return nil
}

// Settings lists the values the file sets, as flag values.
func (f *File) Settings() []Setting {
	var out []Setting
	str := func(key, flag string, v *string) {
		if v != nil {
			out = append(out, Setting{Key: key, Flag: flag, Values: []string{*v}})
		}
	}
	str("root", "", f.Root)
	str("log_level", "log-level", f.LogLevel)
	str("log_format", "log-format", f.LogFormat)
	if f.InsecureRegistries != nil {
		out = append(out, Setting{Key: "insecure_registries", Flag: "insecure-registry", Values: f.InsecureRegistries})
	}
	str("registries_conf", "registries-conf", f.RegistriesConf)
	if f.FetchTimeout != nil {
		out = append(out, Setting{Key: "fetch_timeout", Flag: "fetch-timeout", Values: []string{f.FetchTimeout.D.String()}})
	}
	if f.ProfileLookup != nil {
		out = append(out, Setting{Key: "profile_lookup", Flag: "profile-lookup", Values: []string{strconv.FormatBool(*f.ProfileLookup)}})
	}
	str("control_socket", "control-socket", f.ControlSocket)
	str("metrics_address", "metrics-address", f.MetricsAddress)
	str("group", "group", f.Group)
	if f.TagRecheck != nil {
		out = append(out, Setting{Key: "tag_recheck", Flag: "tag-recheck", Values: []string{f.TagRecheck.D.String()}})
	}
	if f.ImageStore.Pinned != nil {
		out = append(out, Setting{Key: "image_store.pinned", Flag: "pin-image", Values: f.ImageStore.Pinned})
	}
	str("cache.dir", "cache-dir", f.Cache.Dir)
	if f.Cache.MaxSize != nil {
		out = append(out, Setting{Key: "cache.max_size", Flag: "cache-max-size", Values: []string{f.Cache.MaxSize.String()}})
	}
	if f.Cache.MemorySize != nil {
		mib := (f.Cache.MemorySize.Bytes + 1<<20 - 1) >> 20
		out = append(out, Setting{Key: "cache.memory_size", Flag: "memory-cache-mb", Values: []string{strconv.FormatInt(mib, 10)}})
	}
	if f.Trees.MaxEntries != nil {
		out = append(out, Setting{Key: "trees.max_entries", Flag: "tree-max-entries", Values: []string{strconv.Itoa(*f.Trees.MaxEntries)}})
	}
	if f.Trees.MaxMemory != nil {
		mib := (f.Trees.MaxMemory.Bytes + 1<<20 - 1) >> 20
		out = append(out, Setting{Key: "trees.max_memory", Flag: "tree-memory-mb", Values: []string{strconv.FormatInt(mib, 10)}})
	}
	if f.Trees.Idle != nil {
		out = append(out, Setting{Key: "trees.idle", Flag: "tree-idle", Values: []string{f.Trees.Idle.D.String()}})
	}
	return out
}

// Duration is a time.Duration written as "20s" in the file.
type Duration struct{ D time.Duration }

func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return fmt.Errorf("%q is not a duration like 20s or 1m30s", b)
	}
	d.D = v
	return nil
}
