package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/containerd/stargz-snapshotter/estargz"
	digest "github.com/opencontainers/go-digest"

	"github.com/poolfs/poolfs/test/fixture"
)

// TestOptimize runs `poolfs optimize` on a gzip image with `cat
// /hello.txt` as the workload, its error output a pipe: one plain line per
// step (extracted, files opened, each layer converted, pushed), no
// carriage return or escape code, and the pushed image's app layer puts
// hello.txt before the landmark. Then again on a terminal (script(1)'s
// pseudo-terminal): the status line is drawn and cleared in place, and
// the same steps are logged.
func TestOptimize(t *testing.T) {
	requireRoot(t)
	if _, err := exec.LookPath("strace"); err != nil {
		t.Skip("strace not installed (make deps installs it)")
	}
	ctx := testContext(t, 3*time.Minute)
	reg := fixture.StartRegistry(t)
	src := fixture.ImageRef(reg.Host, "test/plain", "v1")
	if _, _, err := fixture.PushImage(ctx, src, helloImageTars(t), fixture.ImageOptions{Gzip: true}); err != nil {
		t.Fatal(err)
	}
	steps := []string{
		"poolfs optimize: extracted " + src + ": ",
		"poolfs optimize: cat /hello.txt opened ",
		"poolfs optimize: layer 1/2 converted: ",
		"poolfs optimize: layer 2/2 converted: 1 prioritized files, ",
		"poolfs optimize: pushed ",
	}

	dst := fixture.ImageRef(reg.Host, "test/optimized", "v1")
	cmd := exec.CommandContext(ctx, poolfsBinary(t), "optimize", src, dst, "--", "cat", "/hello.txt")
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	if err := cmd.Run(); err != nil {
		t.Fatalf("poolfs optimize: %v\n%s", err, errOut.String())
	}
	t.Logf("stderr (a pipe):\n%s", errOut.String())
	lines := strings.Split(strings.TrimSuffix(errOut.String(), "\n"), "\n")
	if len(lines) != len(steps) || strings.ContainsAny(errOut.String(), "\r\033") {
		t.Errorf("on a pipe, want %d plain lines, no \\r or escape code; got %q", len(steps), errOut.String())
	}
	for i, want := range steps {
		if i < len(lines) && !strings.HasPrefix(lines[i], want) {
			t.Errorf("line %d: %q, want it to start with %q", i+1, lines[i], want)
		}
	}
	if !strings.HasPrefix(out.String(), "127.0.0.1:") || !strings.Contains(out.String(), "/test/optimized@sha256:") {
		t.Errorf("stdout %q, want the pushed image's digest reference", out.String())
	}
	checkPrioritized(t, ctx, dst, "hello.txt")

	// On a terminal.
	dst2 := fixture.ImageRef(reg.Host, "test/optimized", "tty")
	line := strings.Join([]string{poolfsBinary(t), "optimize", src, dst2, "--", "cat", "/hello.txt"}, " ")
	tty, err := exec.CommandContext(ctx, "script", "-q", "-e", "-c", line, "/dev/null").Output()
	if err != nil {
		t.Fatalf("poolfs optimize on a terminal: %v\n%q", err, tty)
	}
	t.Logf("on a terminal: %q", tty)
	screen := string(tty)
	for _, want := range append(steps, "\r\033[K", "/test/optimized@sha256:") {
		if !strings.Contains(screen, want) {
			t.Errorf("on a terminal, the output has no %q", want)
		}
	}
	checkPrioritized(t, ctx, dst2, "hello.txt")
}

// checkPrioritized fails the test unless the last layer of ref is
// eStargz with file before its .prefetch.landmark.
func checkPrioritized(t *testing.T, ctx context.Context, ref, file string) {
	t.Helper()
	body, _, _, err := fixture.FetchManifest(ctx, ref)
	if err != nil {
		t.Fatal(err)
	}
	var mf struct {
		Layers []struct {
			Digest      digest.Digest     `json:"digest"`
			Annotations map[string]string `json:"annotations"`
		} `json:"layers"`
	}
	if err := json.Unmarshal(body, &mf); err != nil || len(mf.Layers) == 0 {
		t.Fatalf("manifest of %s: %v: %s", ref, err, body)
	}
	last := mf.Layers[len(mf.Layers)-1]
	if last.Annotations[estargz.TOCJSONDigestAnnotation] == "" {
		t.Errorf("%s: the last layer has no TOC digest annotation: %v", ref, last.Annotations)
	}
	blob, err := fixture.FetchBlob(ctx, ref, last.Digest)
	if err != nil {
		t.Fatal(err)
	}
	r, err := estargz.Open(io.NewSectionReader(bytes.NewReader(blob), 0, int64(len(blob))))
	if err != nil {
		t.Fatalf("%s: the last layer is not eStargz: %v", ref, err)
	}
	landmark, ok := r.Lookup(estargz.PrefetchLandmark)
	if !ok {
		t.Fatalf("%s: the last layer has no %s", ref, estargz.PrefetchLandmark)
	}
	if e, ok := r.Lookup(file); !ok || e.Offset >= landmark.Offset {
		t.Errorf("%s: %s is not before %s", ref, file, estargz.PrefetchLandmark)
	}
}
