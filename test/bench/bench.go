package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/poolfs/poolfs/control"
	"github.com/poolfs/poolfs/layer"
	"github.com/poolfs/poolfs/test/fixture"
)

func lookPath(p string) (string, error) {
	if _, err := exec.LookPath(p); err == nil {
		return p, nil
	}
	for _, d := range []string{"/usr/sbin", "/sbin"} {
		if _, err := os.Stat(filepath.Join(d, p)); err == nil {
			return filepath.Join(d, p), nil
		}
	}
	return exec.LookPath(p)
}

type bench struct {
	c    config
	reg  *fixture.Registry
	link *link
	repo string
	ctx  context.Context
	seq  int
	// busybox is the tar of initStore's image.
	busybox []byte
	// runDirs are the timed runs' directories, deleted by cleanup.
	runDirs []string
}

// cleanup deletes the timed runs' directories.
func (b *bench) cleanup() {
	for _, d := range b.runDirs {
		_ = os.RemoveAll(d)
	}
	b.runDirs = nil
}

// preparedWorkload is a workload with its images pushed and what it reads.
type preparedWorkload struct {
	image   string
	w       workload
	gzipRef string
	lazyRef string
	zstdRef string // the same rootfs as zstd:chunked, which has no prioritized files: it stands for both unoptimized and optimized
	optRef  string
	// profRef is the unoptimized image again, in a repository of its
	// own: the profiled case's profile is pushed there, so that the other
	// cases' registry lookups (the daemon's default) find none.
	profRef  string
	files    []string // regular files the workload opens, real paths in first-open order
	needUnc  int64    // their uncompressed size
	needComp int64    // their compressed size in the eStargz layer
	gzipSize int64    // compressed size of the gzip layer
	lazySize int64    // of the eStargz layer
	zstdSize int64    // of the zstd:chunked layer
	optPrio  int      // files before the landmark in the optimized layer
}

func (b *bench) prepare(spec imageSpec) ([]*preparedWorkload, error) {
	rf, err := buildRootfs(b.c.work, spec.name, spec.packages)
	if err != nil {
		return nil, err
	}
	logf("%s rootfs: %d MiB tar", spec.name, len(rf.tar)>>20)
	tars := [][]byte{rf.tar}
	opts := fixture.ImageOptions{Cmd: []string{"/bin/sh"}}

	gzipRef := fixture.ImageRef(b.reg.Host, "bench/"+spec.name, "gzip")
	lazyRef := fixture.ImageRef(b.reg.Host, "bench/"+spec.name, "estargz")
	t0 := time.Now()
	gzo := opts
	gzo.Gzip = true
	gzImg, err := fixture.BuildImage(tars, gzo)
	if err != nil {
		return nil, err
	}
	if err := gzImg.Push(b.ctx, gzipRef); err != nil {
		return nil, err
	}
	lazyImg, err := fixture.BuildImage(tars, opts)
	if err != nil {
		return nil, err
	}
	if err := lazyImg.Push(b.ctx, lazyRef); err != nil {
		return nil, err
	}
	zstdRef := fixture.ImageRef(b.reg.Host, "bench/"+spec.name, "zstd-chunked")
	zo := opts
	zo.ZstdChunked = true
	zo.ChunkSize = 256 << 10 // containers/storage's rolling checksum cuts chunks of about 64 KiB on average; files below this are one frame
	zstdImg, err := fixture.BuildImage(tars, zo)
	if err != nil {
		return nil, err
	}
	if err := zstdImg.Push(b.ctx, zstdRef); err != nil {
		return nil, err
	}
	logf("pushed %s (%d MiB), %s (%d MiB) and %s (%d MiB) in %v", gzipRef, gzImg.Layers[0].Info.Size>>20,
		lazyRef, lazyImg.Layers[0].Info.Size>>20, zstdRef, zstdImg.Layers[0].Info.Size>>20, time.Since(t0).Round(time.Second))
	lazyLayer, err := openLayer(lazyImg.Layers[0].Blob)
	if err != nil {
		return nil, err
	}

	var out []*preparedWorkload
	for i, w := range spec.workloads {
		if !strings.Contains(w.name, b.c.workload) {
			continue // not measured: no optimized image to build
		}
		files, err := rf.filesRead(w.argv)
		if err != nil {
			return nil, err
		}
		p := &preparedWorkload{
			image: spec.name, w: w, gzipRef: gzipRef, lazyRef: lazyRef, zstdRef: zstdRef, files: files,
			gzipSize: gzImg.Layers[0].Info.Size, lazySize: lazyImg.Layers[0].Info.Size, zstdSize: zstdImg.Layers[0].Info.Size,
		}
		p.needUnc, p.needComp = neededBytes(lazyLayer, files)
		o := opts
		o.PrioritizedFiles = files
		p.optRef = fixture.ImageRef(b.reg.Host, "bench/"+spec.name, fmt.Sprintf("opt%d", i))
		optImg, err := fixture.BuildImage(tars, o)
		if err != nil {
			return nil, fmt.Errorf("optimized image for %s: %w", w.name, err)
		}
		if err := optImg.Push(b.ctx, p.optRef); err != nil {
			return nil, err
		}
		ol, err := openLayer(optImg.Layers[0].Blob)
		if err != nil {
			return nil, err
		}
		p.optPrio = len(ol.Prioritized())
		if b.c.profiled {
			p.profRef = fixture.ImageRef(b.reg.Host, fmt.Sprintf("bench/%s-profiled%d", spec.name, i), "estargz")
			if err := lazyImg.Push(b.ctx, p.profRef); err != nil {
				return nil, err
			}
		}
		logf("%s %q opens %d files: %.1f MB, %.1f MB compressed; optimized image %s has %d prioritized files",
			spec.name, w.name, len(files), mb(p.needUnc), mb(p.needComp), p.optRef, p.optPrio)
		out = append(out, p)
	}
	return out, nil
}

type memBlob []byte

func (m memBlob) Size() int64 { return int64(len(m)) }
func (m memBlob) ReadAt(_ context.Context, p []byte, off int64) (int, error) {
	return bytes.NewReader(m).ReadAt(p, off)
}

func openLayer(blob []byte) (*layer.Layer, error) {
	return layer.Open(context.Background(), memBlob(blob), "", nil, nil)
}

func lookupEntry(l *layer.Layer, p string) *layer.Entry {
	e := l.Root()
	for _, part := range strings.Split(p, "/") {
		if e == nil {
			return nil
		}
		e = e.Child(part)
	}
	return e
}

// neededBytes sums the sizes of files, uncompressed and as compressed
// ranges of the layer (each range counted once).
func neededBytes(l *layer.Layer, files []string) (unc, comp int64) {
	type span struct{ s, e int64 }
	var spans []span
	for _, f := range files {
		e := lookupEntry(l, f)
		if e == nil || e.Type != layer.TypeReg {
			continue
		}
		unc += e.Size
		s, en := l.CompressedRange(e)
		if en > s {
			spans = append(spans, span{s, en})
		}
	}
	sort.Slice(spans, func(i, j int) bool { return spans[i].s < spans[j].s })
	var end int64 = -1
	for _, sp := range spans {
		if sp.s >= end {
			comp += sp.e - sp.s
			end = sp.e
		} else if sp.e > end {
			comp += sp.e - end
			end = sp.e
		}
	}
	return unc, comp
}

// caseResult is one case (pull, lazy, ...) of a workload, over all runs.
type caseResult struct {
	name     string
	times    []time.Duration
	bytes    []int64
	requests []int64
	blobReqs []int64
	// Where a run's time went, for runs in which the daemon read blobs
	// (see splitTime).
	split []timeSplit
}

// timeSplit cuts a run's time at the daemon's first and last blob byte:
// before the first (podman's pull, the daemon's manifest and TOC
// lookups), the daemon's blob bytes at the link's rate, the rest of the
// time between the two (the link idle: round trips, or the container
// computing while nothing was asked for), and after the last byte (the
// container's end and podman's teardown).
type timeSplit struct {
	lead, link, idle, after time.Duration
}

// splitTime splits a run of took that began at t0 by the daemon's blob
// reads in reqs; ok is false if it made none.
func (b *bench) splitTime(t0 time.Time, took time.Duration, reqs []fixture.RequestRecord) (timeSplit, bool) {
	var first, last time.Time
	var bytes int64
	for _, rq := range reqs {
		if rq.Method != http.MethodGet || !strings.Contains(rq.Path, "/blobs/") || rq.Bytes == 0 || strings.HasPrefix(rq.UserAgent, "containers/") {
			continue
		}
		// The link holds every answer back for its delay, then paces
		// its bytes.
		if fb := rq.Time.Add(b.c.delay); first.IsZero() || fb.Before(first) {
			first = fb
		}
		if lb := rq.Time.Add(rq.Took); lb.After(last) {
			last = lb
		}
		bytes += rq.Bytes
	}
	if first.IsZero() {
		return timeSplit{}, false
	}
	end := t0.Add(took)
	sp := timeSplit{lead: max(first.Sub(t0), 0), link: b.link.transferTime(bytes), after: max(end.Sub(last), 0)}
	sp.idle = max(took-sp.lead-sp.link-sp.after, 0)
	return sp, true
}

type workloadResult struct {
	p       *preparedWorkload
	cases   []*caseResult // in display order; "local" is among them
	lower   time.Duration
	byName  map[string]*caseResult
	rtts    int
	rttCost time.Duration
}

const lowerBoundRTTs = 3 // manifest, config, one range request

func (b *bench) measureWorkload(p *preparedWorkload) (*workloadResult, error) {
	r := &workloadResult{p: p, byName: map[string]*caseResult{}, rtts: lowerBoundRTTs}
	add := func(name string) *caseResult {
		c := &caseResult{name: name}
		r.cases = append(r.cases, c)
		r.byName[name] = c
		return c
	}
	pull, local := add("full pull (gzip)"), add("local (image already pulled)")
	lazy, opt := add("poolfs, eStargz"), add("poolfs, eStargz optimized")
	warm := add("poolfs optimized, daemon cache warm")
	zc := add("poolfs, zstd:chunked (no prioritized order)")
	var profiled *caseResult
	if b.c.profiled {
		// The profile comes from a cold run of the unoptimized image on
		// another daemon with an empty cache, which pushes it to the
		// registry (`poolfs profile push`); each timed daemon finds it
		// there with its default lookup, through the emulated link.
		profiled = add("poolfs, eStargz + profile")
		rec := &caseResult{name: "(recording run, not counted)"}
		if err := b.runCase(p, p.profRef, true, b.c.daemonArg, rec, nil, &profileIO{push: true}); err != nil {
			return nil, fmt.Errorf("recording the profile: %w", err)
		}
	}
	isLazy, isOpt := add("image store, eStargz"), add("image store, eStargz optimized")
	isWarm := add("image store optimized, daemon cache warm")
	var vars, lazyVars []*caseResult
	for _, v := range b.c.variants {
		vars = append(vars, add("poolfs optimized, "+v.name))
	}
	if b.c.lazyVariants {
		for _, v := range b.c.variants {
			lazyVars = append(lazyVars, add("poolfs, eStargz, "+v.name))
		}
	}
	logf("measuring %s %q: %d runs", p.image, p.w.name, b.c.runs)
	var round []func() error
	// each adds the run of case c (and of the cases measured with it) to
	// the round, unless -cases leaves c out.
	each := func(c *caseResult, run func() error) {
		if b.c.wantCase(c.name) {
			round = append(round, run)
		}
	}
	if !b.c.noPull {
		each(pull, func() error { return b.runCase(p, p.gzipRef, false, nil, pull, local, nil) })
	}
	each(lazy, func() error { return b.runCase(p, p.lazyRef, true, b.c.daemonArg, lazy, nil, nil) })
	each(opt, func() error { return b.runCase(p, p.optRef, true, b.c.daemonArg, opt, warm, nil) })
	each(zc, func() error { return b.runCase(p, p.zstdRef, true, b.c.daemonArg, zc, nil, nil) })
	each(isLazy, func() error { return b.runImageStoreCase(p, p.lazyRef, b.c.daemonArg, isLazy, nil) })
	each(isOpt, func() error { return b.runImageStoreCase(p, p.optRef, b.c.daemonArg, isOpt, isWarm) })
	if profiled != nil {
		each(profiled, func() error {
			return b.runCase(p, p.profRef, true, b.c.daemonArg, profiled, nil, &profileIO{published: true})
		})
	}
	for j, v := range b.c.variants {
		args := append(append([]string{}, b.c.daemonArg...), v.args...)
		each(vars[j], func() error { return b.runCase(p, p.optRef, true, args, vars[j], nil, nil) })
		if b.c.lazyVariants {
			each(lazyVars[j], func() error { return b.runCase(p, p.lazyRef, true, args, lazyVars[j], nil, nil) })
		}
	}
	// Each round runs every case once, in an order of its own (the same
	// from one bench run to the next): a case that always came right after
	// the same other one would carry whatever that one leaves behind.
	shuffle := rand.New(rand.NewPCG(uint64(len(p.w.name)), 1))
	for i := 0; i < b.c.runs; i++ {
		shuffle.Shuffle(len(round), func(x, y int) { round[x], round[y] = round[y], round[x] })
		for _, run := range round {
			if err := run(); err != nil {
				return nil, err
			}
		}
	}
	r.rttCost = time.Duration(r.rtts) * b.c.delay
	r.lower = median(local.times) + r.rttCost + b.link.transferTime(p.needComp)
	return r, nil
}

// profileIO says what a run does with startup profiles: push what its
// daemon recorded to the registry after the run (`poolfs profile push`),
// or check that its daemon replayed a profile found in the registry.
type profileIO struct {
	push      bool
	published bool
}

// startDaemon starts poolfs serve on dir/store with its cache in
// dir/cache.
func (b *bench) startDaemon(dir string, daemonArgs []string, logName string) (*fixture.Daemon, error) {
	return fixture.StartDaemon(fixture.DaemonOptions{
		Binary:             b.c.poolfs,
		Root:               filepath.Join(dir, "store"),
		CacheDir:           filepath.Join(dir, "cache"),
		InsecureRegistries: []string{b.reg.Host},
		LogLevel:           "info",
		LogFile:            filepath.Join(dir, logName),
		ExtraArgs:          daemonArgs,
	})
}

// runDir makes the directory of the next run (its stores, logs and
// daemon ROOT).
func (b *bench) runDir() (string, error) {
	b.seq++
	dir := filepath.Join(b.c.work, "runs", fmt.Sprintf("%03d", b.seq))
	os.RemoveAll(dir)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	if !b.c.keep {
		// Deleted only after the last measurement: on these VMs (ext4
		// with online discard) a pull right after a store was deleted
		// took twice as long (4.4 s -> 9 s), which would make the full
		// pull look slower than it is.
		b.runDirs = append(b.runDirs, dir)
	}
	return dir, nil
}

// runCase runs the workload once cold: fresh podman store, and with
// poolfs a fresh daemon with an empty cache (see profileIO for prof). If
// local is not nil, the workload runs a second time from the now local
// image.
func (b *bench) runCase(p *preparedWorkload, ref string, pool bool, daemonArgs []string, c, local *caseResult, prof *profileIO) error {
	dir, err := b.runDir()
	if err != nil {
		return err
	}
	als := ""
	var d *fixture.Daemon
	if pool {
		als = filepath.Join(dir, "store")
		var err error
		if d, err = b.startDaemon(dir, daemonArgs, "poolfs.log"); err != nil {
			return err
		}
		defer func() {
			if err := d.Stop(); err != nil {
				logf("stopping poolfs: %v", err)
			}
		}()
	}
	pm, err := fixture.NewPodman(filepath.Join(dir, "podman"), fixture.PodmanOptions{
		RepoRoot: b.repo, ALS: als, InsecureRegistries: []string{b.reg.Host},
	})
	if err != nil {
		return err
	}
	defer pm.Cleanup()
	ctx, cancel := context.WithTimeout(b.ctx, 10*time.Minute)
	defer cancel()
	if err := b.initStore(ctx, pm); err != nil {
		return err
	}

	args := append([]string{"run", "--rm", "--network=none", "--tls-verify=false", ref}, p.w.argv...)
	if err := b.timedRun(ctx, pm, d, dir, p, args, c); err != nil {
		return err
	}
	if prof != nil && prof.published {
		if err := b.checkPublishedReplay(ctx, d, als); err != nil {
			return err
		}
	}
	if prof != nil && prof.push {
		// The recording window closes after a pause in reads; push sends
		// what the daemon holds so far, the whole start by now.
		if err := b.poolfsCmd(ctx, "profile", "push", "--socket", fixture.ControlSocketFor(als), ref); err != nil {
			return err
		}
	}
	if local == nil {
		return nil
	}
	// Without poolfs: the image is now in the store. With poolfs: a fresh
	// podman store on the same daemon, whose cache is now warm. Each run
	// is timed as every run is (after a sync, the output checked): the
	// full pull's extraction is on disk before the clock starts.
	for i := range b.c.warmRuns {
		wpm := pm
		if pool {
			if wpm, err = fixture.NewPodman(filepath.Join(dir, fmt.Sprintf("podman%d", i+2)), fixture.PodmanOptions{
				RepoRoot: b.repo, ALS: als, InsecureRegistries: []string{b.reg.Host},
			}); err != nil {
				return err
			}
			defer wpm.Cleanup()
			if err := b.initStore(ctx, wpm); err != nil {
				return err
			}
			if err := b.settle(ctx, d); err != nil {
				return err
			}
		}
		if err := b.timedRun(ctx, wpm, d, dir, p, args, local); err != nil {
			return err
		}
	}
	return nil
}

// timedRun runs podman with args once (the workload), checks its output
// and records time, registry bytes and requests in c. d is the daemon
// serving the run, if any (its CPU and page faults are logged).
func (b *bench) timedRun(ctx context.Context, pm *fixture.Podman, d *fixture.Daemon, dir string, p *preparedWorkload, args []string, c *caseResult) error {
	if b.c.podmanLog != "" {
		args = append([]string{"--log-level=" + b.c.podmanLog}, args...)
	}
	// Earlier runs' writes (a full pull extracts the whole root) are on
	// disk before the clock starts, so no case pays for another's
	// writeback.
	_ = exec.Command("sync").Run()
	b.reg.ResetStats()
	var before procStat
	var opsBefore map[string]int64
	var stopPerf func()
	if d != nil {
		before = readProcStat(d.Pid())
		opsBefore, _ = fuseOps(fixture.MetricsSocketFor(d.Opts.Root))
		if b.c.perf {
			stopPerf = startPerf(filepath.Join(dir, "perf.data"), d.Pid())
		}
	}
	t0 := time.Now()
	out, stderr, err := pm.Run(ctx, args...)
	took := time.Since(t0)
	st := b.reg.Stats()
	if stopPerf != nil {
		stopPerf()
	}
	daemonCost := ""
	if d != nil {
		after := readProcStat(d.Pid())
		daemonCost = fmt.Sprintf("  daemon: %.0f ms CPU, %d page faults", float64(after.cpuTicks-before.cpuTicks)*1000/clockTicks, after.minflt-before.minflt)
		if opsAfter, err := fuseOps(fixture.MetricsSocketFor(d.Opts.Root)); err == nil && opsBefore != nil {
			daemonCost += fmt.Sprintf(", FUSE requests %v", opsDelta(opsBefore, opsAfter))
		}
	}
	if b.c.keep {
		// Later timed runs in the same directory (the warm runs) keep
		// their own files beside the first's.
		suffix := ""
		for i := 2; ; i++ {
			if _, err := os.Stat(filepath.Join(dir, "requests"+suffix+".log")); err != nil {
				break
			}
			suffix = fmt.Sprintf("-%d", i)
		}
		_ = os.WriteFile(filepath.Join(dir, "podman"+suffix+".stderr"), []byte(stderr), 0o644)
		logText := fmt.Sprintf("podman run started %s\n%s", t0.Format("15:04:05.000"), b.reg.RequestLog())
		_ = os.WriteFile(filepath.Join(dir, "requests"+suffix+".log"), []byte(logText), 0o644)
	}
	if err != nil {
		if d != nil {
			err = fmt.Errorf("%w\npoolfs log:\n%s", err, d.LogTail(8<<10))
		}
		return err
	}
	if p.w.want != "" && !strings.Contains(out+stderr, p.w.want) {
		return fmt.Errorf("%s: output %q does not contain %q", pm.CommandLine(args...), out+stderr, p.w.want)
	}
	c.times = append(c.times, took)
	c.bytes = append(c.bytes, st.BlobBytes)
	c.requests = append(c.requests, st.Requests)
	c.blobReqs = append(c.blobReqs, st.BlobGets)
	if sp, ok := b.splitTime(t0, took, b.reg.Requests()); ok && d != nil {
		c.split = append(c.split, sp)
	}
	logf("  %-34s %7.3f s  %8.2f MB  %3d requests (%d blob GETs)%s", c.name, took.Seconds(), mb(st.BlobBytes), st.Requests, st.BlobGets, daemonCost)
	return nil
}

// checkPublishedReplay fails unless the daemon serving als replayed, for
// every layer it opened, a profile it found in the registry: a profiled
// case timed without its profile would be reported as if it had one.
func (b *bench) checkPublishedReplay(ctx context.Context, d *fixture.Daemon, als string) error {
	c := control.NewClient(fixture.ControlSocketFor(als))
	// The replay may still be starting when a short run ends.
	deadline := time.Now().Add(10 * time.Second)
	for {
		st, err := c.Status(ctx)
		if err != nil {
			return fmt.Errorf("status of the profiled run's daemon: %w", err)
		}
		var missing []string
		for _, l := range st.Layers {
			if p := l.Profile; p == nil || !p.Loaded || p.Source != "source" {
				missing = append(missing, fmt.Sprintf("%s: %+v", l.Digest, p))
			}
		}
		if len(st.Layers) > 0 && len(missing) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("profiled run: the daemon did not replay a profile found in the registry for %d of %d layers (%s)\npoolfs log:\n%s",
				len(missing), len(st.Layers), strings.Join(missing, "; "), d.LogTail(8<<10))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// poolfsCmd runs the poolfs binary (a client command).
func (b *bench) poolfsCmd(ctx context.Context, args ...string) error {
	out, err := exec.CommandContext(ctx, b.c.poolfs, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("poolfs %s: %w\n%s", strings.Join(args, " "), err, out)
	}
	logf("  poolfs %s: %s", args[0]+" "+args[1], strings.TrimSpace(string(out)))
	return nil
}

// runImageStoreCase runs the workload once from the daemon's image store
// with a cold daemon cache: `poolfs image add` on a first daemon (as an
// operator does ahead of time), then a second daemon on the same ROOT
// with the chunks removed from its cache (what a node has after a reboot
// with a cleared cache: the image records and the layers' TOCs, no file
// data). With warm set, the workload runs again on the same daemon from
// another fresh podman store.
func (b *bench) runImageStoreCase(p *preparedWorkload, ref string, daemonArgs []string, c, warm *caseResult) error {
	dir, err := b.runDir()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(b.ctx, 10*time.Minute)
	defer cancel()
	als := filepath.Join(dir, "store")
	d, err := b.startDaemon(dir, daemonArgs, "poolfs.add.log")
	if err != nil {
		return err
	}
	_, err = control.NewClient(fixture.ControlSocketFor(als)).AddImages(ctx, []string{ref}, nil)
	if stopErr := d.Stop(); err == nil {
		err = stopErr
	}
	if err != nil {
		return fmt.Errorf("image add %s: %w", ref, err)
	}
	if err := os.RemoveAll(filepath.Join(dir, "cache", "chunks")); err != nil {
		return err
	}
	newPodman := func(name string) (*fixture.Podman, error) {
		pm, err := fixture.NewPodman(filepath.Join(dir, name), fixture.PodmanOptions{
			RepoRoot: b.repo, ALS: als, ImageStore: filepath.Join(als, "images"), InsecureRegistries: []string{b.reg.Host},
		})
		if err != nil {
			return nil, err
		}
		return pm, b.initStore(ctx, pm)
	}
	// The podman store is made before the daemon starts again, so that
	// the run begins as soon as the daemon serves: the prefetch it starts
	// for the store's layers then races the container, as the layer
	// store's does from podman's lookup.
	pm, err := newPodman("podman")
	if err != nil {
		return err
	}
	defer pm.Cleanup()
	if d, err = b.startDaemon(dir, daemonArgs, "poolfs.log"); err != nil {
		return err
	}
	defer func() {
		if err := d.Stop(); err != nil {
			logf("stopping poolfs: %v", err)
		}
	}()
	args := append([]string{"run", "--rm", "--network=none", "--pull=never", ref}, p.w.argv...)
	if err := b.timedRun(ctx, pm, d, dir, p, args, c); err != nil {
		return err
	}
	if warm == nil {
		return nil
	}
	for i := range b.c.warmRuns {
		pm2, err := newPodman(fmt.Sprintf("podman%d", i+2))
		if err != nil {
			return err
		}
		defer pm2.Cleanup()
		if err := b.settle(ctx, d); err != nil {
			return err
		}
		if err := b.timedRun(ctx, pm2, d, dir, p, args, warm); err != nil {
			return err
		}
	}
	return nil
}

// settleQuiet is how long the registry must see no request and no byte
// before a daemon counts as settled.
const settleQuiet = 500 * time.Millisecond

// settle waits until daemon d's background fetches are over: no request
// or byte at the registry for settleQuiet, and no chunk waiting for its
// disk. A "daemon cache warm" run starts there: the cold run's prefetch
// (java's lib/modules takes seconds) would otherwise still be fetching and
// verifying on the same two cores, and the run would measure that, not a
// warm cache.
func (b *bench) settle(ctx context.Context, d *fixture.Daemon) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	client := control.NewClient(fixture.ControlSocketFor(d.Opts.Root))
	t0 := time.Now()
	last, quietSince := b.reg.Stats(), time.Now()
	for {
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for the daemon's background fetches to end: %w", ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
		st := b.reg.Stats()
		if st.Requests != last.Requests || st.BlobBytes != last.BlobBytes {
			last, quietSince = st, time.Now()
			continue
		}
		if time.Since(quietSince) < settleQuiet {
			continue
		}
		status, err := client.Status(ctx)
		if err != nil {
			return fmt.Errorf("daemon status: %w", err)
		}
		if status.Cache.PendingBytes == 0 {
			logf("  (daemon settled after %.1f s)", time.Since(t0).Seconds())
			return nil
		}
	}
}

// initImage is the image initStore runs a container of, then removes.
const initImage = "localhost/poolfs-bench-init:latest"

// initStore makes a fresh podman store look like the store of a machine
// where podman has run containers before but has no images: `podman
// images` creates its database and runs the storage driver's first
// feature probes; a container of a busybox image imported for it, then
// removed, makes the overlay driver probe what it probes at the first
// container mount (volatile, idmapped lower directories: two test mounts,
// 15-20 ms here). It records the answers in the run root, where a machine
// keeps them until it reboots, so a user pays them once, not per
// container start. Without the container, every timed run on a fresh
// store paid them and the local case (a second run on its store) did not.
func (b *bench) initStore(ctx context.Context, pm *fixture.Podman) error {
	if b.c.newStore {
		return nil
	}
	if _, stderr, err := pm.Run(ctx, "images"); err != nil {
		return fmt.Errorf("initializing podman store: %w: %s", err, stderr)
	}
	if b.busybox == nil {
		var err error
		if b.busybox, err = fixture.BusyboxRootTar(); err != nil {
			return err
		}
	}
	imp := pm.Command(ctx, "import", "-", initImage)
	imp.Stdin = bytes.NewReader(b.busybox)
	if out, err := imp.CombinedOutput(); err != nil {
		return fmt.Errorf("initializing podman store: import: %w: %s", err, out)
	}
	for _, args := range [][]string{{"run", "--rm", "--network=none", initImage, "/bin/busybox", "true"}, {"rmi", initImage}} {
		if _, stderr, err := pm.Run(ctx, args...); err != nil {
			return fmt.Errorf("initializing podman store: %s: %w: %s", args[0], err, stderr)
		}
	}
	return nil
}

// fsResult holds the warm read and metadata walk measurements.
type fsResult struct {
	bigMiB                  int
	whole                   bool          // the daemon reported the big file's whole-file copy before the timed reads
	wholeWait               time.Duration // how long after the first read
	mountRead, diskRead     []time.Duration
	entries                 int
	mountWalk1, mountWalk2  []time.Duration
	inPlace1, inPlace2      []time.Duration // the same walks with --in-place-trees
	diskWalk1, diskWalk2    []time.Duration
	mountEntries, diskCount int
	// tar of the python tree: page cache dropped, then warm
	mountTar, mountTarWarm []time.Duration
	diskTar, diskTarWarm   []time.Duration
	tarOps, warmTarOps     map[string]int64 // daemon requests during the last mount reads
	walkOps                map[string]int64 // and during the last second walk
}

func dropCaches() error {
	exec.Command("sync").Run()
	return os.WriteFile("/proc/sys/vm/drop_caches", []byte("3\n"), 0o644)
}

func readAll(p string) (time.Duration, int64, error) {
	if err := dropCaches(); err != nil {
		return 0, 0, err
	}
	f, err := os.Open(p)
	if err != nil {
		return 0, 0, err
	}
	defer f.Close()
	buf := make([]byte, 1<<20)
	t0 := time.Now()
	n, err := io.CopyBuffer(io.Discard, struct{ io.Reader }{f}, buf)
	return time.Since(t0), n, err
}

// walkTwice drops the kernel's caches and walks root twice: the first
// walk and the second, with everything the first one cached. If sock is
// not "", it also returns the FUSE requests the daemon serving its
// metrics there answered during the second walk.
func walkTwice(root, sock string) (first, second time.Duration, entries int, ops map[string]int64, err error) {
	if err := dropCaches(); err != nil {
		return 0, 0, 0, nil, err
	}
	if first, entries, err = walk(root); err != nil {
		return 0, 0, 0, nil, err
	}
	var before map[string]int64
	if sock != "" {
		before, _ = fuseOps(sock)
	}
	second, _, err = walk(root)
	if sock != "" {
		after, _ := fuseOps(sock)
		ops = opsDelta(before, after)
	}
	return first, second, entries, ops, err
}

// walk stats every entry under root as `find ROOT -printf '%s %m\n'`
// does (fts: each directory opened relative to its parent, each entry
// stat'ed relative to its directory, as tools that walk a tree do), and
// counts the entries. A root that is a link (a pool diff, see the trees
// mount) is followed first, as overlayfs follows a lower directory, and
// that is timed too.
func walk(root string) (time.Duration, int, error) {
	t0 := time.Now()
	root, err := filepath.EvalSymlinks(root)
	if err != nil {
		return 0, 0, err
	}
	var out lineCounter
	cmd := exec.Command("find", root, "-printf", "%s %m\n")
	cmd.Stdout = &out
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return 0, 0, fmt.Errorf("find %s: %w: %s", root, err, stderr.Bytes())
	}
	return time.Since(t0), out.n, nil
}

// lineCounter counts the lines written to it.
type lineCounter struct{ n int }

func (c *lineCounter) Write(p []byte) (int, error) {
	c.n += bytes.Count(p, []byte{'\n'})
	return len(p), nil
}

// measureFS compares reads and walks through the mount with the same
// bytes and tree on local disk.
func (b *bench) measureFS() (*fsResult, error) {
	r := &fsResult{bigMiB: b.c.bigMiB}
	logf("read throughput: building a %d MiB file", b.c.bigMiB)
	data := fixture.RandomBytes(7, b.c.bigMiB<<20)
	bigTar := fixture.BuildTar([]fixture.TarEntry{{Name: "big.bin", Mode: 0o644, Content: data}})
	bigRef := fixture.ImageRef(b.reg.Host, "bench/big", "estargz")
	img, err := fixture.BuildImage([][]byte{bigTar}, fixture.ImageOptions{})
	if err != nil {
		return nil, err
	}
	if err := img.Push(b.ctx, bigRef); err != nil {
		return nil, err
	}
	diskBig := filepath.Join(b.c.work, "big.bin")
	if err := os.WriteFile(diskBig, data, 0o644); err != nil {
		return nil, err
	}
	defer os.Remove(diskBig)
	data, bigTar = nil, nil

	pyRef, pyDigest, err := b.pythonImage()
	if err != nil {
		return nil, err
	}

	dir := filepath.Join(b.c.work, "runs", "fs")
	os.RemoveAll(dir)
	if !b.c.keep {
		defer os.RemoveAll(dir)
	}
	metricsSock := filepath.Join(dir, "metrics.sock")
	d, err := fixture.StartDaemon(fixture.DaemonOptions{
		Binary: b.c.poolfs, Root: filepath.Join(dir, "store"), CacheDir: filepath.Join(dir, "cache"),
		InsecureRegistries: []string{b.reg.Host}, LogLevel: "info", LogFile: filepath.Join(dir, "poolfs.log"),
		ExtraArgs: append(slices.Clone(b.c.daemonArg), "--metrics-address", "unix:"+metricsSock),
	})
	if err != nil {
		return nil, err
	}
	defer d.Stop()
	diffOf := func(ref, dgst string) string {
		return filepath.Join(d.Mountpoint, base64.StdEncoding.EncodeToString([]byte(ref)), dgst, "diff")
	}
	mountBig := filepath.Join(diffOf(bigRef, img.Layers[0].Info.Digest.String()), "big.bin")
	if _, n, err := readAll(mountBig); err != nil || n != int64(b.c.bigMiB)<<20 {
		return nil, fmt.Errorf("first read of %s: %d bytes, %v", mountBig, n, err)
	}
	// Warm means the daemon's cache holds the file, its whole-file copy
	// for passthrough included: that copy is written in the background
	// after the first read, so wait for the daemon to report it.
	r.wholeWait, r.whole = b.waitWholeCopy(d, int64(b.c.bigMiB)<<20)
	if r.whole {
		logf("  whole-file copy reported %.1f s after the first read", r.wholeWait.Seconds())
	} else {
		logf("  no whole-file copy reported after %v: the timed reads go through the daemon", r.wholeWait.Round(time.Second))
	}
	for i := 0; i < b.c.fsRuns; i++ {
		t, _, err := readAll(mountBig)
		if err != nil {
			return nil, err
		}
		r.mountRead = append(r.mountRead, t)
		t2, _, err := readAll(diskBig)
		if err != nil {
			return nil, err
		}
		r.diskRead = append(r.diskRead, t2)
		logf("  warm read %d MiB: mount %.3f s, disk %.3f s", b.c.bigMiB, t.Seconds(), t2.Seconds())
	}

	{
		// A second daemon serves the trees in place, on the writable pool
		// mount, to show what the read-only trees mount buys.
		dIn, err := fixture.StartDaemon(fixture.DaemonOptions{
			Binary: b.c.poolfs, Root: filepath.Join(dir, "store-in-place"), CacheDir: filepath.Join(dir, "cache-in-place"),
			InsecureRegistries: []string{b.reg.Host}, LogLevel: "info", LogFile: filepath.Join(dir, "poolfs-in-place.log"),
			ExtraArgs: append(slices.Clone(b.c.daemonArg), "--in-place-trees", "--metrics-address", "unix:"+filepath.Join(dir, "metrics-in-place.sock")),
		})
		if err != nil {
			return nil, err
		}
		defer dIn.Stop()
		mountPy := diffOf(pyRef, pyDigest)
		inPlacePy := filepath.Join(dIn.Mountpoint, base64.StdEncoding.EncodeToString([]byte(pyRef)), pyDigest, "diff")
		diskPy := filepath.Join(b.c.work, "python.rootfs")
		for i := 0; i < b.c.fsRuns; i++ {
			t1, t2, n1, ops, err := walkTwice(mountPy, metricsSock)
			if err != nil {
				return nil, err
			}
			t5, t6, n5, _, err := walkTwice(inPlacePy, "")
			if err != nil {
				return nil, err
			}
			if n5 != n1 {
				return nil, fmt.Errorf("walks saw %d entries on the trees mount and %d in place", n1, n5)
			}
			r.inPlace1, r.inPlace2 = append(r.inPlace1, t5), append(r.inPlace2, t6)
			t3, t4, n3, _, err := walkTwice(diskPy, "")
			if err != nil {
				return nil, err
			}
			r.mountWalk1, r.mountWalk2 = append(r.mountWalk1, t1), append(r.mountWalk2, t2)
			r.diskWalk1, r.diskWalk2 = append(r.diskWalk1, t3), append(r.diskWalk2, t4)
			r.mountEntries, r.diskCount, r.walkOps = n1, n3, ops
			logf("  metadata walk: mount %d entries %.3f s then %.3f s (daemon requests %v; trees in place: %.3f s then %.3f s); disk %d entries %.3f s then %.3f s",
				n1, t1.Seconds(), t2.Seconds(), ops, t5.Seconds(), t6.Seconds(), n3, t3.Seconds(), t4.Seconds())
		}

		// The whole tree read as tar reads it, once the daemon's cache
		// holds every chunk: the first read fills it.
		if _, err := tarTree(mountPy); err != nil {
			return nil, err
		}
		for i := 0; i < b.c.fsRuns; i++ {
			if err := dropCaches(); err != nil {
				return nil, err
			}
			before, _ := fuseOps(metricsSock)
			t1, err := tarTree(mountPy)
			if err != nil {
				return nil, err
			}
			after, _ := fuseOps(metricsSock)
			r.tarOps = opsDelta(before, after)
			before = after
			t2, err := tarTree(mountPy)
			if err != nil {
				return nil, err
			}
			after, _ = fuseOps(metricsSock)
			if err := dropCaches(); err != nil {
				return nil, err
			}
			t3, err := tarTree(diskPy)
			if err != nil {
				return nil, err
			}
			t4, err := tarTree(diskPy)
			if err != nil {
				return nil, err
			}
			r.mountTar, r.mountTarWarm = append(r.mountTar, t1), append(r.mountTarWarm, t2)
			r.diskTar, r.diskTarWarm = append(r.diskTar, t3), append(r.diskTarWarm, t4)
			r.warmTarOps = opsDelta(before, after)
			logf("  tree read (tar): mount %.3f s (daemon requests %v), warm %.3f s (%v); disk %.3f s, warm %.3f s",
				t1.Seconds(), r.tarOps, t2.Seconds(), r.warmTarOps, t3.Seconds(), t4.Seconds())
		}
	}
	return r, nil
}

// pythonImage returns the python image's eStargz reference and layer
// digest, pushing the image first if no workload run did (-images none).
func (b *bench) pythonImage() (ref, layerDigest string, err error) {
	ref = fixture.ImageRef(b.reg.Host, "bench/python", "estargz")
	if body, _, _, err := fixture.FetchManifest(b.ctx, ref); err == nil {
		if d := layerDigestOf(body); d != "" {
			return ref, d, nil
		}
	}
	var spec imageSpec
	for _, s := range specs {
		if s.name == "python" {
			spec = s
		}
	}
	rf, err := buildRootfs(b.c.work, spec.name, spec.packages)
	if err != nil {
		return "", "", err
	}
	img, err := fixture.BuildImage([][]byte{rf.tar}, fixture.ImageOptions{Cmd: []string{"/bin/sh"}})
	if err != nil {
		return "", "", err
	}
	if err := img.Push(b.ctx, ref); err != nil {
		return "", "", err
	}
	return ref, img.Layers[0].Info.Digest.String(), nil
}

// tarTree times `tar -C dir -cf - . | cat`: every entry's metadata and
// every file's bytes, read as an image build or a copy reads a tree.
func tarTree(dir string) (time.Duration, error) {
	t0 := time.Now()
	out, err := exec.Command("sh", "-c", `tar -C "$1" -cf - . | cat >/dev/null`, "sh", dir).CombinedOutput()
	if err != nil {
		return 0, fmt.Errorf("tar of %s: %w: %s", dir, err, out)
	}
	return time.Since(t0), nil
}

// fuseOps reads the daemon's count of answered FUSE requests by operation
// from its metrics socket.
func fuseOps(sock string) (map[string]int64, error) {
	c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", sock)
		},
	}}
	resp, err := c.Get("http://poolfs/metrics")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	ops := map[string]int64{}
	const prefix = `poolfs_fuse_op_duration_seconds_count{op="`
	for _, line := range strings.Split(string(body), "\n") {
		rest, ok := strings.CutPrefix(line, prefix)
		if !ok {
			continue
		}
		op, n, ok := strings.Cut(rest, `"} `)
		if v, err := strconv.ParseInt(strings.TrimSpace(n), 10, 64); ok && err == nil {
			ops[op] = v
		}
	}
	return ops, nil
}

// opsDelta is after minus before, leaving out operations that did not
// happen.
func opsDelta(before, after map[string]int64) map[string]int64 {
	d := map[string]int64{}
	for op, n := range after {
		if n -= before[op]; n > 0 {
			d[op] = n
		}
	}
	return d
}

// wholeCopyTimeout bounds the wait for the daemon's whole-file copy of the
// big file (512 MiB are copied in a few seconds on a local disk).
const wholeCopyTimeout = 2 * time.Minute

// waitWholeCopy polls the daemon's status until its disk cache reports
// whole-file copies of at least size bytes, for at most wholeCopyTimeout.
// It returns how long it waited and whether the copy showed up (it does
// not with --passthrough=false).
func (b *bench) waitWholeCopy(d *fixture.Daemon, size int64) (time.Duration, bool) {
	ctx, cancel := context.WithTimeout(b.ctx, wholeCopyTimeout)
	defer cancel()
	client := control.NewClient(fixture.ControlSocketFor(d.Opts.Root))
	t0 := time.Now()
	for {
		st, err := client.Status(ctx)
		if err == nil && st.Cache.WholeBytes >= size {
			return time.Since(t0), true
		}
		select {
		case <-ctx.Done():
			if err != nil {
				logf("  daemon status: %v", err)
			}
			return time.Since(t0), false
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// layerDigestOf returns the first layer digest of a manifest.
func layerDigestOf(manifest []byte) string {
	i := bytes.Index(manifest, []byte(`"layers"`))
	if i < 0 {
		return ""
	}
	rest := manifest[i:]
	j := bytes.Index(rest, []byte(`"sha256:`))
	if j < 0 {
		return ""
	}
	rest = rest[j+1:]
	k := bytes.IndexByte(rest, '"')
	return string(rest[:k])
}

func median(ds []time.Duration) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[len(s)/2]
}

func medianInt(xs []int64) int64 {
	if len(xs) == 0 {
		return 0
	}
	s := append([]int64(nil), xs...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[len(s)/2]
}

func mb(n int64) float64 { return float64(n) / 1e6 }
