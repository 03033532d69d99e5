package main

import (
	"fmt"
	"io"
	"os"
	"runtime"
	"sort"
	"strings"
	"syscall"
	"time"
)

func printWorkload(w io.Writer, c config, r *workloadResult) {
	fmt.Fprintln(w)
	writeWorkload(w, c, r)
}

// writeWorkload writes one workload's table (Markdown, readable as text).
func writeWorkload(w io.Writer, c config, r *workloadResult) {
	p := r.p
	pull := median(r.byName["full pull (gzip)"].times)
	fmt.Fprintf(w, "### %s: `%s`\n\n", p.image, strings.Join(quoteArgs(p.w.argv), " "))
	fmt.Fprintf(w, "Layer: %.1f MB gzip, %.1f MB eStargz, %.1f MB zstd:chunked (no prioritized order: the format has none, so it is its own optimized equivalent). The workload opens %d files, %.1f MB (%.1f MB compressed). "+
		"Lower bound = local run %.3f s + %d round trips (%v) + %.1f MB at %g Mbit/s (%.3f s) = **%.3f s**.\n\n",
		mb(p.gzipSize), mb(p.lazySize), mb(p.zstdSize), len(p.files), mb(p.needUnc), mb(p.needComp),
		median(r.byName["local (image already pulled)"].times).Seconds(), r.rtts, r.rttCost, mb(p.needComp), c.mbit,
		(r.lower - median(r.byName["local (image already pulled)"].times) - r.rttCost).Seconds(), r.lower.Seconds())
	fmt.Fprintln(w, "| case | median time | x lower bound | faster than full pull | blob MB fetched | x needed | requests (blob GETs) | runs |")
	fmt.Fprintln(w, "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
	for _, cr := range r.cases {
		t := median(cr.times)
		by := medianInt(cr.bytes)
		need := "-"
		if p.needComp > 0 && by > 0 {
			need = fmt.Sprintf("%.2fx", float64(by)/float64(p.needComp))
		}
		fmt.Fprintf(w, "| %s | %.3f s | %.2fx | %.1fx | %.2f | %s | %d (%d) | %s |\n",
			cr.name, t.Seconds(), ratio(t, r.lower), ratio(pull, t), mb(by), need,
			medianInt(cr.requests), medianInt(cr.blobReqs), secondsList(cr.times))
	}
	fmt.Fprintln(w)
	writeSplits(w, r)
	if pr, lazy, opt := r.byName["poolfs, eStargz + profile"], r.byName["poolfs, eStargz"], r.byName["poolfs, eStargz optimized"]; pr != nil && len(pr.times) > 0 && len(lazy.times) > 0 && len(opt.times) > 0 {
		fmt.Fprintf(w, "Profile: %.2fx the unoptimized image's cold run, %.2fx the optimized image's.\n\n",
			ratio(median(pr.times), median(lazy.times)), ratio(median(pr.times), median(opt.times)))
	}
	is, ls := r.byName["image store, eStargz optimized"], r.byName["poolfs, eStargz optimized"]
	isWarm, local := r.byName["image store optimized, daemon cache warm"], r.byName["local (image already pulled)"]
	if len(is.times) > 0 && len(ls.times) > 0 && len(isWarm.times) > 0 && len(local.times) > 0 {
		fmt.Fprintf(w, "Image store (optimized): cold %.2fx the layer store's cold run, warm %.2fx the locally stored image.\n\n",
			ratio(median(is.times), median(ls.times)), ratio(median(isWarm.times), median(local.times)))
	}
}

// writeSplits writes where the cold poolfs runs' time went (timeSplit),
// for the cases that read blobs.
func writeSplits(w io.Writer, r *workloadResult) {
	var rows []*caseResult
	for _, cr := range r.cases {
		if len(cr.split) > 0 {
			rows = append(rows, cr)
		}
	}
	if len(rows) == 0 {
		return
	}
	fmt.Fprintln(w, "Where the time of those runs went, cut at the daemon's first and last blob byte in the registry's log (medians of each part, so they need not add up to the median time): before the first byte (podman's pull, the daemon's manifest and TOC reads); the blob bytes the daemon read, at the link's rate; the rest of the time between the two, when the link idled (round trips; a container computing with nothing asked for); after the last byte (the container's end, podman's teardown). Requests still under way when the container ended (a prefetch's) are left out. A run whose link never idled is at its link's floor for the bytes it read.")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| case | before the first blob byte | blob bytes at the link's rate | link idle between | after the last blob byte |")
	fmt.Fprintln(w, "| --- | ---: | ---: | ---: | ---: |")
	for _, cr := range rows {
		part := func(f func(timeSplit) time.Duration) string {
			ds := make([]time.Duration, len(cr.split))
			for i, sp := range cr.split {
				ds[i] = f(sp)
			}
			return fmt.Sprintf("%.3f s", median(ds).Seconds())
		}
		fmt.Fprintf(w, "| %s | %s | %s | %s | %s |\n", cr.name,
			part(func(sp timeSplit) time.Duration { return sp.lead }), part(func(sp timeSplit) time.Duration { return sp.link }),
			part(func(sp timeSplit) time.Duration { return sp.idle }), part(func(sp timeSplit) time.Duration { return sp.after }))
	}
	fmt.Fprintln(w)
}

func printFS(w io.Writer, r *fsResult) {
	fmt.Fprintln(w)
	writeFS(w, r)
}

func writeFS(w io.Writer, r *fsResult) {
	fmt.Fprintln(w, "### Through the mount vs local disk")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| measurement | poolfs mount | local disk | mount / disk speed |")
	fmt.Fprintln(w, "| --- | ---: | ---: | ---: |")
	mr, dr := median(r.mountRead), median(r.diskRead)
	mib := float64(r.bigMiB)
	fmt.Fprintf(w, "| warm sequential read of a %d MiB file, page cache dropped | %.3f s (%.0f MiB/s) | %.3f s (%.0f MiB/s) | %.0f%% |\n",
		r.bigMiB, mr.Seconds(), mib/mr.Seconds(), dr.Seconds(), mib/dr.Seconds(), 100*dr.Seconds()/mr.Seconds())
	if len(r.mountWalk1) > 0 {
		m1, m2, d1, d2 := median(r.mountWalk1), median(r.mountWalk2), median(r.diskWalk1), median(r.diskWalk2)
		fmt.Fprintf(w, "| metadata walk of the python root (`find -printf '%%s %%m'`, %d / %d entries), first, caches dropped | %.3f s | %.3f s | %.2fx disk time |\n",
			r.mountEntries, r.diskCount, m1.Seconds(), d1.Seconds(), ratio(m1, d1))
		fmt.Fprintf(w, "| metadata walk, second | %.3f s | %.3f s | %.2fx disk time |\n", m2.Seconds(), d2.Seconds(), ratio(m2, d2))
		if len(r.inPlace1) > 0 {
			i1, i2 := median(r.inPlace1), median(r.inPlace2)
			fmt.Fprintf(w, "| same walks with `--in-place-trees` (no read-only trees mount): first | %.3f s | %.3f s | %.2fx disk time |\n", i1.Seconds(), d1.Seconds(), ratio(i1, d1))
			fmt.Fprintf(w, "| `--in-place-trees`: second | %.3f s | %.3f s | %.2fx disk time |\n", i2.Seconds(), d2.Seconds(), ratio(i2, d2))
		}
	}
	if len(r.mountTar) > 0 {
		m1, m2, d1, d2 := median(r.mountTar), median(r.mountTarWarm), median(r.diskTar), median(r.diskTarWarm)
		fmt.Fprintf(w, "| whole-tree read of the python root (`tar -cf - . \\| cat`), page cache dropped | %.3f s | %.3f s | %.0f%% |\n",
			m1.Seconds(), d1.Seconds(), 100*d1.Seconds()/m1.Seconds())
		fmt.Fprintf(w, "| whole-tree read, page cache warm (second read) | %.3f s | %.3f s | %.0f%% |\n",
			m2.Seconds(), d2.Seconds(), 100*d2.Seconds()/m2.Seconds())
	}
	fmt.Fprintln(w)
	if len(r.mountTar) > 0 {
		fmt.Fprintf(w, "The tree read runs once the daemon's cache holds every chunk of the layer (an untimed first read fills it); "+
			"the python layer's tree is on the read-only trees mount, where the kernel opens files without asking the daemon. "+
			"Requests the daemon answered during the last read with the page cache dropped: %s; during the last warm read: %s; during the last second walk: %s.\n\n",
			opsString(r.tarOps), opsString(r.warmTarOps), opsString(r.walkOps))
	}
	// What "warm" means for the read: the daemon's cache holds the file,
	// its whole-file copy included, so reads can take FUSE passthrough.
	if r.whole {
		fmt.Fprintf(w, "*Warm* means the daemon's cache holds the file, its whole-file copy included: the first read through the mount "+
			"fills the chunk cache, the daemon then writes the file's whole-file copy in the background (reported %.1f s after that read), "+
			"and the timed reads open the file again once it has, so the kernel reads that copy directly (FUSE passthrough). "+
			"The local disk column reads a plain copy of the same bytes from the same disk.\n\n", r.wholeWait.Seconds())
	} else {
		fmt.Fprintf(w, "*Warm* means the daemon's chunk cache holds the file, but no whole-file copy was reported within %v "+
			"(passthrough off, or the copy failed): the timed reads went through the daemon, a FUSE request per read.\n\n",
			r.wholeWait.Round(time.Second))
	}
}

type report struct {
	c         config
	workloads []*workloadResult
	fs        *fsResult
	took      time.Duration
	date      time.Time
	load      [2]string // load averages when the run started and ended
}

func (rep report) write(path string) error {
	var b strings.Builder
	c := rep.c
	fmt.Fprintln(&b, "# Benchmarks")
	fmt.Fprintln(&b)
	fmt.Fprintf(&b, "Written by `make bench` (`go run ./test/bench`) on %s; the run took %v.\n\n", rep.date.Format("2006-01-02 15:04 MST"), rep.took.Round(time.Second))
	fmt.Fprintf(&b, "Machine: %s; load average (1, 5, 15 min) %s when the run started, %s when it ended "+
		"(other work on the machine spreads the times).\n\n", machine(), rep.load[0], rep.load[1])
	fmt.Fprintf(&b, "Link: %v per request, %g Mbit/s shared by all responses (in-process registry on 127.0.0.1 behind a user-space delay and token bucket). "+
		"%d cold run(s) per case, in rounds that run every case once in a shuffled order, each cold run followed by %d run(s) of the case measured after it (*local*, *daemon cache warm*), which take a fraction of a second; medians shown (all runs in the last column, in the order they ran, seconds). Flags: `%s`.\n\n",
		c.delay, c.mbit, c.runs, c.warmRuns, strings.Join(os.Args[1:], " "))
	store := "a podman store holding no images, initialized beforehand by `podman images` and one container of an image removed afterwards (its database and the overlay driver's feature probes, which a machine pays once, not per container start)"
	if c.newStore {
		store = "a podman store never used before (-new-store: its setup is timed too)"
	}
	fmt.Fprintln(&b, "Cold means "+store+", and for poolfs a freshly started daemon with an empty cache. "+
		"Each image is one layer holding a debootstrap minbase root. *Optimized* images are standard eStargz with the files the workload opens "+
		"(found with strace in a chroot, plus /etc/passwd and /etc/group which the runtime reads) first, before `.prefetch.landmark`. "+
		"*Needed* bytes are the compressed ranges of those files in the eStargz layer. Times are `podman run --rm --network=none IMAGE WORKLOAD`, pull included. "+
		"*Local* runs again on the store the full pull filled. *Daemon cache warm* is a run on another such store against the same daemon, whose cache now holds what the first run read: "+
		"the floor poolfs could reach with no network at all, i.e. the cost of pulling into a store without the image (the registry round trips and bookkeeping of the pull), which the lower bound (image already local) does not pay. "+
		"*Image store* cases run the image from the daemon's image store (docs/image-store.md), with no pull: `poolfs image add` on a first daemon, "+
		"then, cold, a daemon started again on the same ROOT with the chunks removed from its cache (it keeps the image records and the layers' TOCs) and the run begun as soon as it serves, "+
		"its startup prefetch of the store's layers racing the container; *daemon cache warm* is a run on the same daemon from another fresh podman store. "+
		"A warm run starts once its daemon has settled (no registry request for 0.5 s, no chunk waiting for the disk): the cold run's prefetch is over. "+
		"The ratios compare cases measured side by side in this run.")
	fmt.Fprintln(&b)
	for _, r := range rep.workloads {
		writeWorkload(&b, c, r)
	}
	if rep.fs != nil {
		writeFS(&b, rep.fs)
	}
	b.WriteString(reportNotes)
	return os.WriteFile(path, []byte(b.String()), 0o644)
}

func machine() string {
	var u syscall.Utsname
	kernel := "?"
	if syscall.Uname(&u) == nil {
		kernel = utsString(u.Release[:])
	}
	var si syscall.Sysinfo_t
	mem := "?"
	if syscall.Sysinfo(&si) == nil {
		mem = fmt.Sprintf("%.1f GiB", float64(si.Totalram)*float64(si.Unit)/(1<<30))
	}
	return fmt.Sprintf("%d CPUs (nproc), %s memory, Linux %s", runtime.NumCPU(), mem, kernel)
}

// loadAverage returns the first three fields of /proc/loadavg.
func loadAverage() string {
	b, err := os.ReadFile("/proc/loadavg")
	if f := strings.Fields(string(b)); err == nil && len(f) >= 3 {
		return strings.Join(f[:3], " ")
	}
	return "?"
}

func utsString(b []int8) string {
	var s []byte
	for _, c := range b {
		if c == 0 {
			break
		}
		s = append(s, byte(c))
	}
	return string(s)
}

// opsString lists FUSE request counts by operation, in a stable order.
func opsString(ops map[string]int64) string {
	if len(ops) == 0 {
		return "none"
	}
	var s []string
	for op, n := range ops {
		s = append(s, fmt.Sprintf("%d %s", n, op))
	}
	sort.Strings(s)
	return strings.Join(s, ", ")
}

func ratio(a, b time.Duration) float64 {
	if b == 0 {
		return 0
	}
	return float64(a) / float64(b)
}

func secondsList(ds []time.Duration) string {
	var s []string
	for _, d := range ds {
		s = append(s, fmt.Sprintf("%.2f", d.Seconds()))
	}
	return strings.Join(s, ", ")
}

func quoteArgs(argv []string) []string {
	out := make([]string, len(argv))
	for i, a := range argv {
		if strings.ContainsAny(a, " ()'") {
			a = "'" + a + "'"
		}
		out[i] = a
	}
	return out
}

const reportNotes = `### Notes

- *Needed* counts whole files. java maps lib/modules (about 130 MB) and
  reads little of it, so its needed bytes and lower bound are overstated,
  and its optimized image, which prioritizes whole files, prefetches all of
  modules: it fetches more than the unoptimized image, whose on-demand reads
  take only the chunks touched. Prioritizing whole files suits workloads
  that read the files they open.
- The gap between *daemon cache warm* and *local* is what a pull into a
  store without the image costs (podman's own registry round trips, pull
  bookkeeping, layer lookups through the store); it counts against poolfs
  in "x lower bound".
- "Faster than full pull" is bounded by the lower bound's own figure in
  that column: no start that pulls the image into a store, lazily or not,
  gets further ahead of a full pull than the lower bound does.
- A *daemon cache warm* run starts once the daemon has settled (no
  registry request for 0.5 s, nothing waiting for the disk): java's first
  run is over long before its prefetch of all of lib/modules (see above)
  is, and a warm run started at once would share the link and the CPUs
  with the end of that prefetch.
- Every fresh podman store (all cases) has run and removed one container
  of a small image before its timed run, as a machine's store has: the
  overlay driver's first-mount probes are paid once per boot, not per
  start, and the local case (a second run on its store) does not pay them.
- The registry, podman and the daemon share the machine's CPUs; on a busy
  machine the times spread (see the runs column).
`
