package main

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"strings"
	"time"

	"github.com/containerd/stargz-snapshotter/estargz"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	ggcrremote "github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
	digest "github.com/opencontainers/go-digest"

	"github.com/poolfs/poolfs/internal/progress"
	"github.com/poolfs/poolfs/internal/trace"
)

const optimizeUsage = `Usage: poolfs optimize [flags] SRC DST -- CMD [ARG]...

Runs CMD once in SRC's root file system (a chroot of the flattened image,
under strace), records which files it opens in order, and pushes to DST the
same image with every layer rewritten as standard eStargz whose first files,
before .prefetch.landmark, are the ones CMD opened from that layer. poolfs
fetches those files right after it opens the layer. Needs root and strace.

Flags:
`

// optimize is "poolfs optimize".
// Its progress goes to errOut: on a terminal a status line (extracting,
// the workload's run, layers read and converted, bytes pushed), elsewhere
// one plain line per step; the pushed image's reference goes to out.
func optimize(ctx context.Context, args []string, out, errOut io.Writer) error {
	fl := flag.NewFlagSet("optimize", flag.ContinueOnError)
	var insecure listFlag
	fl.Var(&insecure, "insecure-registry", "registry `HOST[:PORT]` reached over plain HTTP (repeatable; loopback registries always are)")
	platform := fl.String("platform", "linux/amd64", "`OS/ARCH` to pick from an index")
	fl.Usage = func() {
		fmt.Fprint(fl.Output(), optimizeUsage)
		fl.PrintDefaults()
	}
	var cmdArgs []string
	for i, a := range args {
		if a == "--" {
			args, cmdArgs = args[:i], args[i+1:]
			break
		}
	}
	pos, err := parseInterspersed(fl, args)
	if err != nil {
		return err
	}
	if len(pos) != 2 || len(cmdArgs) == 0 {
		fl.Usage()
		return errors.New("want SRC DST -- CMD...")
	}
	plat, err := v1.ParsePlatform(*platform)
	if err != nil {
		return err
	}
	parse := func(s string) (name.Reference, error) {
		r, err := name.ParseReference(s)
		if err != nil {
			return nil, err
		}
		reg := r.Context().RegistryStr()
		if isLoopbackHost(reg) || contains(insecure, reg) {
			return name.ParseReference(s, name.Insecure)
		}
		return r, nil
	}
	src, err := parse(pos[0])
	if err != nil {
		return err
	}
	dst, err := parse(pos[1])
	if err != nil {
		return err
	}
	opts := []ggcrremote.Option{ggcrremote.WithContext(ctx), ggcrremote.WithPlatform(*plat)}
	img, err := ggcrremote.Image(src, opts...)
	if err != nil {
		return fmt.Errorf("fetching %s: %w", src, err)
	}
	p := progressFor(errOut)
	defer p.Done()
	logf := func(format string, args ...any) { p.Log("poolfs optimize: "+format, args...) }

	// 1. The workload's files, in the order it opens them.
	root, err := os.MkdirTemp("", "poolfs-optimize-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(root)
	extracted, err := extractFlat(img, root, func(n int64) { p.Show("extracting %s: %s", src, humanBytes(n)) })
	if err != nil {
		return fmt.Errorf("extracting %s: %w", src, err)
	}
	logf("extracted %s: %s", src, humanBytes(extracted))
	workload := strings.Join(cmdArgs, " ")
	stopClock := showClock(p, "running "+workload)
	files, err := trace.FilesOpened(root, cmdArgs)
	took := stopClock()
	if err != nil {
		return err
	}
	logf("%s opened %d files (%.1f s under strace)", workload, len(files), took.Seconds())

	// 2. Each file belongs to the topmost layer that has it.
	layers, err := img.Layers()
	if err != nil {
		return err
	}
	tars := make([][]byte, len(layers))
	owner := map[string]int{}
	for i, l := range layers {
		rc, err := l.Uncompressed()
		if err != nil {
			return fmt.Errorf("reading layer %d of %s: %w", i, src, err)
		}
		tars[i], err = io.ReadAll(&countingReader{r: rc, seen: func(n int64) {
			p.Show("reading layer %d/%d: %s", i+1, len(layers), humanBytes(n))
		}})
		rc.Close()
		if err != nil {
			return fmt.Errorf("reading layer %d of %s: %w", i, src, err)
		}
		tr := tar.NewReader(bytes.NewReader(tars[i]))
		for {
			h, err := tr.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				return fmt.Errorf("layer %d: %w", i, err)
			}
			owner[path.Clean("/" + h.Name)[1:]] = i
		}
	}
	prio := make([][]string, len(layers))
	for _, f := range files {
		if i, ok := owner[f]; ok {
			prio[i] = append(prio[i], f)
		}
	}

	// 3. Rewrite every layer as eStargz and put the image together.
	cfg, err := img.ConfigFile()
	if err != nil {
		return err
	}
	cfg = cfg.DeepCopy()
	cfg.RootFS.DiffIDs = nil
	built := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	built = mutate.ConfigMediaType(built, types.OCIConfigJSON)
	for i, t := range tars {
		p.Show("converting layer %d/%d (%s tar)", i+1, len(tars), humanBytes(int64(len(t))))
		eopts := []estargz.Option{estargz.WithPrioritizedFiles(prio[i])}
		var missed []string
		eopts = append(eopts, estargz.WithAllowPrioritizeNotFound(&missed))
		blob, err := estargz.Build(io.NewSectionReader(bytes.NewReader(t), 0, int64(len(t))), eopts...)
		if err != nil {
			return fmt.Errorf("layer %d: %w", i, err)
		}
		b, err := io.ReadAll(blob)
		blob.Close()
		if err != nil {
			return fmt.Errorf("layer %d: %w", i, err)
		}
		usize, err := blob.UncompressedSize()
		if err != nil {
			return err
		}
		l := &builtLayer{blob: b, diffID: blob.DiffID(), digest: digest.FromBytes(b)}
		diffID, err := v1.NewHash(l.diffID.String())
		if err != nil {
			return err
		}
		cfg.RootFS.DiffIDs = append(cfg.RootFS.DiffIDs, diffID)
		built, err = mutate.Append(built, mutate.Addendum{Layer: l, Annotations: map[string]string{
			estargz.TOCJSONDigestAnnotation:         blob.TOCDigest().String(),
			estargz.StoreUncompressedSizeAnnotation: fmt.Sprint(usize),
		}})
		if err != nil {
			return err
		}
		logf("layer %d/%d converted: %d prioritized files, %d bytes eStargz", i+1, len(tars), len(prio[i])-len(missed), len(b))
	}
	if built, err = mutate.ConfigFile(built, cfg); err != nil {
		return err
	}
	pushed, err := push(ctx, dst, built, p)
	if err != nil {
		return fmt.Errorf("pushing %s: %w", dst, err)
	}
	logf("pushed %s: %s", dst, humanBytes(pushed))
	d, err := built.Digest()
	if err != nil {
		return err
	}
	p.Done() // stdout may be the same terminal
	fmt.Fprintf(out, "%s@%s\n", dst.Context().Name(), d)
	return nil
}

// push writes img to dst, showing the bytes pushed on p's status line,
// and returns how many were (blobs the registry has already are not).
func push(ctx context.Context, dst name.Reference, img v1.Image, p *progress.Line) (int64, error) {
	// Buffered: the writer blocks on a full channel. Write closes it.
	updates := make(chan v1.Update, 64)
	done := make(chan int64)
	go func() {
		var complete int64
		for u := range updates {
			if u.Error == nil {
				complete = u.Complete
				p.Show("pushing %s: %s of %s", dst, humanBytes(u.Complete), humanBytes(u.Total))
			}
		}
		done <- complete
	}()
	err := ggcrremote.Write(dst, img, ggcrremote.WithContext(ctx), ggcrremote.WithProgress(updates))
	return <-done, err
}

// showClock shows "WHAT: N s" on p's status line, counting, until the
// returned function is called; that returns the time taken.
func showClock(p *progress.Line, what string) (stop func() time.Duration) {
	start := time.Now()
	quit, exited := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(exited)
		if !p.Terminal() {
			return
		}
		tick := time.NewTicker(200 * time.Millisecond)
		defer tick.Stop()
		for {
			p.Show("%s: %.0f s", what, time.Since(start).Seconds())
			select {
			case <-quit:
				return
			case <-tick.C:
			}
		}
	}()
	return func() time.Duration {
		close(quit)
		<-exited
		return time.Since(start)
	}
}

// countingReader calls seen with the bytes read so far after each read.
type countingReader struct {
	r    io.Reader
	n    int64
	seen func(int64)
}

func (c *countingReader) Read(b []byte) (int, error) {
	n, err := c.r.Read(b)
	c.n += int64(n)
	c.seen(c.n)
	return n, err
}

// extractFlat writes the image's flattened file system (whiteouts applied)
// into dir, owners and modes kept, calling seen with the tar bytes
// extracted so far, and returns their total.
func extractFlat(img v1.Image, dir string, seen func(int64)) (int64, error) {
	rc := mutate.Extract(img)
	defer rc.Close()
	cr := &countingReader{r: rc, seen: seen}
	cmd := exec.Command("tar", "-C", dir, "--numeric-owner", "-xpf", "-")
	cmd.Stdin = cr
	if out, err := cmd.CombinedOutput(); err != nil {
		return cr.n, fmt.Errorf("tar: %w: %s", err, out)
	}
	return cr.n, nil
}

// builtLayer is an eStargz blob as a go-containerregistry layer with the
// right digest and diff_id.
type builtLayer struct {
	blob           []byte
	diffID, digest digest.Digest
}

func (l *builtLayer) Digest() (v1.Hash, error) { return v1.NewHash(l.digest.String()) }
func (l *builtLayer) DiffID() (v1.Hash, error) { return v1.NewHash(l.diffID.String()) }
func (l *builtLayer) Size() (int64, error)     { return int64(len(l.blob)), nil }
func (l *builtLayer) MediaType() (types.MediaType, error) {
	return types.OCILayer, nil
}
func (l *builtLayer) Compressed() (io.ReadCloser, error) {
	return io.NopCloser(bytes.NewReader(l.blob)), nil
}
func (l *builtLayer) Uncompressed() (io.ReadCloser, error) {
	// The gzip members of an eStargz blob concatenate to its tar.
	return gzip.NewReader(bytes.NewReader(l.blob))
}

func isLoopbackHost(hostport string) bool {
	h := hostport
	if i := strings.LastIndex(h, ":"); i >= 0 && !strings.HasSuffix(h, "]") {
		h = h[:i]
	}
	h = strings.Trim(h, "[]")
	return h == "localhost" || strings.HasPrefix(h, "127.") || h == "::1"
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
