package main

import (
	"flag"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/poolfs/poolfs/alsfs"
	"github.com/poolfs/poolfs/config"
)

// serveFlags mirrors the part of serve's flag set that applyConfig touches.
type serveFlags struct {
	fl       *flag.FlagSet
	d        *daemonFlags
	insecure listFlag
	cacheDir *string
	memMB    *int64
	level    *string
	timeout  *time.Duration
}

func newServeFlags() *serveFlags {
	s := &serveFlags{fl: flag.NewFlagSet("serve", flag.ContinueOnError)}
	s.fl.Var(&s.insecure, "insecure-registry", "")
	s.cacheDir = s.fl.String("cache-dir", "/var/lib/poolfs/cache", "")
	s.memMB = s.fl.Int64("memory-cache-mb", 512, "")
	s.level = s.fl.String("log-level", "info", "")
	s.fl.String("log-format", "text", "")
	s.timeout = s.fl.Duration("fetch-timeout", 20*time.Second, "")
	s.d = addDaemonFlags(s.fl)
	s.fl.SetOutput(&strings.Builder{})
	return s
}

func TestApplyConfig(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "config.toml")
	if err := os.WriteFile(cfg, []byte(`
root = "/srv/store"
log_level = "warn"
insecure_registries = ["a.lan", "b.lan:5000"]
fetch_timeout = "1m"
metrics_address = ""
control_socket = "/run/x/ctl.sock"
[cache]
dir = "/srv/cache"
max_size = "2GiB"
memory_size = "64MiB"
`), 0o644); err != nil {
		t.Fatal(err)
	}

	t.Run("file fills what flags leave", func(t *testing.T) {
		s := newServeFlags()
		pos, err := parseInterspersed(s.fl, []string{"--config", cfg, "--log-level", "debug", "--cache-dir", "/flag/cache"})
		if err != nil {
			t.Fatal(err)
		}
		if pos, err = s.d.applyConfig(s.fl, pos); err != nil {
			t.Fatal(err)
		}
		got := []any{pos, *s.level, *s.cacheDir, []string(s.insecure), *s.memMB, *s.timeout, s.d.metricsAddr, s.d.controlSocket, s.d.cacheMaxSize, s.d.defaultCap}
		want := []any{[]string{"/srv/store"}, "debug", "/flag/cache", []string{"a.lan", "b.lan:5000"}, int64(64), time.Minute, "", "/run/x/ctl.sock", config.Size{Bytes: 2 << 30}, false}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("\n got %v\nwant %v", got, want)
		}
	})
	t.Run("ROOT argument wins over root", func(t *testing.T) {
		s := newServeFlags()
		pos, _ := parseInterspersed(s.fl, []string{"--config", cfg, "/arg/root"})
		pos, err := s.d.applyConfig(s.fl, pos)
		if err != nil || !reflect.DeepEqual(pos, []string{"/arg/root"}) {
			t.Errorf("pos %v, %v", pos, err)
		}
	})
	t.Run("default cap", func(t *testing.T) {
		s := newServeFlags()
		pos, _ := parseInterspersed(s.fl, []string{"--config", filepath.Join(dir, "absent-but-default.toml"), "/r"})
		if _, err := s.d.applyConfig(s.fl, pos); err == nil || !strings.Contains(err.Error(), "absent-but-default.toml") {
			t.Errorf("missing explicit config: %v", err)
		}
		s = newServeFlags()
		s.d.configPath = filepath.Join(dir, "absent-but-default.toml") // as if it were the default path
		pos, _ = parseInterspersed(s.fl, []string{"/r"})
		if _, err := s.d.applyConfig(s.fl, pos); err != nil || !s.d.defaultCap || s.d.cacheMaxSize.Percent != defaultCachePercent {
			t.Errorf("missing default config: %v, cap %+v", err, s.d.cacheMaxSize)
		}
	})
	t.Run("errors name the key", func(t *testing.T) {
		for content, key := range map[string]string{
			"[cache]\nmax_size = \"huge\"\n": "cache.max_size",
			"cache_dir = \"/x\"\n":           "cache_dir",
			"log_level = \"loud\"\n":         "log_level",
		} {
			p := filepath.Join(dir, "bad.toml")
			if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
				t.Fatal(err)
			}
			s := newServeFlags()
			pos, _ := parseInterspersed(s.fl, []string{"--config", p, "/r"})
			_, err := s.d.applyConfig(s.fl, pos)
			if err == nil || !strings.Contains(err.Error(), key) || !strings.Contains(err.Error(), p) {
				t.Errorf("%q: err %v, want one naming %s and the file", content, err, key)
			}
		}
	})
}

func TestAccessFor(t *testing.T) {
	tests := []struct {
		group string
		want  alsfs.Access
		ok    bool
	}{
		{"", alsfs.Access{}, true},
		{"4321", alsfs.Access{Group: true, GID: 4321}, true},
		{"root", alsfs.Access{Group: true, GID: 0}, true}, // a name
		{"no-such-group-for-poolfs", alsfs.Access{}, false},
		{"-1", alsfs.Access{}, false},
	}
	for _, tc := range tests {
		got, err := accessFor(tc.group)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("accessFor(%q) = %+v, %v", tc.group, got, err)
		}
	}
}
