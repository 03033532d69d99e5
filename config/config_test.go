package config

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestLoad(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "config.toml")
	if err := os.WriteFile(path, []byte(`
root = "/var/lib/poolfs/store"
log_level = "debug"
log_format = "json"
insecure_registries = ["reg.lan:5000", "other.lan"]
registries_conf = "/etc/poolfs/registries.conf"
fetch_timeout = "45s"
profile_lookup = false
control_socket = "/run/poolfs/control.sock"
metrics_address = "unix:/run/poolfs/metrics.sock"
group = "podman-users"
tag_recheck = "10m"

[image_store]
pinned = ["reg.lan:5000/py:3", "reg.lan:5000/java:17"]

[cache]
dir = "/srv/poolfs-cache"
max_size = "20GiB"
memory_size = "256MiB"

[trees]
max_entries = 300000
max_memory = "1GiB"
idle = "90s"
`), 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := Load(path, true)
	if err != nil {
		t.Fatal(err)
	}
	if f.FetchTimeout.D != 45*time.Second || f.Cache.MaxSize.Bytes != 20<<30 {
		t.Errorf("decoded %+v", f)
	}
	got := map[string][]string{}
	for _, s := range f.Settings() {
		got[s.Key+"->"+s.Flag] = s.Values
	}
	want := map[string][]string{
		"root->":                                 {"/var/lib/poolfs/store"},
		"log_level->log-level":                   {"debug"},
		"log_format->log-format":                 {"json"},
		"insecure_registries->insecure-registry": {"reg.lan:5000", "other.lan"},
		"registries_conf->registries-conf":       {"/etc/poolfs/registries.conf"},
		"fetch_timeout->fetch-timeout":           {"45s"},
		"profile_lookup->profile-lookup":         {"false"},
		"control_socket->control-socket":         {"/run/poolfs/control.sock"},
		"metrics_address->metrics-address":       {"unix:/run/poolfs/metrics.sock"},
		"group->group":                           {"podman-users"},
		"tag_recheck->tag-recheck":               {"10m0s"},
		"image_store.pinned->pin-image":          {"reg.lan:5000/py:3", "reg.lan:5000/java:17"},
		"cache.dir->cache-dir":                   {"/srv/poolfs-cache"},
		"cache.max_size->cache-max-size":         {"21474836480"},
		"cache.memory_size->memory-cache-mb":     {"256"},
		"trees.max_entries->tree-max-entries":    {"300000"},
		"trees.max_memory->tree-memory-mb":       {"1024"},
		"trees.idle->tree-idle":                  {"1m30s"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Settings:\n got %v\nwant %v", got, want)
	}
}

func TestLoadMissing(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "none.toml")
	if f, err := Load(missing, false); err != nil || len(f.Settings()) != 0 {
		t.Errorf("missing default file: %v, %v", f, err)
	}
	if _, err := Load(missing, true); err == nil || !strings.Contains(err.Error(), missing) {
		t.Errorf("missing explicit file: %v", err)
	}
}

func TestParseErrorsNameTheKey(t *testing.T) {
	tests := []struct{ content, want string }{
		{`colour = "blue"`, "unknown key colour"},
		{"[cache]\nmax_sise = \"1G\"", "unknown key cache.max_sise"},
		{"[cache]\nmax_size = \"lots\"", "max_size"},
		{"[cache]\nmax_size = \"150%\"", "max_size"},
		{"[cache]\nmemory_size = \"10%\"", "cache.memory_size"},
		{`log_level = "chatty"`, "log_level"},
		{`log_format = "xml"`, "log_format"},
		{`fetch_timeout = "soon"`, "fetch_timeout"},
		{`profile_lookup = "no"`, "profile_lookup"},
		{`fetch_timeout = "-1s"`, "fetch_timeout"},
		{`root = "relative/dir"`, "root"},
		{`metrics_address = "nowhere"`, "metrics_address"},
		{`metrics_address = "unix:rel.sock"`, "metrics_address"},
		{`insecure_registries = "one"`, "insecure_registries"},
		{`group = ""`, "group"},
		{`tag_recheck = "0s"`, "tag_recheck"},
		{"root = ", "line 1"},
	}
	for _, tc := range tests {
		_, err := Parse([]byte(tc.content))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Parse(%q) = %v, want an error mentioning %q", tc.content, err, tc.want)
		}
	}
}

func TestParseSize(t *testing.T) {
	tests := []struct {
		in   string
		want Size
		ok   bool
	}{
		{"1024", Size{Bytes: 1024}, true},
		{"10GiB", Size{Bytes: 10 << 30}, true},
		{"1.5G", Size{Bytes: 3 << 29}, true},
		{"2 MB", Size{Bytes: 2e6}, true},
		{"10%", Size{Percent: 10}, true},
		{"0%", Size{}, false},
		{"-1", Size{}, false},
		{"ten", Size{}, false},
	}
	for _, tc := range tests {
		got, err := ParseSize(tc.in)
		if (err == nil) != tc.ok || (tc.ok && got != tc.want) {
			t.Errorf("ParseSize(%q) = %+v, %v", tc.in, got, err)
		}
	}
	if got := (Size{Percent: 10}).Resolve(1000); got != 100 {
		t.Errorf("10%% of 1000 = %d", got)
	}
}

// TestPackagedSample keeps packaging/config.toml loadable, and checks that
// uncommenting every key in it still gives a valid configuration.
func TestPackagedSample(t *testing.T) {
	path := filepath.Join("..", "packaging", "config.toml")
	if _, err := Load(path, true); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var lines []string
	for _, l := range strings.Split(string(data), "\n") {
		if rest, ok := strings.CutPrefix(l, "# "); ok && strings.Contains(rest, " = ") {
			l = rest
		}
		lines = append(lines, l)
	}
	f, err := Parse([]byte(strings.Join(lines, "\n")))
	if err != nil {
		t.Fatalf("uncommented sample: %v", err)
	}
	if want := countKeys(reflect.TypeOf(File{})); len(f.Settings()) != want {
		t.Errorf("the sample sets %d keys, want all %d that File knows", len(f.Settings()), want)
	}
}

// countKeys counts the keys a configuration struct takes: its toml-tagged
// fields, those of nested tables counted one by one.
func countKeys(t reflect.Type) int {
	n := 0
	for i := range t.NumField() {
		f := t.Field(i)
		if f.Tag.Get("toml") == "" {
			continue
		}
		if f.Type.Kind() == reflect.Struct {
			n += countKeys(f.Type)
			continue
		}
		n++
	}
	return n
}
