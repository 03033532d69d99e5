package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/user"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/poolfs/poolfs/alsfs"
	"github.com/poolfs/poolfs/alspath"
	"github.com/poolfs/poolfs/cache"
	"github.com/poolfs/poolfs/imagestore"
	"github.com/poolfs/poolfs/internal/heapwarm"
	"github.com/poolfs/poolfs/layer"
	"github.com/poolfs/poolfs/meta"
	"github.com/poolfs/poolfs/pool"
	"github.com/poolfs/poolfs/profilestore"
	"github.com/poolfs/poolfs/remote"
)

func serve(ctx context.Context, args []string) error {
	fl := flag.NewFlagSet("serve", flag.ContinueOnError)
	var insecure, pinned listFlag
	fl.Var(&pinned, "pin-image", "image `REFERENCE` kept in the image store at ROOT/"+imagestore.DirName+" (repeatable): added at startup if missing, its tag followed by `poolfs image sync`")
	fl.Var(&insecure, "insecure-registry", "registry `HOST[:PORT]` reached over plain HTTP (repeatable; loopback registries always are)")
	cacheDir := fl.String("cache-dir", "/var/lib/poolfs/cache", "`DIR` for the on-disk chunk cache")
	memCache := fl.Int64("memory-cache-mb", 512, "`MiB` of verified chunks kept in memory")
	logLevel := fl.String("log-level", "info", "log `LEVEL`: debug, info, warn, error")
	logFormat := fl.String("log-format", "text", "log `FORMAT`: text or json")
	prefetch := fl.Bool("prefetch", true, "fetch the files an eStargz layer prioritizes (before .prefetch.landmark) as soon as it is opened; for a layer with none, its /etc/passwd and /etc/group, which podman reads before the program starts")
	backgroundFetch := fl.Bool("background-fetch", false, "after the prefetch, fetch the rest of each layer in the background, yielding to reads")
	early := fl.Int64("early-prefetch-mb", pool.DefaultEarly>>20, "`MiB` at most of each eStargz layer's start streamed while its TOC is fetched, where builders put the prioritized files; stops where they end, or after a 4 KiB probe for a layer with none (0: start the prefetch once the TOC is in)")
	readahead := fl.Int64("readahead-kb", 512, "`KiB` of the layer that follow a read that had to go to the registry, fetched along with it in the background (0: none): files read one after another usually sit next to each other in a layer")
	readaheadDir := fl.Int64("readahead-same-dir-kb", 128, "in a layer with no prioritized files, `KiB` of read-ahead instead of --readahead-kb, kept within the read's directory: without a builder's order the files a program reads next share its directory far more often than its blob neighbours (0: as in other layers)")
	elfDeps := fl.Bool("elf-prefetch", true, "when a read fetches the start of an ELF executable or library, also fetch the interpreter, /etc/ld.so.cache and the libraries it needs (found in the same layer), in parallel, before the loader asks for them one by one")
	passthrough := fl.Bool("passthrough", true, "keep a whole-file copy of each fully cached file of 1 MiB or more in the cache dir and let the kernel read it directly (FUSE passthrough), without a request to the daemon per read")
	writeBehind := fl.Duration("disk-write-behind", 250*time.Millisecond, "write fetched chunks to the disk cache once fetching pauses for `DURATION` (until then memory serves them), so a starting container does not share its CPUs with those writes; 0: write each chunk at once, in the read that fetched it")
	warmHeap := fl.Int("warm-heap-mb", 64, "`MiB` of memory to fault in at startup and keep for the first lookups (0: none): a fresh process pays a page fault for every page it allocates, which on virtual machines is a large part of a cold lookup")
	inPlaceTrees := fl.Bool("in-place-trees", false, "serve each layer's tree inside ROOT/.pool, as diff (rootfs.<ID>) itself, rather than on a second, read-only mount at ROOT/.trees that diff links to; on the read-only mount a stat of a directory already listed never goes to the daemon")
	metaMaxAge := fl.Duration("meta-max-age", 30*24*time.Hour, "forget the stored record (descriptor and TOC, in the cache dir's meta.db) of a layer neither open nor used for `DURATION`; checked at startup and hourly; 0: keep records forever")
	profileLookup := fl.Bool("profile-lookup", true, "when opening a layer with no startup profile, look in its registry for one published for the image (`poolfs profile push`): its index tag beside the manifest, then the referrers; two small requests per image when nothing is published, never waited for")
	treeEntries := fl.Int("tree-max-entries", pool.DefaultTreeLimits.MaxEntries, "refuse (ENOENT: podman pulls it) a layer whose TOC has more than `N` entries; the largest real layers have a few hundred thousand (0: no limit)")
	treeMemory := fl.Int64("tree-memory-mb", pool.DefaultTreeLimits.MaxBytes>>20, "`MiB` that the trees of all layers in memory may take together, counting one being built; idle trees leave memory to make room, and a layer that does not fit is refused (0: no limit)")
	treeIdle := fl.Duration("tree-idle", pool.DefaultTreeLimits.Idle, "a layer's tree that nothing uses (no use count, nothing looked up or open below it) leaves memory after `DURATION`, and comes back from meta.db on the next lookup (0: never)")
	group := fl.String("group", "", "let the members of group `NAME|GID` reach the store (ROOT 0750 and the mounts' own directories group-readable, layer files as their modes say) and make the daemon fetch on their behalf, for rootless podman users who share it; default: root only (see docs/security.md)")
	tagRecheck := fl.Duration("tag-recheck", pool.DefaultTagRecheck, "trust what a tag's manifest lists for `DURATION`, then fetch it again before serving another layer under the tag (a layer is served under a reference only if its manifest lists it; digest references are never rechecked)")
	fetchTimeout := fl.Duration("fetch-timeout", 20*time.Second, "`DURATION` one read of uncached data may wait for the registry (retries included) before failing with EIO")
	dflags := addDaemonFlags(fl) // config file, registries.conf, cache cap, control socket, metrics (daemon.go)
	fl.Usage = func() {
		fmt.Fprintf(fl.Output(), "Usage: poolfs serve [flags] ROOT\n\nMounts the additional layer store at ROOT/%s and the layers' trees at ROOT/%s.\n\nFlags:\n", alspath.MountDir, alspath.TreesDir)
		fl.PrintDefaults()
	}
	pos, err := parseInterspersed(fl, args)
	if err != nil {
		return err
	}
	if pos, err = dflags.applyConfig(fl, pos); err != nil {
		return err
	}
	if len(pos) != 1 {
		fl.Usage()
		return fmt.Errorf("want exactly one ROOT, got %d arguments", len(pos))
	}
	log, err := newLogger(*logLevel, *logFormat)
	if err != nil {
		return err
	}

	root, err := filepath.Abs(pos[0])
	if err != nil {
		return fmt.Errorf("resolving ROOT %s: %w", pos[0], err)
	}
	// Warmed while the caches open; done before the first lookup can come.
	warmed := make(chan struct{})
	go func() {
		defer close(warmed)
		heapwarm.Warm(*warmHeap)
	}()

	disk, err := cache.NewDisk(filepath.Join(*cacheDir, "chunks"), log.WithField("component", "cache"))
	if err != nil {
		return fmt.Errorf("opening cache in %s: %w", *cacheDir, err)
	}
	if err := dflags.capCache(disk, *cacheDir, log.WithField("component", "cache")); err != nil {
		return err
	}
	rs, err := dflags.remote()
	if err != nil {
		return err
	}
	mem := cache.NewMemory(*memCache << 20)
	// Disk writes wait until chunks stop coming (a starting container is
	// done with its burst), so they do not take CPU from it; until then
	// the queue serves them. Close, when serve returns, writes the rest.
	chunks := cache.NewTiered(mem, disk)
	if *writeBehind > 0 {
		chunks = cache.NewTieredWriteBehind(mem, disk, cache.WriteBehind{Settle: *writeBehind, MaxPending: 128 << 20})
	}
	defer chunks.Close()
	resolver := remote.New(remote.Options{Insecure: insecure, FetchTimeout: *fetchTimeout, Log: log.WithField("component", "remote"),
		Registries: rs.registries, Keychain: rs.keychain, OnFetch: rs.onFetch})
	access, err := accessFor(*group)
	if err != nil {
		return err
	}
	if *tagRecheck <= 0 {
		return fmt.Errorf("--tag-recheck: %s is not a positive duration", *tagRecheck)
	}
	limits := pool.TreeLimits{MaxEntries: *treeEntries, MaxBytes: *treeMemory << 20, Idle: *treeIdle}
	// The image store's layers keep their trees in memory (counted in
	// --tree-memory-mb): a tree that left comes back on podman's lookup,
	// but after a read of meta.db the start of a container from the store
	// would pay.
	// The pool and its mounts log as one component: a lookup's refusal
	// and the opening of the layer it named read as one story.
	poolLog := log.WithField("component", "pool")
	// ROOT first, with its access mode: the store is inside it.
	if err := alsfs.PrepareRoot(root, access, poolLog); err != nil {
		return err
	}
	store, err := imagestore.OpenStore(root, log.WithField("component", "imagestore"))
	if err != nil {
		return err
	}
	limits.Keep = func(l *pool.Layer) bool { return store.Keeps(l.Desc.Digest) }
	if os.Getenv("GOMEMLIMIT") == "" && limits.MaxBytes > 0 && *memCache > 0 {
		// A soft limit makes the collector work harder before the heap
		// passes what the caches and trees may take, rather than let it
		// grow to twice the live heap while a big tree is built.
		debug.SetMemoryLimit(*memCache<<20 + limits.MaxBytes + memorySlack)
	}
	// Profiles are pushed through the store whether or not the daemon
	// looks them up.
	published := profilestore.New(resolver, profilestore.Options{Log: log.WithField("component", "profiles")})
	// Resolved layers (descriptor and TOC) persist next to the chunks, so
	// a restart serves known layers without asking the registry. NewDisk
	// has created the cache directory.
	metaStore, err := meta.Open(filepath.Join(*cacheDir, "meta.db"))
	if err != nil {
		return err
	}
	defer metaStore.Close()
	popts := []pool.Option{pool.WithTagRecheck(*tagRecheck), pool.WithTreeLimits(limits),
		pool.WithPrefetch(pool.PrefetchOptions{NoPrioritized: !*prefetch, Background: *backgroundFetch, Readahead: *readahead << 10, Early: *early << 20, NoELF: !*elfDeps, ReadaheadSameDir: *readaheadDir << 10}),
		pool.WithMeta(metaStore)}
	if *profileLookup {
		popts = append(popts, pool.WithProfileSource(published))
	}
	var whole *layer.WholeFiles
	if *passthrough {
		// Copies live in the disk cache (<cache-dir>/chunks/whole), under
		// its cap. Copies stop when ctx ends (a signal); Close, when serve
		// returns after the unmount, also covers an unmount from outside
		// and waits until the copy in progress has removed its temp file.
		whole = layer.NewWholeFiles(ctx, disk, layer.WholeOptions{Log: log.WithField("component", "wholefiles")})
		defer whole.Close()
		popts = append(popts, pool.WithWholeFiles(whole))
	}
	p := pool.New(resolver, chunks, poolLog, popts...)
	defer p.Close()
	defer p.Flush() // before the store closes
	if *metaMaxAge > 0 {
		stopPruning := pruneMetaEvery(ctx, time.Hour, p, *metaMaxAge, log.WithField("component", "meta"))
		defer stopPruning() // before the store closes
	}

	<-warmed
	mounts, err := alsfs.Mount(root, p, alsfs.Options{Access: access, InPlaceTrees: *inPlaceTrees, Observer: dflags.fuseObserver(), Log: poolLog})
	if err != nil {
		return err
	}
	mnt := mounts.PoolDir
	log.WithFields(logrus.Fields{"path": mnt, "trees": mounts.TreesDir, "cache_dir": *cacheDir}).Info("serving")
	images := imagestore.NewDaemon(store, imagestore.Options{Pool: p, Resolver: resolver})
	state := &daemonState{mnt: mnt, trees: mounts.TreesDir, cacheDir: *cacheDir, pool: p, disk: disk, mem: mem, chunks: chunks, whole: whole, resolver: resolver, keychain: rs.keychain, published: published, images: images}
	stopServices, err := dflags.startServices(state, log) // control socket, metrics, sd_notify READY=1
	if err != nil {
		_ = mounts.Unmount()
		return err
	}
	defer stopServices()
	stopImages := keepImages(ctx, images, pinned, log.WithField("component", "imagestore"))
	defer stopImages()

	done := make(chan struct{})
	go func() {
		mounts.Wait()
		close(done)
	}()
	select {
	case <-done:
		// Unmounted from outside (umount, fusermount -u).
		log.WithField("path", mnt).Info("unmounted externally")
		return mounts.Unmount() // the trees mount
	case <-ctx.Done():
	}
	log.WithField("path", mnt).Info("signal received, unmounting")
	if err := mounts.Unmount(); err != nil {
		return err
	}
	<-done
	return nil
}

// memorySlack is what the daemon may use besides its chunk cache and
// trees before the collector tries harder (see debug.SetMemoryLimit):
// buffers of reads in flight, the write-behind queue, go-fuse.
const memorySlack = 256 << 20

// logTime has milliseconds: a cold lookup and its prefetch take tens to
// hundreds of them, and lining daemon events up with podman's and the
// registry's needs them.
const logTime = "2006-01-02T15:04:05.000Z07:00"

func newLogger(level, format string) (*logrus.Entry, error) {
	l := logrus.New()
	l.SetOutput(os.Stderr)
	lv, err := logrus.ParseLevel(level)
	if err != nil {
		return nil, fmt.Errorf("--log-level: %w", err)
	}
	l.SetLevel(lv)
	switch format {
	case "text":
		l.SetFormatter(&logrus.TextFormatter{FullTimestamp: true, TimestampFormat: logTime})
	case "json":
		l.SetFormatter(&logrus.JSONFormatter{TimestampFormat: logTime})
	default:
		return nil, fmt.Errorf("--log-format: %q is neither text nor json", format)
	}
	return logrus.NewEntry(l), nil
}

// pruneMetaEvery forgets old layer records now and then every interval,
// until the returned stop is called (which waits for a prune in progress).
func pruneMetaEvery(ctx context.Context, interval time.Duration, p *pool.Pool, maxAge time.Duration, log *logrus.Entry) (stop func()) {
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			n, err := p.PruneMeta(maxAge)
			switch {
			case err != nil:
				log.WithError(err).Warn("pruning layer records failed")
			case n > 0:
				log.WithFields(logrus.Fields{"layers": n, "max_age": maxAge}).Info("forgot the records of unused layers")
			}
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	}()
	return func() {
		cancel()
		<-done
	}
}

// keepImages opens the image store's layers through the pool (after a
// restart, from the metadata store) and adds the pinned images the store
// lacks, in the background: podman may use the store meanwhile, and a
// layer it reaches first is opened on its lookup. A pinned image that
// cannot be added now (registry down) is logged; the store keeps what it
// had. The returned stop waits for the work to end.
func keepImages(ctx context.Context, images *imagestore.Daemon, pinned []string, log *logrus.Entry) (stop func()) {
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		images.OpenLayers(ctx)
		have := map[string]bool{}
		for _, im := range images.List() {
			for _, n := range im.Names {
				have[n] = true
			}
		}
		for _, ref := range pinned {
			if n, err := imagestore.StorageName(ref); err == nil && have[n] {
				continue
			}
			if _, err := images.Add(ctx, ref, nil); err != nil {
				log.WithField("ref", ref).WithError(err).Warn("adding a pinned image failed")
			}
		}
	}()
	return func() {
		cancel()
		<-done
	}
}

// accessFor turns --group (a name or a numeric id; "" for none) into the
// store's Access (see alsfs.Access).
func accessFor(group string) (alsfs.Access, error) {
	if group == "" {
		return alsfs.Access{}, nil
	}
	id := group
	if _, err := strconv.ParseUint(group, 10, 32); err != nil {
		g, err := user.LookupGroup(group)
		if err != nil {
			return alsfs.Access{}, fmt.Errorf("--group: %w", err)
		}
		id = g.Gid
	}
	gid, err := strconv.ParseUint(id, 10, 32)
	if err != nil {
		return alsfs.Access{}, fmt.Errorf("--group: group %s has id %q", group, id)
	}
	return alsfs.Access{Group: true, GID: uint32(gid)}, nil
}
