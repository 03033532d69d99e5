// Command demo shows poolfs end to end on one machine: it starts a registry
// on 127.0.0.1, pushes a small eStargz image to it (busybox base layer plus a
// layer with a greeting script and a large file nobody reads), starts
// `poolfs serve`, runs the image with podman using poolfs as an additional
// layer store, and prints how many bytes of the layers the registry served
// compared with their compressed size.
//
// Run it as root after scripts/install-deps.sh and `make build`:
//
//	go run ./test/demo -poolfs bin/poolfs
package main

import (
	"archive/tar"
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	digest "github.com/opencontainers/go-digest"

	"github.com/poolfs/poolfs/layer"
	"github.com/poolfs/poolfs/test/fixture"
)

const helloScript = `#!/bin/sh
echo "hello from a lazily pulled layer"
echo
echo "Files in /usr/local/share/poolfs-demo (listing needs only metadata):"
ls -l /usr/local/share/poolfs-demo
echo
echo "Reading README.txt fetches just its chunk:"
sha256sum /usr/local/share/poolfs-demo/README.txt
echo "large.bin was listed but never read."
`

const readme = `This file lives in the second layer of the demo image.
poolfs fetched it from the registry with an HTTP range request when
sha256sum read it.
`

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

func run() error {
	poolfsBin := flag.String("poolfs", "bin/poolfs", "the poolfs binary")
	keep := flag.Bool("keep", false, "keep the temporary directory (daemon log, podman store)")
	noPool := flag.Bool("no-pool", false, "run podman without poolfs, for comparison (a normal pull)")
	serveOnly := flag.Bool("serve-registry", false, "only push the image and serve the registry until interrupted")
	flag.Parse()

	if os.Geteuid() != 0 && !*serveOnly {
		return errors.New("run as root (podman with a custom --root and a FUSE mount)")
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	reg, err := fixture.NewRegistryServer("127.0.0.1:0")
	if err != nil {
		return err
	}
	defer reg.Close()

	base, err := fixture.BusyboxRootTar()
	if err != nil {
		return err
	}
	app := fixture.BuildTar([]fixture.TarEntry{
		{Name: "usr", Type: tar.TypeDir, Mode: 0o755},
		{Name: "usr/local", Type: tar.TypeDir, Mode: 0o755},
		{Name: "usr/local/bin", Type: tar.TypeDir, Mode: 0o755},
		{Name: "usr/local/bin/hello", Mode: 0o755, Content: []byte(helloScript)},
		{Name: "usr/local/share", Type: tar.TypeDir, Mode: 0o755},
		{Name: "usr/local/share/poolfs-demo", Type: tar.TypeDir, Mode: 0o755},
		{Name: "usr/local/share/poolfs-demo/README.txt", Mode: 0o644, Content: []byte(readme)},
		{Name: "usr/local/share/poolfs-demo/large.bin", Mode: 0o644, Content: fixture.RandomBytes(42, 16<<20)},
	})
	image := fixture.ImageRef(reg.Host, "demo/hello", "latest")
	fmt.Printf("Pushing %s (eStargz) to the demo registry...\n", image)
	_, layers, err := fixture.PushImage(ctx, image, [][]byte{base, app}, fixture.ImageOptions{Cmd: []string{"/usr/local/bin/hello"}})
	if err != nil {
		return err
	}
	var total int64
	for i, l := range layers {
		fmt.Printf("  layer %d: %s, %s compressed, TOC %s\n", i, l.Digest, size(l.Size), short(tocDigest(l.Annotations).String()))
		total += l.Size
	}
	if *serveOnly {
		fmt.Printf("Registry at %s; image %s. Interrupt to stop.\n", reg.URL, image)
		<-ctx.Done()
		return nil
	}

	tmp, err := os.MkdirTemp("", "poolfs-demo-")
	if err != nil {
		return err
	}
	if *keep {
		fmt.Printf("Keeping %s\n", tmp)
	} else {
		defer os.RemoveAll(tmp)
	}
	repo, err := fixture.RepoRoot()
	if err != nil {
		return err
	}

	als := filepath.Join(tmp, "store")
	if *noPool {
		als = ""
	} else {
		bin, err := filepath.Abs(*poolfsBin)
		if err != nil {
			return err
		}
		if _, err := os.Stat(bin); err != nil {
			return fmt.Errorf("%w (run `make build` first)", err)
		}
		fmt.Printf("Starting %s serve %s ...\n", *poolfsBin, als)
		d, err := fixture.StartDaemon(fixture.DaemonOptions{
			Binary:             bin,
			Root:               als,
			CacheDir:           filepath.Join(tmp, "cache"),
			InsecureRegistries: []string{reg.Host},
			LogLevel:           "info",
			LogFile:            filepath.Join(tmp, "poolfs.log"),
		})
		if err != nil {
			return err
		}
		defer func() {
			if err := d.Stop(); err != nil {
				fmt.Fprintln(os.Stderr, "demo: stopping poolfs:", err)
			}
		}()
		fmt.Printf("  mounted %s\n", d.Mountpoint)
	}

	pm, err := fixture.NewPodman(filepath.Join(tmp, "podman"), fixture.PodmanOptions{
		RepoRoot:           repo,
		ALS:                als,
		InsecureRegistries: []string{reg.Host},
	})
	if err != nil {
		return err
	}
	defer pm.Cleanup()

	reg.ResetStats()
	args := []string{"run", "--rm", "--network=none", "--tls-verify=false", image, "/usr/local/bin/hello"}
	fmt.Printf("\n$ %s\n", pm.CommandLine(args...))
	runCtx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	start := time.Now()
	out, stderr, err := pm.Run(runCtx, args...)
	took := time.Since(start)
	fmt.Print(indent(out))
	if err != nil {
		return err
	}
	if s := strings.TrimSpace(stderr); s != "" {
		fmt.Printf("(podman stderr)\n%s\n", indent(s))
	}

	st := reg.Stats()
	var fetched int64
	fmt.Printf("\npodman run took %v. Bytes of layer blobs the registry served:\n", took.Round(time.Millisecond))
	for i, l := range layers {
		pb := st.PerBlob[l.Digest]
		fetched += pb.Bytes
		fmt.Printf("  layer %d: %s of %s (%.1f%%) in %d range and %d whole-blob requests\n",
			i, size(pb.Bytes), size(l.Size), pct(pb.Bytes, l.Size), pb.RangeGets, pb.FullBlobGets)
	}
	fmt.Printf("  total:   %s of %s (%.1f%%)\n", size(fetched), size(total), pct(fetched, total))

	if sl, err := pm.StoreLayers(); err == nil {
		fromPool := 0
		for _, l := range sl {
			if target, err := pm.LayerDiffLink(l.ID); err == nil && target != "" {
				fromPool++
			}
		}
		fmt.Printf("  podman's store has %d layers; %d of them are served by poolfs (their diff directory is a link into the pool)\n", len(sl), fromPool)
	}
	return nil
}

func indent(s string) string {
	if s == "" {
		return ""
	}
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return "  " + strings.Join(lines, "\n  ") + "\n"
}

func size(n int64) string {
	switch {
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}

func pct(a, b int64) float64 {
	if b == 0 {
		return 0
	}
	return 100 * float64(a) / float64(b)
}

func short(s string) string {
	if len(s) > 19 {
		return s[:19] + "..."
	}
	return s
}

// tocDigest is the TOC digest a layer's annotations publish ("" if none).
func tocDigest(ann map[string]string) digest.Digest {
	d, _ := layer.TOCDigestFromAnnotations(ann)
	return d
}
