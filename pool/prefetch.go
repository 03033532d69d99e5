package pool

import (
	"context"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/poolfs/poolfs/layer"
	"github.com/poolfs/poolfs/profile"
	"github.com/poolfs/poolfs/remote"
)

// prefetchTimeout bounds the background fetching of one layer.
const prefetchTimeout = 30 * time.Minute

// DefaultEarly is the daemon's PrefetchOptions.Early (--early-prefetch-mb):
// more than the prioritized files of most optimized images, little memory
// for the moment a layer opens.
const DefaultEarly = 16 << 20

// PrefetchOptions say what the pool fetches on its own once a layer is
// opened. The zero value is the default: prioritized files only.
type PrefetchOptions struct {
	// NoPrioritized turns off fetching the files before the layer's
	// .prefetch.landmark right after the layer is opened (for a layer
	// with none, the engine's files: see engineFiles).
	NoPrioritized bool
	// Background fetches the rest of the layer afterwards, one range
	// request at a time, pausing while on-demand reads are in progress.
	Background bool
	// Readahead is how many compressed bytes following a read that had to
	// go to the registry are fetched along with it (see
	// layer.WithReadahead); 0: none.
	Readahead int64
	// Early is how many bytes at the start of an eStargz layer's blob are
	// streamed while its TOC is on the way (see remote.Head), so the
	// prioritized files, which builders put there, arrive without waiting
	// for the TOC and one more round trip. The stream stops as soon as it
	// is clear how much of it the prefetch wants: after its 4 KiB probe for
	// a blob that starts with .no.prefetch.landmark, at the end of the
	// prioritized files otherwise. 0, or NoPrioritized: no stream.
	Early int64
	// NoELF turns off fetching an ELF file's interpreter and libraries
	// when a read first fetches the file (see layer.WithELFDeps).
	NoELF bool
	// ReadaheadSameDir, in a layer with no prioritized files, replaces
	// Readahead and keeps read-ahead within the read's directory (see
	// layer.WithReadaheadSameDir); 0: such layers read ahead as others do.
	ReadaheadSameDir int64
}

// engineFiles are read from a container's image before its program runs,
// whatever the program: podman looks the user and groups up in the
// image's /etc/passwd and /etc/group. A layer with no prioritized files
// and no profile fetches them as soon as it opens (--prefetch), so those
// reads do not each wait for a round trip after the layer is mounted.
var engineFiles = []string{"/etc/passwd", "/etc/group"}

// WithPrefetch sets what is fetched for the layers the pool opens
// (default: the zero PrefetchOptions).
func WithPrefetch(o PrefetchOptions) Option { return func(p *Pool) { p.prefetch = o } }

// startPrefetch starts the background fetching of a newly opened layer,
// detached from the request that opened it. Chunks go through the layer's
// cache and singleflight, so nothing is fetched twice and readers waiting
// for a chunk the prefetch is fetching simply wait for it. Called with
// p.mu held.
//
// head, if not nil, is the stream of the blob's start that the layer's view
// reads through; it is released once the prefetch no longer needs it.
//
// A profile stored for the layer is replayed instead of the prefetch of
// prioritized files (it says what this image's start reads, which the
// builder's prioritized files only guess); one that found gives later is
// replayed when it comes, beside whatever else runs.
func (p *Pool) startPrefetch(l *Layer, head *remote.Head, found <-chan *profile.Profile, log *logrus.Entry) {
	o := p.prefetch
	stored := l.prof.stored
	l.tree.mu.Lock()
	v := l.tree.view
	if !o.NoPrioritized || o.Background || stored != nil {
		l.tree.pins++ // the fetching holds the tree until done
	}
	l.tree.mu.Unlock()
	// The early ranges are the stored profile's, or the found one's
	// (stored is nil then): released after the replay that reads them.
	if found != nil {
		go func() {
			defer func() {
				if stored == nil {
					l.prof.early.Release()
				}
			}()
			if pr := <-found; pr != nil {
				l.prof.mu.Lock()
				l.prof.published = true // it came from where it is published
				l.prof.mu.Unlock()
				ctx, cancel := context.WithTimeout(context.Background(), prefetchTimeout)
				defer cancel()
				p.replay(ctx, l, pr, "source", log)
			}
		}()
	}
	if o.NoPrioritized && !o.Background && stored == nil {
		if found == nil {
			l.prof.early.Release()
		}
		head.Release()
		return
	}
	go func() {
		defer l.Release()
		ctx, cancel := context.WithTimeout(context.Background(), prefetchTimeout)
		defer cancel()
		replayed := stored != nil && p.replay(ctx, l, stored, "store", log)
		if stored != nil {
			l.prof.early.Release()
		}
		if !replayed && !o.NoPrioritized && len(v.Prioritized()) > 0 {
			start := time.Now()
			st, err := v.Prefetch(ctx)
			if head != nil {
				n, _ := head.Streamed()
				log = log.WithField("early_bytes", n)
			}
			f := log.WithFields(logrus.Fields{"files": st.Files, "chunks": st.Chunks, "bytes": st.Bytes,
				"elapsed": time.Since(start).Round(time.Millisecond)})
			if err != nil {
				f.WithError(err).Warn("prefetch of prioritized files failed")
			} else {
				f.Info("prefetched prioritized files")
			}
		}
		if !replayed && !o.NoPrioritized && len(v.Prioritized()) == 0 {
			// Nothing says what this start reads, but the engine reads
			// these before the program runs, whatever it is, and a
			// dynamically linked program maps the loader and libc
			// (layer.FetchRuntime) before anything else.
			done := make(chan struct{})
			go func() {
				defer close(done)
				st, err := v.FetchRuntime(ctx)
				logStartFetch(log, "the runtime's loader and libc", st, err)
			}()
			st, err := v.FetchFiles(ctx, engineFiles)
			logStartFetch(log, "the engine's files", st, err)
			<-done
		}
		head.Release()
		if o.Background {
			start := time.Now()
			st, err := v.FetchAll(ctx)
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

// startHead starts streaming the start of blob for the prefetch (see
// PrefetchOptions.Early) and returns the Blob the layer's view should read
// through: the stream, or blob itself when there is none. Only layers whose
// manifest or path names a TOC digest get one: those are in a lazily
// served format, so the bytes are not spent on a layer podman will pull
// anyway; the layer package's probe (layer.SaysNoPrefetch) ends the stream
// at once for a blob with nothing prioritized, zstd:chunked ones included.
func (p *Pool) startHead(blob remote.Blob, tocDigest string) (remote.Blob, *remote.Head) {
	o := p.prefetch
	hs, ok := blob.(remote.HeadStreamer)
	if !ok || o.NoPrioritized || o.Early <= 0 || tocDigest == "" {
		return blob, nil
	}
	n := min(o.Early, layer.TailStart(blob.Size()))
	if n < minEarly {
		// Most of the layer comes with its TOC anyway.
		return blob, nil
	}
	// The first entry tells an unoptimized blob at once: its stream ends
	// with the probe.
	head := hs.StreamHead(n, func(first []byte) bool { return !layer.SaysNoPrefetch(first) })
	return head, head
}

// minEarly is the smallest stream worth starting: the prefetch fetches a
// few hundred KiB in one round trip after the TOC anyway, without a probe
// request beside it.
const minEarly = 256 << 10

// logStartFetch logs what one of a layer's start fetches, which nothing
// in the layer asked for, got.
func logStartFetch(log *logrus.Entry, what string, st layer.FetchStats, err error) {
	f := log.WithFields(logrus.Fields{"files": st.Files, "bytes": st.Bytes})
	if err != nil {
		f.WithError(err).Debug("prefetch of " + what + " failed")
	} else if st.Files > 0 {
		f.Debug("prefetched " + what)
	}
}
