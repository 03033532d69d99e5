package pool

import (
	"context"
	"errors"
	"sync"
	"time"

	digest "github.com/opencontainers/go-digest"
	"github.com/sirupsen/logrus"

	"github.com/poolfs/poolfs/layer"
	"github.com/poolfs/poolfs/meta"
	"github.com/poolfs/poolfs/profile"
)

// Startup profiles (see layer.Layer.Recorded and Replay): the pool keeps
// each layer's profile in meta.db (or in memory without one), refines it
// with every startup window the layer's view records, and replays the
// one it has when it opens the layer. A profile from elsewhere (an import,
// a profile.Source such as the registry) is a hint like any other: the
// view checks it against its TOC and ignores it with a warning if it does
// not match.

// profileLookupTimeout bounds a profile.Source lookup; the open never
// waits for it.
const profileLookupTimeout = 30 * time.Second

// WithProfileSource makes the pool ask src for a published profile of
// each layer it opens from the registry and has none for (nil: never).
func WithProfileSource(src profile.Source) Option {
	return func(p *Pool) { p.profileSource = src }
}

// ProfileInfo is what `poolfs status` shows of a layer's profile.
type ProfileInfo struct {
	Recorded  int    // chunks in the profile recorded for the layer (stored and this run's); 0: none
	Loaded    bool   // a profile was replayed when the layer was opened
	Source    string // where the replayed profile came from: "store" (meta.db, recorded or imported) or "source" (the profile.Source, e.g. the registry)
	Published bool   // the profile is known to be published (MarkPublished)
	Chunks    int    // chunks of the replayed profile
	Fetched   int    // of them, not cached when the replay started
	Used      int    // of them, needed by readers in this run's startup window
}

// profileState is a Layer's profile bookkeeping.
type profileState struct {
	mu        sync.Mutex
	stored    *profile.Profile // what the store held when the layer was opened, then the refined one
	early     *earlyRanges     // the stored profile's ranges fetched before the TOC was decoded; released after its replay
	settled   chan struct{}    // closed once the startup window's recording is handed to inBackground (see recordProfile)
	recording *layer.Layer     // the view whose startup window records; nil once its recording is merged into stored
	loaded    *profile.Profile // the replayed one
	source    string
	published bool
	stats     struct{ chunks, fetched int }
}

// Profile reports on the layer's startup profile.
func (l *Layer) Profile() ProfileInfo {
	s := &l.prof
	s.mu.Lock()
	info := ProfileInfo{Loaded: s.loaded != nil, Source: s.source, Published: s.published,
		Chunks: s.stats.chunks, Fetched: s.stats.fetched}
	stored := s.stored
	s.mu.Unlock()
	if merged := profile.Merge(stored, l.recorded()); merged != nil {
		info.Recorded = len(merged.Chunks)
	}
	l.tree.mu.Lock()
	v := l.tree.view // not loaded for a status: a tree out of memory used nothing lately
	l.tree.mu.Unlock()
	if v != nil {
		info.Used = v.ProfileUsed()
	}
	return info
}

// recorded is this run's recording so far, with the layer's blob digest;
// nil once it is merged into the stored profile.
func (l *Layer) recorded() *profile.Profile {
	l.prof.mu.Lock()
	v := l.prof.recording
	l.prof.mu.Unlock()
	if v == nil {
		return nil
	}
	r := v.Recorded()
	if r != nil {
		r.Blob = l.Desc.Digest
	}
	return r
}

// storedProfile returns the profile kept for blob, or nil.
func (p *Pool) storedProfile(blob digest.Digest, log *logrus.Entry) *profile.Profile {
	p.mu.Lock()
	pr := p.profiles[blob]
	p.mu.Unlock()
	if pr != nil || p.meta == nil {
		return pr
	}
	pr, err := p.meta.Profile(blob)
	switch {
	case errors.Is(err, meta.ErrNotFound):
		return nil
	case err != nil:
		log.WithError(err).Warn("stored profile is unusable; ignoring it")
		return nil
	}
	return pr
}

// keepProfile stores pr as the profile of its layer.
func (p *Pool) keepProfile(pr *profile.Profile) error {
	if p.meta != nil {
		return p.meta.PutProfile(pr)
	}
	if err := pr.Validate(); err != nil {
		return err
	}
	p.mu.Lock()
	p.profiles[pr.Blob] = pr
	p.mu.Unlock()
	return nil
}

// profilesFor is what a layer being opened has to go by: the profile
// stored for blob, or, without one, the channel on which a published one
// may come (see lookupProfile; nil: nothing to wait for).
func (p *Pool) profilesFor(ref string, blob, toc digest.Digest, log *logrus.Entry) (*profile.Profile, <-chan *profile.Profile) {
	if stored := p.storedProfile(blob, log); stored != nil {
		return stored, nil
	}
	return nil, p.lookupProfile(ref, blob, toc, log)
}

// expectProfiles is ExpectProfiles for the image of key's layer, unless a
// profile is kept for the layer (no lookup will be made).
func (p *Pool) expectProfiles(key LayerKey) {
	if p.storedProfile(key.Digest, p.log.WithFields(logrus.Fields{"ref": key.Ref, "digest": key.Digest})) == nil {
		p.ExpectProfiles(key.Ref)
	}
}

// ExpectProfiles lets the profile.Source start looking for the profiles
// of ref's layers before ref's manifest is in (profile.Expecter): a
// caller about to resolve ref and then Get its layers (the image store's
// add) calls it first, as Get does for a layer whose manifest it has to
// fetch.
func (p *Pool) ExpectProfiles(ref string) {
	if e, ok := p.profileSource.(profile.Expecter); ok {
		e.Expect(ref)
	}
}

// lookupProfile asks the profile.Source, in the background, for a profile
// of the layer; the channel gives its answer (nil if none) once. It
// returns nil when there is nothing to wait for.
func (p *Pool) lookupProfile(ref string, blob, toc digest.Digest, log *logrus.Entry) <-chan *profile.Profile {
	if p.profileSource == nil {
		return nil
	}
	ch := make(chan *profile.Profile, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), profileLookupTimeout)
		defer cancel()
		pr, err := p.profileSource.Lookup(ctx, ref, blob, toc)
		if err != nil {
			log.WithError(err).Warn("looking up a published profile failed; starting without one")
			pr = nil
		}
		if pr != nil && pr.Blob != blob {
			log.WithField("profile_blob", pr.Blob).Warn("published profile is for another layer; ignoring it")
			pr = nil
		}
		ch <- pr
	}()
	return ch
}

// planEarly plans the early ranges of the profile found gives (see
// pendingEarly) as soon as it comes, if it is for the TOC toc, and passes
// it on in the channel it returns.
func (p *Pool) planEarly(e *earlyRanges, found <-chan *profile.Profile, toc digest.Digest) <-chan *profile.Profile {
	out := make(chan *profile.Profile, 1)
	go func() {
		pr := <-found
		if pr != nil && pr.TOC == toc {
			e.plan(pr, p.cached)
		}
		out <- pr
	}()
	return out
}

// replay replays pr on l (source says where it came from) and logs what
// it did; a profile the layer refuses is logged and ignored. It reports
// whether the layer took the profile (its chunks may still have failed to
// arrive).
func (p *Pool) replay(ctx context.Context, l *Layer, pr *profile.Profile, source string, log *logrus.Entry) bool {
	log = log.WithFields(logrus.Fields{"profile_source": source, "profile_chunks": len(pr.Chunks)})
	if pr.Blob != l.Desc.Digest {
		log.WithField("profile_blob", pr.Blob).Warn("profile is for another layer; ignoring it")
		return false
	}
	start := time.Now()
	l.prof.mu.Lock()
	if l.prof.loaded != nil {
		l.prof.mu.Unlock()
		return false // one replay per layer: a later profile finds the chunks cached anyway
	}
	l.prof.loaded, l.prof.source = pr, source
	l.prof.mu.Unlock()
	// Held: the tree must not leave memory under the replay.
	v, err := l.Hold(ctx)
	if err != nil {
		l.prof.mu.Lock()
		l.prof.loaded, l.prof.source = nil, ""
		l.prof.mu.Unlock()
		log.WithError(err).Warn("cannot replay the startup profile: the layer's tree did not load")
		return false
	}
	defer l.Release()
	st, err := v.Replay(ctx, pr)
	l.prof.mu.Lock()
	l.prof.stats.chunks, l.prof.stats.fetched = st.Chunks, st.Fetched
	took := err == nil || st.Chunks > 0
	if !took {
		l.prof.loaded, l.prof.source = nil, ""
	}
	l.prof.mu.Unlock()
	f := log.WithFields(logrus.Fields{"chunks": st.Chunks, "fetched_chunks": st.Fetched, "bytes": st.Bytes, "requests": st.Requests,
		"elapsed": time.Since(start).Round(time.Millisecond)})
	switch {
	case !took:
		f.WithError(err).Warn("profile does not fit the layer; ignoring it")
	case err != nil:
		f.WithError(err).Warn("replaying startup profile failed")
	default:
		f.Info("replayed startup profile")
	}
	return took
}

// recordProfile waits for the end of the startup window of v, l's first
// view, and stores the recording merged into the profile stored before.
// Flush ends the windows still open and waits for the writes. The window
// closes long before the tree may leave memory (TreeLimits.Idle), and a
// view loaded again later records nothing that is kept.
func (p *Pool) recordProfile(l *Layer, v *layer.Layer, log *logrus.Entry) {
	l.prof.settled = make(chan struct{})
	l.prof.mu.Lock()
	l.prof.recording = v
	l.prof.mu.Unlock()
	go func() {
		defer close(l.prof.settled)
		<-v.RecordDone()
		rec := l.recorded()
		l.prof.mu.Lock()
		l.prof.recording = nil // merged below: the view need not stay for it
		if rec == nil {
			l.prof.mu.Unlock()
			return
		}
		merged := profile.Merge(l.prof.stored, rec)
		l.prof.stored = merged
		l.prof.mu.Unlock()
		p.inBackground(func() {
			if err := p.keepProfile(merged); err != nil {
				log.WithError(err).Warn("storing the recorded profile failed")
				return
			}
			log.WithFields(logrus.Fields{"chunks": len(merged.Chunks), "recorded": len(rec.Chunks), "bytes": merged.Bytes()}).
				Info("recorded startup profile")
		})
	}()
}

// Profiles returns the profiles the pool holds for the open layers of
// image ref (every open layer if ref is ""): the stored one refined with
// this run's recording so far.
func (p *Pool) Profiles(ref string) profile.Set {
	var s profile.Set
	for _, l := range p.Layers() {
		if ref != "" && l.Desc.Ref != ref {
			continue
		}
		l.prof.mu.Lock()
		stored := l.prof.stored
		l.prof.mu.Unlock()
		if pr := profile.Merge(stored, l.recorded()); pr != nil {
			s.Profiles = append(s.Profiles, pr)
		}
	}
	return s
}

// ImportProfiles stores the profiles of s (replacing those kept for the
// same layers), to be replayed when their layers are next opened, and
// returns how many it stored.
func (p *Pool) ImportProfiles(s profile.Set) (int, error) {
	n := 0
	for _, pr := range s.Profiles {
		if err := p.keepProfile(pr); err != nil {
			return n, err
		}
		n++
	}
	return n, nil
}

// MarkPublished notes that the profile of the open layer with blob digest
// blob is published (status shows it).
func (p *Pool) MarkPublished(blob digest.Digest) {
	if l := p.byBlobDigest(blob); l != nil {
		l.prof.mu.Lock()
		l.prof.published = true
		l.prof.mu.Unlock()
	}
}
