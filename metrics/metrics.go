// Package metrics exposes poolfs's counters in the Prometheus format. It
// reads the Stats() the low-level packages keep (registry traffic, caches,
// the pool's layers) when scraped, and owns the two histograms that need
// every observation: registry fetch latency and FUSE operation latency.
package metrics

import (
	"net/http"
	"time"

	"github.com/hanwen/go-fuse/v2/fuse"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/poolfs/poolfs/cache"
	"github.com/poolfs/poolfs/layer"
	"github.com/poolfs/poolfs/remote"
)

// Layer is what the metrics show of one served layer.
type Layer struct {
	Ref, Digest  string
	Size         int64
	FetchedBytes int64
	Uses         int64
}

// Sources are what is read at each scrape; nil fields are left out.
type Sources struct {
	Resolver *remote.Resolver
	Disk     *cache.Disk
	Memory   *cache.Memory
	Whole    *layer.WholeFiles // nil: passthrough copies are off
	Layers   func() []Layer
}

// Metrics is one daemon's metrics registry.
type Metrics struct {
	reg          *prometheus.Registry
	fetchLatency *prometheus.HistogramVec
	fuseLatency  *prometheus.HistogramVec
	fuseErrors   *prometheus.CounterVec
}

// New returns a registry holding the histograms and the Go runtime and
// process collectors; Watch adds the counters read from Sources.
func New() *Metrics {
	m := &Metrics{
		reg: prometheus.NewRegistry(),
		fetchLatency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "poolfs_registry_fetch_duration_seconds",
			Help:    "Time of one blob range read from a registry, retries included, by registry host and result.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2.5, 12), // 1ms .. ~60s
		}, []string{"registry", "result"}),
		fuseLatency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "poolfs_fuse_op_duration_seconds",
			Help:    "Time poolfs took to answer a FUSE operation, by operation.",
			Buckets: prometheus.ExponentialBuckets(0.00001, 4, 12), // 10µs .. ~40s
		}, []string{"op"}),
		fuseErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "poolfs_fuse_op_errors_total",
			Help: "FUSE operations answered with an error, by operation and errno name.",
		}, []string{"op", "errno"}),
	}
	m.reg.MustRegister(m.fetchLatency, m.fuseLatency, m.fuseErrors,
		prometheus.NewGoCollector(), prometheus.NewProcessCollector(prometheus.ProcessCollectorOpts{}))
	return m
}

// Watch registers the collector that reads src at each scrape.
func (m *Metrics) Watch(src Sources) {
	m.reg.MustRegister(&collector{src: src})
}

// ObserveFetch is a remote.Options.OnFetch hook.
func (m *Metrics) ObserveFetch(ev remote.FetchEvent) {
	result := "ok"
	if ev.Err != nil {
		result = "error"
	}
	m.fetchLatency.WithLabelValues(ev.Registry, result).Observe(ev.Duration.Seconds())
}

// ObserveFUSE is an fs.OpObserver.
func (m *Metrics) ObserveFUSE(op string, took time.Duration, st fuse.Status) {
	m.fuseLatency.WithLabelValues(op).Observe(took.Seconds())
	if st != fuse.OK {
		m.fuseErrors.WithLabelValues(op, errnoName(st)).Inc()
	}
}

func errnoName(st fuse.Status) string {
	switch st {
	case fuse.ENOENT:
		return "ENOENT"
	case fuse.EIO:
		return "EIO"
	case fuse.EROFS:
		return "EROFS"
	case fuse.EACCES:
		return "EACCES"
	case fuse.ENODATA:
		return "ENODATA"
	case fuse.EINTR:
		return "EINTR"
	}
	return "other"
}

// Handler serves the registry in the Prometheus text format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{})
}

// The counters read from Sources at scrape time.
var (
	dRegRequests  = prometheus.NewDesc("poolfs_registry_requests_total", "HTTP requests sent, by registry host (handshakes, manifests, blobs, redirects).", []string{"registry"}, nil)
	dRegBytes     = prometheus.NewDesc("poolfs_registry_fetched_bytes_total", "Blob bytes received for readers, by registry host.", []string{"registry"}, nil)
	dRegFetches   = prometheus.NewDesc("poolfs_registry_fetches_total", "Blob range reads served, by registry host.", []string{"registry"}, nil)
	dRegFailures  = prometheus.NewDesc("poolfs_registry_fetch_failures_total", "Blob range reads that failed for good, by registry host.", []string{"registry"}, nil)
	dRetries      = prometheus.NewDesc("poolfs_registry_retries_total", "Registry requests repeated after a transient failure.", nil, nil)
	dVerify       = prometheus.NewDesc("poolfs_verify_failures_total", "Chunks whose bytes did not match their digest (each is refetched).", nil, nil)
	dCacheHits    = prometheus.NewDesc("poolfs_cache_hits_total", "Chunk cache hits, by tier.", []string{"tier"}, nil)
	dCacheMisses  = prometheus.NewDesc("poolfs_cache_misses_total", "Chunk cache misses, by tier.", []string{"tier"}, nil)
	dCacheEvicted = prometheus.NewDesc("poolfs_cache_evictions_total", "Chunk cache entries evicted to stay under the cap, by tier.", []string{"tier"}, nil)
	dCacheBytes   = prometheus.NewDesc("poolfs_cache_bytes", "Bytes held by the chunk cache, by tier.", []string{"tier"}, nil)
	dCacheMax     = prometheus.NewDesc("poolfs_cache_max_bytes", "Cap of the on-disk chunk cache (0: none).", nil, nil)
	dWholeFiles   = prometheus.NewDesc("poolfs_whole_files", "Whole-file copies the disk cache holds for FUSE passthrough.", nil, nil)
	dWholeBytes   = prometheus.NewDesc("poolfs_whole_file_bytes", "Bytes of the whole-file copies the disk cache holds (part of poolfs_cache_bytes{tier=\"disk\"}).", nil, nil)
	dWholeWritten = prometheus.NewDesc("poolfs_whole_files_written_total", "Whole-file copies written for FUSE passthrough.", nil, nil)
	dWholeFailed  = prometheus.NewDesc("poolfs_whole_file_failures_total", "Whole-file copies not written, by reason: mismatch (contents do not hash to the TOC's file digest) or error.", []string{"reason"}, nil)
	dLayers       = prometheus.NewDesc("poolfs_layers_served", "Layers the pool has opened.", nil, nil)
	dLayerFetched = prometheus.NewDesc("poolfs_layer_fetched_ratio", "Share of a layer's compressed blob fetched so far.", []string{"ref", "digest"}, nil)
	dLayerUses    = prometheus.NewDesc("poolfs_layer_uses", "Users of a layer (containers/storage's use count).", []string{"ref", "digest"}, nil)
)

type collector struct{ src Sources }

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{dRegRequests, dRegBytes, dRegFetches, dRegFailures, dRetries, dVerify,
		dCacheHits, dCacheMisses, dCacheEvicted, dCacheBytes, dCacheMax, dWholeFiles, dWholeBytes, dWholeWritten, dWholeFailed,
		dLayers, dLayerFetched, dLayerUses} {
		ch <- d
	}
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	counter := func(d *prometheus.Desc, v int64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	if r := c.src.Resolver; r != nil {
		for host, s := range r.RegistryStats() {
			counter(dRegRequests, s.Requests, host)
			counter(dRegBytes, s.BlobBytes, host)
			counter(dRegFetches, s.Fetches, host)
			counter(dRegFailures, s.Failures, host)
		}
		counter(dRetries, r.Stats().Retries)
	}
	counter(dVerify, layer.VerifyFailures())
	tier := func(name string, s cache.Stats) {
		counter(dCacheHits, s.Hits, name)
		counter(dCacheMisses, s.Misses, name)
		counter(dCacheEvicted, s.Evictions, name)
		gauge(dCacheBytes, float64(s.Bytes), name)
	}
	if c.src.Disk != nil {
		tier("disk", c.src.Disk.Stats())
		gauge(dCacheMax, float64(c.src.Disk.MaxBytes()))
		ws := c.src.Disk.WholeStats()
		gauge(dWholeFiles, float64(ws.Files))
		gauge(dWholeBytes, float64(ws.Bytes))
		counter(dWholeWritten, ws.Written)
	}
	if c.src.Whole != nil {
		st := c.src.Whole.Stats()
		counter(dWholeFailed, st.Mismatches, "mismatch")
		counter(dWholeFailed, st.Failures, "error")
	}
	if c.src.Memory != nil {
		tier("memory", c.src.Memory.Stats())
	}
	if c.src.Layers != nil {
		layers := c.src.Layers()
		gauge(dLayers, float64(len(layers)))
		for _, l := range layers {
			ratio := 0.0
			if l.Size > 0 {
				ratio = float64(l.FetchedBytes) / float64(l.Size)
			}
			gauge(dLayerFetched, ratio, l.Ref, l.Digest)
			gauge(dLayerUses, float64(l.Uses), l.Ref, l.Digest)
		}
	}
}
