// Command bench measures how soon a container does useful work when its
// image is served lazily by poolfs, against a full pull and against a lower
// bound, on realistic Debian images behind an emulated network link. It is
// `make bench`; nothing in `make test` runs it.
//
// For each image (debootstrap minbase + python3, + openjdk-17-jre-headless)
// and workload it pushes the root as one layer, plain gzip and eStargz
// (unoptimized, and optimized: the files the workload opens first, before
// .prefetch.landmark), to an in-process registry behind a link with a delay
// per request and one shared bandwidth cap, then times cold
// `podman run --rm --network=none IMAGE WORKLOAD` (fresh podman store, fresh
// daemon, empty poolfs cache) several times. It also measures warm
// sequential reads and metadata walks through the mount against local disk.
// It prints a table and writes docs/benchmarks.md.
//
// Run as root: make bench (BENCH_FLAGS=-quick for a short run).
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/poolfs/poolfs/test/fixture"
)

type config struct {
	work      string
	out       string
	poolfs    string
	runs      int
	delay     time.Duration
	mbit      float64
	images    []string
	quick     bool
	skipFS    bool
	bigMiB    int
	fsRuns    int
	daemonArg []string
	variants  []variant
	// lazyVariants runs the variants on the unoptimized image as well.
	lazyVariants bool
	keep         bool
	workload     string
	noPull       bool
	warmRuns     int      // -warm-runs
	cases        []string // -cases: run only cases whose names contain one of these
	podmanLog    string
	perf         bool
	hold         bool
	newStore     bool
	profiled     bool
}

// variant is an extra poolfs case with other daemon flags (to measure a
// lever against its absence in the same run).
type variant struct {
	name string
	args []string
}

type variantFlag []variant

func (v *variantFlag) String() string { return fmt.Sprint(*v) }
func (v *variantFlag) Set(s string) error {
	name, args, ok := strings.Cut(s, "=")
	if !ok || name == "" {
		return fmt.Errorf("want NAME=FLAGS, got %q", s)
	}
	*v = append(*v, variant{name: name, args: strings.Fields(args)})
	return nil
}

func main() {
	var c config
	var images, daemonArgs string
	var variants variantFlag
	flag.StringVar(&c.work, "work", ".work/bench", "work `DIR`: cached rootfs tarballs and temporary stores")
	flag.StringVar(&c.out, "out", "docs/benchmarks.md", "Markdown report `FILE` (\"\": none)")
	flag.StringVar(&c.poolfs, "poolfs", "bin/poolfs", "the poolfs binary")
	flag.IntVar(&c.runs, "runs", 3, "cold runs per case (medians are reported)")
	flag.DurationVar(&c.delay, "delay", 20*time.Millisecond, "emulated delay per request (one round trip)")
	flag.Float64Var(&c.mbit, "bandwidth", 200, "emulated link bandwidth in Mbit/s, shared by all responses (0: no cap)")
	flag.StringVar(&images, "images", "python,java", "images to measure: python, java (none: only the read and walk measurements)")
	flag.BoolVar(&c.quick, "quick", false, "quick run: python image only, 1 run per case, 256 MiB read test")
	flag.BoolVar(&c.skipFS, "skip-fs", false, "skip the read throughput and metadata walk measurements")
	flag.IntVar(&c.bigMiB, "big-file-mb", 512, "`MiB` of the file read sequentially through the mount")
	flag.IntVar(&c.fsRuns, "fs-runs", 3, "runs of each throughput and walk measurement")
	flag.StringVar(&daemonArgs, "daemon-args", "", "extra flags for every `poolfs serve`")
	flag.BoolVar(&c.lazyVariants, "variants-unoptimized", false, "run each -variant on the unoptimized eStargz image too")
	flag.Var(&variants, "variant", "extra poolfs case on the optimized image: `NAME=FLAGS` for poolfs serve (repeatable)")
	flag.BoolVar(&c.keep, "keep", false, "keep temporary directories (daemon logs, request logs)")
	flag.StringVar(&c.workload, "workload", "", "only workloads whose name contains `TEXT`")
	flag.StringVar(&c.podmanLog, "podman-log-level", "", "podman --log-level for the timed runs (kept in podman.stderr with -keep)")
	flag.BoolVar(&c.perf, "perf", false, "record the daemon with `perf record -g` during each timed poolfs run (perf.data in the run's directory; implies -keep)")
	flag.BoolVar(&c.newStore, "new-store", false, "time cold runs on a podman store never used before (default: a store with no images, initialized by one `podman images`)")
	flag.BoolVar(&c.hold, "hold", false, "push the images, then serve them behind the link until interrupted (for experiments by hand)")
	flag.IntVar(&c.warmRuns, "warm-runs", 3, "runs of the local and daemon-cache-warm cases after each cold run (each warm one from a fresh podman store): cheap, and short enough for the machine's noise to matter")
	casesFlag := flag.String("cases", "", "run only the cases whose names contain one of these `TEXTS` separated by | (and the cases measured with them: a pull's local run, a cold run's warm one); for quick iterations")
	flag.BoolVar(&c.noPull, "no-pull", false, "skip the full pull and local cases (no lower bound; for quick iterations)")
	flag.BoolVar(&c.profiled, "profiled", false, "add the case of the unoptimized image with a startup profile recorded by an earlier cold run on another daemon, pushed to the registry (`poolfs profile push`) and found there by the timed daemons' lookup")
	slow := flag.Bool("slow-link", false, "emulate the slow link: 80 ms per request, 50 Mbit/s (overrides -delay and -bandwidth)")
	flag.Parse()
	if *slow {
		c.delay, c.mbit = 80*time.Millisecond, 50
	}
	c.keep = c.keep || c.perf
	c.images = strings.Split(images, ",")
	c.daemonArg = strings.Fields(daemonArgs)
	c.variants = variants
	if *casesFlag != "" {
		c.cases = strings.Split(*casesFlag, "|")
	}
	if c.quick {
		c.images = []string{"python"}
		c.runs = 1
		c.bigMiB = min(c.bigMiB, 256)
		c.fsRuns = 1
		c.warmRuns = 1
	}
	if err := run(c); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

// wantCase says whether -cases lets the case named name run.
func (c *config) wantCase(name string) bool {
	if len(c.cases) == 0 {
		return true
	}
	for _, s := range c.cases {
		if strings.Contains(name, s) {
			return true
		}
	}
	return false
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "%s "+format+"\n", append([]any{time.Now().Format("15:04:05")}, args...)...)
}

// imageSpec is a Debian root and the workloads run on it.
type imageSpec struct {
	name      string
	packages  string
	workloads []workload
}

type workload struct {
	name string
	argv []string
	want string // expected in the output (stdout+stderr)
}

var specs = []imageSpec{
	{name: "python", packages: "python3", workloads: []workload{
		{name: "print(42)", argv: []string{"python3", "-c", "print(42)"}, want: "42"},
		{name: "import json, asyncio, email, http.client", argv: []string{"python3", "-c", "import json, asyncio, email, http.client"}},
	}},
	{name: "java", packages: "openjdk-17-jre-headless", workloads: []workload{
		{name: "java -version", argv: []string{"java", "-version"}, want: "openjdk version"},
	}},
}

func run(c config) error {
	start, startLoad := time.Now(), loadAverage()
	if os.Geteuid() != 0 {
		return fmt.Errorf("run as root (debootstrap, podman with its own --root, FUSE, drop_caches)")
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	for _, p := range []string{"debootstrap", "strace", "podman"} {
		if _, err := lookPath(p); err != nil {
			return fmt.Errorf("%s not found: run scripts/install-bench-deps.sh", p)
		}
	}
	var err error
	if c.work, err = filepath.Abs(c.work); err != nil {
		return err
	}
	if c.poolfs, err = filepath.Abs(c.poolfs); err != nil {
		return err
	}
	if _, err := os.Stat(c.poolfs); err != nil {
		return fmt.Errorf("%w (make build)", err)
	}
	if err := os.MkdirAll(c.work, 0o755); err != nil {
		return err
	}
	repo, err := fixture.RepoRoot()
	if err != nil {
		return err
	}

	// With the referrers API, as the registries profiles are published to
	// have it; the others cost the profile lookup one more round trip.
	reg, err := fixture.NewRegistryServer("127.0.0.1:0", fixture.WithReferrersAPI())
	if err != nil {
		return err
	}
	defer reg.Close()
	lnk := newLink(c.delay, c.mbit)

	b := &bench{c: c, reg: reg, link: lnk, repo: repo, ctx: ctx}
	defer b.cleanup()
	var results []*workloadResult
	for _, name := range c.images {
		if name == "none" {
			continue // only the file system measurements
		}
		var spec *imageSpec
		for i := range specs {
			if specs[i].name == name {
				spec = &specs[i]
			}
		}
		if spec == nil {
			return fmt.Errorf("unknown image %q", name)
		}
		reg.SetMiddleware(nil)
		imgs, err := b.prepare(*spec)
		if err != nil {
			return err
		}
		if c.hold {
			reg.SetMiddleware(lnk.middleware)
			for _, w := range imgs {
				fmt.Printf("%s: %s %s %s\n", w.w.name, w.gzipRef, w.lazyRef, w.optRef)
			}
			<-ctx.Done()
			return nil
		}
		for _, w := range imgs {
			if !strings.Contains(w.w.name, c.workload) {
				continue
			}
			reg.SetMiddleware(lnk.middleware)
			r, err := b.measureWorkload(w)
			if err != nil {
				return err
			}
			results = append(results, r)
			printWorkload(os.Stdout, c, r)
		}
	}

	var fsr *fsResult
	if !c.skipFS {
		reg.SetMiddleware(nil)
		if fsr, err = b.measureFS(); err != nil {
			return err
		}
		printFS(os.Stdout, fsr)
	}
	rep := report{c: c, workloads: results, fs: fsr, took: time.Since(start), date: time.Now().UTC(), load: [2]string{startLoad, loadAverage()}}
	if c.out != "" {
		out := c.out
		if !filepath.IsAbs(out) {
			out = filepath.Join(repo, out)
		}
		if err := rep.write(out); err != nil {
			return err
		}
		logf("wrote %s", c.out)
	}
	logf("done in %v", time.Since(start).Round(time.Second))
	return nil
}
