package main

import (
	"context"
	"flag"
	"fmt"
	"path/filepath"
	"sort"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"

	"github.com/poolfs/poolfs/cache"
	"github.com/poolfs/poolfs/config"
	"github.com/poolfs/poolfs/control"
	"github.com/poolfs/poolfs/imagestore"
	"github.com/poolfs/poolfs/layer"
	"github.com/poolfs/poolfs/metrics"
	"github.com/poolfs/poolfs/pool"
	"github.com/poolfs/poolfs/profile"
	"github.com/poolfs/poolfs/profilestore"
	"github.com/poolfs/poolfs/remote"
	"github.com/poolfs/poolfs/remote/keychain"
	"github.com/poolfs/poolfs/remote/regconf"
)

// Defaults of the settings below.
const (
	defaultMetricsAddress = "127.0.0.1:9780"
	// The default cap is a share of the cache's filesystem, but never more
	// than defaultCacheCeiling: a 10% default on a 4 TB disk would surprise.
	defaultCachePercent = 10
	defaultCacheCeiling = 20 << 30
)

// daemonFlags are the serve settings beyond the original flags in
// serve.go: the config file, registries.conf, the cache cap, the control
// socket and metrics.
type daemonFlags struct {
	configPath     string
	cacheMaxSize   config.Size
	registriesConf string
	metricsAddr    string
	controlSocket  string

	defaultCap bool // the cap is the default, not one the user chose
	metrics    *metrics.Metrics
}

func addDaemonFlags(fl *flag.FlagSet) *daemonFlags {
	d := &daemonFlags{cacheMaxSize: config.Size{Percent: defaultCachePercent}}
	fl.StringVar(&d.configPath, "config", config.DefaultPath, "configuration `FILE` (TOML); flags override it; a missing default file is fine")
	fl.Var(&d.cacheMaxSize, "cache-max-size", "cap of the on-disk cache: `SIZE` like 20GiB, or a share of its filesystem like 10% (the default share is held to at most 20GiB; 0: no cap)")
	fl.StringVar(&d.registriesConf, "registries-conf", "", "containers-registries.conf `FILE` for mirrors, rewrites, insecure and blocked registries (default: $CONTAINERS_REGISTRIES_CONF or "+regconf.DefaultFile+" and its .d directory)")
	fl.StringVar(&d.metricsAddr, "metrics-address", defaultMetricsAddress, "serve Prometheus /metrics on `ADDR` (host:port or unix:/path; empty: off)")
	fl.StringVar(&d.controlSocket, "control-socket", control.DefaultSocket, "unix socket `PATH` for poolfs status, gc and auth-helper (root only)")
	return d
}

// applyConfig reads the configuration file and gives every flag the
// command line did not set the file's value. ROOT comes from the file's
// root if no argument names it.
func (d *daemonFlags) applyConfig(fl *flag.FlagSet, pos []string) ([]string, error) {
	set := map[string]bool{}
	fl.Visit(func(f *flag.Flag) { set[f.Name] = true })
	file, err := config.Load(d.configPath, set["config"])
	if err != nil {
		return nil, err
	}
	for _, s := range file.Settings() {
		if s.Flag == "" {
			if len(pos) == 0 {
				pos = append(pos, s.Values[0])
			}
			continue
		}
		if set[s.Flag] {
			continue // the command line wins
		}
		if fl.Lookup(s.Flag) == nil {
			return nil, fmt.Errorf("config %s: %s: not supported by this poolfs", d.configPath, s.Key)
		}
		for _, v := range s.Values {
			if err := fl.Set(s.Flag, v); err != nil {
				return nil, fmt.Errorf("config %s: %s: %w", d.configPath, s.Key, err)
			}
		}
	}
	if err := config.CheckListenAddress(d.metricsAddr); err != nil {
		return nil, fmt.Errorf("--metrics-address: %w", err)
	}
	d.defaultCap = !set["cache-max-size"] && !fileSets(file, "cache.max_size")
	return pos, nil
}

func fileSets(f *config.File, key string) bool {
	for _, s := range f.Settings() {
		if s.Key == key {
			return true
		}
	}
	return false
}

// remoteSetup is what the resolver gets from these settings.
type remoteSetup struct {
	registries *regconf.Config
	keychain   *keychain.Session
	onFetch    func(remote.FetchEvent)
}

func (d *daemonFlags) remote() (remoteSetup, error) {
	regs, err := regconf.Load(d.registriesConf)
	if err != nil {
		return remoteSetup{}, err
	}
	d.newMetrics()
	return remoteSetup{
		registries: regs,
		keychain:   keychain.NewSession(keychain.New()),
		onFetch:    d.onFetch(),
	}, nil
}

// capCache sets the disk cache's cap from --cache-max-size, resolving a
// percentage against the filesystem that holds dir.
func (d *daemonFlags) capCache(disk *cache.Disk, dir string, log *logrus.Entry) error {
	limit := d.cacheMaxSize.Bytes
	if d.cacheMaxSize.Percent > 0 {
		var st unix.Statfs_t
		if err := unix.Statfs(dir, &st); err != nil {
			return fmt.Errorf("sizing the cache cap: statfs %s: %w", dir, err)
		}
		limit = d.cacheMaxSize.Resolve(int64(st.Blocks) * int64(st.Bsize))
		if d.defaultCap {
			limit = min(limit, defaultCacheCeiling)
		}
	}
	disk.SetMaxBytes(limit)
	log.WithFields(logrus.Fields{"dir": dir, "max_bytes": limit, "bytes": disk.Size()}).Info("disk cache ready")
	return nil
}

// daemonState is what the control socket and metrics look at.
type daemonState struct {
	mnt       string
	trees     string // "": --in-place-trees
	cacheDir  string
	pool      *pool.Pool
	disk      *cache.Disk
	mem       *cache.Memory
	chunks    *cache.Tiered     // mem in front of disk, disk writes deferred
	whole     *layer.WholeFiles // nil: --passthrough=false
	resolver  *remote.Resolver
	keychain  *keychain.Session
	published *profilestore.Registry // profiles in registries
	images    *imagestore.Daemon
}

// Status implements control.Backend.
func (s *daemonState) Status() control.Status {
	st := control.Status{Mountpoint: s.mnt, TreesMountpoint: s.trees, Layers: []control.LayerStatus{}, Cache: s.cacheStatus()}
	for _, l := range s.pool.Layers() {
		ls := control.LayerStatus{
			Ref:        l.Desc.Ref,
			Digest:     l.Desc.Digest.String(),
			TOCDigest:  l.Desc.TOCDigest.String(),
			Size:       l.Desc.Size,
			Uses:       l.Uses(),
			LastAccess: l.LastAccess().UTC(),
		}
		ts := l.Tree()
		ls.TreeLoaded, ls.TreeEntries, ls.TreeBytes, ls.TreeLoads = ts.Loaded, ts.Entries, ts.Bytes, ts.Loads
		if ts.Loaded {
			st.Trees.Loaded++
		}
		if f, ok := l.Blob.(interface{ FetchedBytes() int64 }); ok {
			ls.FetchedBytes = f.FetchedBytes()
		}
		if ls.Size > 0 {
			ls.Fetched = float64(ls.FetchedBytes) / float64(ls.Size)
		}
		if pi := l.Profile(); pi.Recorded > 0 || pi.Loaded || pi.Published {
			ls.Profile = &control.ProfileStatus{Recorded: pi.Recorded, Loaded: pi.Loaded, Source: pi.Source,
				Published: pi.Published, Chunks: pi.Chunks, Fetched: pi.Fetched, Used: pi.Used}
		}
		st.Layers = append(st.Layers, ls)
	}
	st.Trees.Bytes, st.Trees.MaxBytes = s.pool.TreeBytes()
	st.Trees.MaxEntries = s.pool.MaxEntries()
	sort.Slice(st.Layers, func(i, j int) bool {
		if st.Layers[i].Ref != st.Layers[j].Ref {
			return st.Layers[i].Ref < st.Layers[j].Ref
		}
		return st.Layers[i].Digest < st.Layers[j].Digest
	})
	return st
}

// Profiles implements control.ProfileBackend.
func (s *daemonState) Profiles(ref string) profile.Set { return s.pool.Profiles(ref) }

// ImportProfiles implements control.ProfileBackend.
func (s *daemonState) ImportProfiles(set profile.Set) (int, error) { return s.pool.ImportProfiles(set) }

// PushProfiles implements control.ProfileBackend: the profiles held for
// ref's layers (what `poolfs profile export` writes) go to ref's registry
// as an artifact of the image manifest the daemon resolved ref to, with
// the daemon's credentials.
func (s *daemonState) PushProfiles(ctx context.Context, ref string) (control.PushResult, error) {
	set := s.pool.Profiles(ref)
	if len(set.Profiles) == 0 {
		return control.PushResult{}, fmt.Errorf("%s (the daemon must have served the image under that reference since it started): %w", ref, control.ErrNoProfiles)
	}
	pushed, err := s.published.Push(ctx, ref, set)
	if err != nil {
		return control.PushResult{}, err
	}
	res := control.PushResult{Repository: pushed.Repository, Subject: pushed.Subject.String(), Digest: pushed.Digest.String()}
	for _, pr := range set.Profiles {
		s.pool.MarkPublished(pr.Blob)
		res.Layers = append(res.Layers, pr.Blob.String())
	}
	return res, nil
}

func (s *daemonState) cacheStatus() control.CacheStatus {
	ds := s.disk.Stats()
	cs := control.CacheStatus{
		Dir:       s.cacheDir,
		Bytes:     ds.Bytes,
		MaxBytes:  s.disk.MaxBytes(),
		Hits:      ds.Hits,
		Misses:    ds.Misses,
		Evictions: ds.Evictions,
	}
	if s.mem != nil {
		cs.MemoryBytes = s.mem.Stats().Bytes
	}
	if s.chunks != nil {
		cs.PendingBytes = s.chunks.PendingBytes()
	}
	ws := s.disk.WholeStats()
	cs.WholeFiles, cs.WholeBytes, cs.WholeWritten = ws.Files, ws.Bytes, ws.Written
	return cs
}

// GC implements control.Backend.
func (s *daemonState) GC(keep int64) control.GCResult {
	if s.chunks != nil {
		// Chunks still queued for the disk would land after the trim.
		s.chunks.Flush()
	}
	freed := s.disk.TrimTo(keep)
	return control.GCResult{FreedBytes: freed, Cache: s.cacheStatus()}
}

// SetCredentials implements control.Backend: the credentials are kept for
// ref's registry, and that registry's tokens are dropped so the next
// request authenticates with them.
func (s *daemonState) SetCredentials(ref string, c control.Credentials) (string, error) {
	reg, err := s.keychain.Set(ref, authn.AuthConfig{Username: c.Username, Password: c.Password, IdentityToken: c.IdentityToken})
	if err != nil {
		return "", err
	}
	s.resolver.ForgetRegistry(reg)
	return reg, nil
}

// startServices starts the control socket and the metrics listener and
// tells systemd the daemon is ready. The returned stop undoes them.
func (d *daemonFlags) startServices(s *daemonState, log *logrus.Entry) (stop func(), err error) {
	var stops []func()
	stop = func() {
		for i := len(stops) - 1; i >= 0; i-- {
			stops[i]()
		}
	}
	if d.controlSocket != "" {
		path, err := filepath.Abs(d.controlSocket)
		if err != nil {
			return stop, fmt.Errorf("control socket %s: %w", d.controlSocket, err)
		}
		srv, err := control.Listen(path, s, log.WithField("component", "control"))
		if err != nil {
			return stop, err
		}
		stops = append(stops, func() { _ = srv.Close() })
		log.WithField("path", path).Info("control socket listening")
	}
	if d.metrics != nil {
		closeMetrics, addr, err := serveMetrics(d.metricsAddr, s, d.metrics, log.WithField("component", "metrics"))
		if err != nil {
			stop()
			return func() {}, err
		}
		stops = append(stops, closeMetrics)
		log.WithField("address", addr).Info("metrics listening")
	}
	stops = append(stops, func() { _ = sdNotify("STOPPING=1") })
	if err := sdNotify("READY=1\nSTATUS=serving " + s.mnt); err != nil {
		// Not fatal: without systemd waiting on it, nobody misses it.
		log.WithError(err).Warn("telling systemd we are ready failed")
	}
	return stop, nil
}
