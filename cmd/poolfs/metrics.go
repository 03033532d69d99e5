package main

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/sirupsen/logrus"

	layerfs "github.com/poolfs/poolfs/fs"
	"github.com/poolfs/poolfs/metrics"
	"github.com/poolfs/poolfs/remote"
)

// newMetrics creates the metrics registry if --metrics-address is set, so
// that the resolver and the mount can report into it from the start.
func (d *daemonFlags) newMetrics() {
	if d.metricsAddr != "" {
		d.metrics = metrics.New()
	}
}

// onFetch is the resolver's fetch hook (nil without metrics).
func (d *daemonFlags) onFetch() func(remote.FetchEvent) {
	if d.metrics == nil {
		return nil
	}
	return d.metrics.ObserveFetch
}

// fuseObserver is the mount's operation hook (nil without metrics).
func (d *daemonFlags) fuseObserver() layerfs.OpObserver {
	if d.metrics == nil {
		return nil
	}
	return d.metrics.ObserveFUSE
}

// serveMetrics serves /metrics on addr ("host:port" or "unix:/path").
func serveMetrics(addr string, s *daemonState, m *metrics.Metrics, log *logrus.Entry) (stop func(), bound string, err error) {
	m.Watch(metrics.Sources{
		Resolver: s.resolver,
		Disk:     s.disk,
		Memory:   s.mem,
		Whole:    s.whole,
		Layers: func() []metrics.Layer {
			var out []metrics.Layer
			for _, l := range s.Status().Layers {
				out = append(out, metrics.Layer{Ref: l.Ref, Digest: l.Digest, Size: l.Size, FetchedBytes: l.FetchedBytes, Uses: l.Uses})
			}
			return out
		},
	})
	var ln net.Listener
	if path, ok := strings.CutPrefix(addr, "unix:"); ok {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			return nil, "", fmt.Errorf("metrics socket directory: %w", err)
		}
		_ = os.Remove(path) // a socket left by a killed daemon
		ln, err = net.Listen("unix", path)
	} else {
		ln, err = net.Listen("tcp", addr)
	}
	if err != nil {
		return nil, "", fmt.Errorf("metrics: listening on %s: %w (set --metrics-address, empty to turn metrics off)", addr, err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", m.Handler())
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.WithError(err).Error("metrics server stopped")
		}
	}()
	stop = func() {
		_ = srv.Close()
		<-done
		if path, ok := strings.CutPrefix(addr, "unix:"); ok {
			_ = os.Remove(path)
		}
	}
	return stop, ln.Addr().String(), nil
}
