package pool

import (
	"context"
	"time"

	"github.com/sirupsen/logrus"
)

// prefetchTimeout bounds the background fetching of one layer.
const prefetchTimeout = 30 * time.Minute

// PrefetchOptions say what the pool fetches on its own once a layer is
// opened. The zero value is the default: prioritized files only.
type PrefetchOptions struct {
	// NoPrioritized turns off fetching the files before the layer's
	// .prefetch.landmark right after the layer is opened.
	NoPrioritized bool
	// Background fetches the rest of the layer afterwards, one range
	// request at a time, pausing while on-demand reads are in progress.
	Background bool
	// Readahead is how many compressed bytes following a read that had to
	// go to the registry are fetched along with it (see
	// layer.Layer.SetReadahead); 0: none.
	Readahead int64
}

// SetPrefetch sets what is fetched for layers opened from now on.
func (p *Pool) SetPrefetch(o PrefetchOptions) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.prefetch = o
}

// startPrefetch starts the background fetching of a newly opened layer,
// detached from the request that opened it. Chunks go through the layer's
// cache and singleflight, so nothing is fetched twice and readers waiting
// for a chunk the prefetch is fetching simply wait for it. Called with
// p.mu held.
func (p *Pool) startPrefetch(l *Layer, log *logrus.Entry) {
	o := p.prefetch
	l.View.SetReadahead(o.Readahead)
	if o.NoPrioritized && !o.Background {
		return
	}
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), prefetchTimeout)
		defer cancel()
		if !o.NoPrioritized && len(l.View.Prioritized()) > 0 {
			start := time.Now()
			st, err := l.View.Prefetch(ctx)
			f := log.WithFields(logrus.Fields{"files": st.Files, "chunks": st.Chunks, "bytes": st.Bytes,
				"elapsed": time.Since(start).Round(time.Millisecond)})
			if err != nil {
				f.WithError(err).Warn("prefetch of prioritized files failed")
			} else {
				f.Info("prefetched prioritized files")
			}
		}
		if o.Background {
			start := time.Now()
			st, err := l.View.FetchAll(ctx)
			f := log.WithFields(logrus.Fields{"files": st.Files, "chunks": st.Chunks, "bytes": st.Bytes,
				"elapsed": time.Since(start).Round(time.Millisecond)})
			if err != nil {
				f.WithError(err).Warn("background fetch of the layer failed")
			} else {
				f.Info("fetched the whole layer in the background")
			}
		}
	}()
}
