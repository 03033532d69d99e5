package metrics

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/hanwen/go-fuse/v2/fuse"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/poolfs/poolfs/cache"
	"github.com/poolfs/poolfs/layer"
	"github.com/poolfs/poolfs/remote"
)

// TestScrape fills real caches, feeds the hooks, and parses what /metrics
// serves.
func TestScrape(t *testing.T) {
	disk, err := cache.NewDisk(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	disk.SetMaxBytes(4096)
	mem := cache.NewMemory(1 << 20)
	for i := range 8 {
		b := []byte(fmt.Sprintf("%01000d", i))
		key := fmt.Sprintf("sha256:%x", sha256.Sum256(b))
		disk.Add(key, b)
		mem.Add(key, b)
		disk.Get(key)
	}
	mem.Get("sha256:missing")
	whole := []byte(fmt.Sprintf("%01500d", 42))
	if err := disk.AddWhole(context.Background(), fmt.Sprintf("sha256:%x", sha256.Sum256(whole)), int64(len(whole)), bytes.NewReader(whole)); err != nil {
		t.Fatal(err)
	}
	wf := layer.NewWholeFiles(context.Background(), disk, layer.WholeOptions{})
	defer wf.Close()

	m := New()
	m.Watch(Sources{
		Resolver: remote.New(remote.Options{}),
		Disk:     disk,
		Memory:   mem,
		Whole:    wf,
		Layers: func() []Layer {
			return []Layer{{Ref: "reg/app:1", Digest: "sha256:aa", Size: 200, FetchedBytes: 50, Uses: 3}}
		},
	})
	m.ObserveFetch(remote.FetchEvent{Registry: "reg.lan", Bytes: 10, Duration: 30 * time.Millisecond})
	m.ObserveFetch(remote.FetchEvent{Registry: "reg.lan", Err: fmt.Errorf("boom")})
	m.ObserveFUSE("read", time.Millisecond, fuse.OK)
	m.ObserveFUSE("lookup", time.Microsecond, fuse.ENOENT)

	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(rec.Body)
	if err != nil {
		t.Fatalf("parsing: %v", err)
	}
	get := func(name string, labels ...string) float64 {
		for _, mt := range fams[name].GetMetric() {
			ok := true
			for i := 0; i+1 < len(labels); i += 2 {
				found := false
				for _, lp := range mt.GetLabel() {
					found = found || (lp.GetName() == labels[i] && lp.GetValue() == labels[i+1])
				}
				ok = ok && found
			}
			if !ok {
				continue
			}
			switch {
			case mt.Counter != nil:
				return mt.Counter.GetValue()
			case mt.Gauge != nil:
				return mt.Gauge.GetValue()
			case mt.Histogram != nil:
				return float64(mt.Histogram.GetSampleCount())
			}
		}
		t.Errorf("%s%v missing", name, labels)
		return -1
	}
	checks := []struct {
		got, want float64
		what      string
	}{
		{get("poolfs_cache_max_bytes"), 4096, "cap"},
		{get("poolfs_cache_bytes", "tier", "disk"), float64(disk.Size()), "disk bytes"},
		{get("poolfs_cache_evictions_total", "tier", "disk"), float64(disk.Stats().Evictions), "disk evictions"},
		{get("poolfs_cache_hits_total", "tier", "disk"), float64(disk.Stats().Hits), "disk hits"},
		{get("poolfs_cache_misses_total", "tier", "memory"), 1, "memory misses"},
		{get("poolfs_whole_files"), 1, "whole files"},
		{get("poolfs_whole_file_bytes"), 1500, "whole file bytes"},
		{get("poolfs_whole_files_written_total"), 1, "whole files written"},
		{get("poolfs_whole_file_failures_total", "reason", "mismatch"), 0, "whole file mismatches"},
		{get("poolfs_layers_served"), 1, "layers"},
		{get("poolfs_layer_fetched_ratio", "digest", "sha256:aa"), 0.25, "fetched ratio"},
		{get("poolfs_layer_uses", "ref", "reg/app:1"), 3, "uses"},
		{get("poolfs_registry_fetch_duration_seconds", "registry", "reg.lan", "result", "ok"), 1, "fetch ok"},
		{get("poolfs_registry_fetch_duration_seconds", "registry", "reg.lan", "result", "error"), 1, "fetch error"},
		{get("poolfs_fuse_op_duration_seconds", "op", "read"), 1, "fuse read"},
		{get("poolfs_fuse_op_errors_total", "op", "lookup", "errno", "ENOENT"), 1, "fuse ENOENT"},
		{get("poolfs_registry_retries_total"), 0, "retries"},
		{get("poolfs_verify_failures_total"), 0, "verify failures"},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s = %v, want %v", c.what, c.got, c.want)
		}
	}
	if disk.Stats().Evictions == 0 {
		t.Error("test setup: the disk cache should have evicted")
	}
}
