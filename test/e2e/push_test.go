package e2e

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"

	"github.com/poolfs/poolfs/test/fixture"
)

// What podman push/save and buildah push do with a lazily pulled image
// (docs/push-and-save.md): they read each layer's `blob` file once from
// start to end, decompress it and (push) recompress it. These tests check
// that this costs each blob about once from the registry, and that the
// images written are complete.

// fetchLimit is how much of a blob one of these operations may fetch.
const fetchLimit = 1.1

// lazyImage pushes the hello image to reg and returns its reference and
// layers.
func lazyImage(t *testing.T, ctx context.Context, reg *fixture.Registry, repo string) (string, []fixture.LayerInfo) {
	t.Helper()
	ref := fixture.ImageRef(reg.Host, repo, "v1")
	_, layers, err := fixture.PushImage(ctx, ref, helloImageTars(t), fixture.ImageOptions{Cmd: []string{"/bin/sh"}})
	if err != nil {
		t.Fatal(err)
	}
	return ref, layers
}

// checkFetched fails if the registry served more than fetchLimit times any
// layer's blob since its stats were reset.
func checkFetched(t *testing.T, what string, reg *fixture.Registry, layers []fixture.LayerInfo) {
	t.Helper()
	st := reg.Stats()
	for i, l := range layers {
		pb := st.PerBlob[l.Digest]
		t.Logf("%s: layer %d: %d bytes of its %d-byte blob fetched (%.2fx) in %d range GETs",
			what, i, pb.Bytes, l.Size, float64(pb.Bytes)/float64(l.Size), pb.RangeGets)
		if float64(pb.Bytes) > fetchLimit*float64(l.Size) {
			t.Errorf("%s: layer %d: fetched %d bytes, more than %.1fx its %d-byte blob", what, i, pb.Bytes, fetchLimit, l.Size)
		}
		if pb.FullBlobGets != 0 {
			t.Errorf("%s: layer %d: %d whole-blob GETs: the client downloaded the layer itself", what, i, pb.FullBlobGets)
		}
	}
}

// pushedImage is what a registry holds for a reference: the manifest's
// layers and the config's diff_ids.
type pushedImage struct {
	Layers []struct {
		Digest      digest.Digest     `json:"digest"`
		MediaType   string            `json:"mediaType"`
		Size        int64             `json:"size"`
		Annotations map[string]string `json:"annotations"`
	} `json:"layers"`
	DiffIDs []digest.Digest
}

func fetchPushed(t *testing.T, ctx context.Context, ref string) pushedImage {
	t.Helper()
	body, _, _, err := fixture.FetchManifest(ctx, ref)
	if err != nil {
		t.Fatal(err)
	}
	var m struct {
		pushedImage
		Config struct {
			Digest digest.Digest `json:"digest"`
		} `json:"config"`
	}
	if err := json.Unmarshal(body, &m); err != nil {
		t.Fatalf("manifest of %s: %v", ref, err)
	}
	raw, err := fixture.FetchBlob(ctx, ref, m.Config.Digest)
	if err != nil {
		t.Fatal(err)
	}
	var cf struct {
		RootFS struct {
			DiffIDs []digest.Digest `json:"diff_ids"`
		} `json:"rootfs"`
	}
	if err := json.Unmarshal(raw, &cf); err != nil {
		t.Fatalf("config of %s: %v", ref, err)
	}
	m.DiffIDs = cf.RootFS.DiffIDs
	return m.pushedImage
}

// checkSameContent checks that the image at ref has the source's layers,
// by diff_id (the digests of the uncompressed tars), and logs how each
// blob was written.
func checkSameContent(t *testing.T, ctx context.Context, ref string, layers []fixture.LayerInfo) pushedImage {
	t.Helper()
	p := fetchPushed(t, ctx, ref)
	if len(p.DiffIDs) < len(layers) || len(p.Layers) != len(p.DiffIDs) {
		t.Fatalf("%s: %d layers, %d diff_ids; the source has %d layers", ref, len(p.Layers), len(p.DiffIDs), len(layers))
	}
	for i, l := range layers {
		if p.DiffIDs[i] != l.DiffID {
			t.Errorf("%s: layer %d has diff_id %s, the source %s", ref, i, p.DiffIDs[i], l.DiffID)
		}
		t.Logf("%s: layer %d written as %s (%s, %d annotations); the source's blob is %s",
			ref, i, p.Layers[i].Digest, p.Layers[i].MediaType, len(p.Layers[i].Annotations), l.Digest)
	}
	return p
}

// runHello runs `cat /hello.txt` in ref with pm and checks that it prints
// helloText.
func runHello(t *testing.T, ctx context.Context, pm *fixture.Podman, ref string) {
	t.Helper()
	out, stderr, err := pm.Run(ctx, "run", "--rm", "--network=none", "--tls-verify=false", ref, "cat", "/hello.txt")
	if err != nil {
		t.Fatal(err)
	}
	if out != helloText {
		t.Errorf("%s: output %q, want %q\nstderr:\n%s", ref, out, helloText, stderr)
	}
}

// TestPodmanPushLazyImage: lazy pull, then `podman push` to a second
// registry. Each blob is fetched about once, and the pushed image has the
// source's layers. With Debian's podman 4.3.1 and, if built, podman 5.4.2
// (which looks layers up by TOC digest).
func TestPodmanPushLazyImage(t *testing.T) {
	requireRoot(t)
	requirePodman(t)
	clients := map[string]string{"v4": ""} // short: podman refuses a runroot path over 50 characters
	if bin := fixture.Podman5Path(); fileExists(bin) {
		clients["v5"] = bin
	}
	for name, bin := range clients {
		t.Run(name, func(t *testing.T) {
			ctx := testContext(t, 5*time.Minute)
			src, dst := fixture.StartRegistry(t), fixture.StartRegistry(t)
			ref, layers := lazyImage(t, ctx, src, "test/push")
			_, als := startDaemon(t, src)
			pm := newPodman(t, als, src, dst)
			if bin != "" {
				pm.Binary = bin
			}
			src.ResetStats()
			if _, _, err := pm.Run(ctx, "pull", "--tls-verify=false", ref); err != nil {
				t.Fatal(err)
			}
			pushed := fixture.ImageRef(dst.Host, "test/pushed", "v1")
			if _, _, err := pm.Run(ctx, "push", "--tls-verify=false", ref, pushed); err != nil {
				t.Fatal(err)
			}
			checkFetched(t, "pull+push", src, layers)
			checkSameContent(t, ctx, pushed, layers)
			runHello(t, ctx, newPodman(t, "", dst), pushed)
		})
	}
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// TestPodmanSaveLazyImage: lazy pull, then `podman save`; the archive
// loads into another store and runs there.
func TestPodmanSaveLazyImage(t *testing.T) {
	requireRoot(t)
	requirePodman(t)
	ctx := testContext(t, 5*time.Minute)
	reg := fixture.StartRegistry(t)
	ref, layers := lazyImage(t, ctx, reg, "test/save")
	_, als := startDaemon(t, reg)
	pm := newPodman(t, als, reg)
	reg.ResetStats()
	if _, _, err := pm.Run(ctx, "pull", "--tls-verify=false", ref); err != nil {
		t.Fatal(err)
	}
	archive := filepath.Join(tempDir(t), "hello.tar")
	if _, _, err := pm.Run(ctx, "save", "-o", archive, ref); err != nil {
		t.Fatal(err)
	}
	checkFetched(t, "pull+save", reg, layers)

	other := newPodman(t, "", reg)
	if _, _, err := other.Run(ctx, "load", "-i", archive); err != nil {
		t.Fatal(err)
	}
	runHello(t, ctx, other, ref)
}

// TestBuildahOnLazyBase: buildah from / run / commit / push on a lazily
// pulled base. The base is fetched about once in all; the pushed image has
// the base's layers and the new one, and a fresh store with poolfs as its
// layer store runs it.
func TestBuildahOnLazyBase(t *testing.T) {
	requireRoot(t)
	requirePodman(t)
	if _, err := exec.LookPath("buildah"); err != nil {
		t.Skip("skipping: buildah is not installed (scripts/install-deps.sh installs it)")
	}
	ctx := testContext(t, 5*time.Minute)
	src, dst := fixture.StartRegistry(t), fixture.StartRegistry(t)
	ref, layers := lazyImage(t, ctx, src, "test/base")
	_, als := startDaemon(t, src)
	bh := newPodman(t, als, src, dst)
	bh.Binary = "buildah"
	src.ResetStats()

	out, _, err := bh.Run(ctx, "from", "--tls-verify=false", ref)
	if err != nil {
		t.Fatal(err)
	}
	ctr := strings.TrimSpace(out)
	if _, _, err := bh.Run(ctx, "run", "--network=none", ctr, "sh", "-c", "cat /hello.txt > /copy.txt"); err != nil {
		t.Fatal(err)
	}
	built := "localhost/built:v1"
	if _, _, err := bh.Run(ctx, "commit", ctr, built); err != nil {
		t.Fatal(err)
	}
	pushed := fixture.ImageRef(dst.Host, "test/built", "v1")
	if _, _, err := bh.Run(ctx, "push", "--tls-verify=false", built, pushed); err != nil {
		t.Fatal(err)
	}
	checkFetched(t, "from+run+commit+push", src, layers)
	p := checkSameContent(t, ctx, pushed, layers)
	if len(p.Layers) != len(layers)+1 {
		t.Errorf("pushed image has %d layers, want the base's %d and one more", len(p.Layers), len(layers))
	}

	// A fresh store, with a poolfs of its own serving the second registry.
	_, als2 := startDaemon(t, dst)
	fresh := newPodman(t, als2, dst)
	out, stderr, err := fresh.Run(ctx, "run", "--rm", "--network=none", "--tls-verify=false", pushed, "cat", "/copy.txt")
	if err != nil {
		t.Fatal(err)
	}
	if out != helloText {
		t.Errorf("built image: /copy.txt is %q, want %q\nstderr:\n%s", out, helloText, stderr)
	}
}

// TestBlobReadTwice: dd of a layer's blob file, twice: the bytes are the
// blob, and both reads together fetch it about once.
func TestBlobReadTwice(t *testing.T) {
	requireRoot(t)
	ctx := testContext(t, 2*time.Minute)
	reg := fixture.StartRegistry(t)
	ref, layers := lazyImage(t, ctx, reg, "test/dd")
	_, als := startDaemon(t, reg)
	big := layers[1]
	dir := filepath.Join(als, ".pool", base64.StdEncoding.EncodeToString([]byte(ref)), big.Digest.String())
	if _, err := os.Stat(filepath.Join(dir, "info")); err != nil {
		t.Fatal(err)
	}
	reg.ResetStats()
	copyOut := filepath.Join(tempDir(t), "blob")
	for i := 1; i <= 2; i++ {
		cmd := exec.CommandContext(ctx, "dd", "if="+filepath.Join(dir, "blob"), "of="+copyOut, "bs=1M")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("dd %d: %v\n%s", i, err, out)
		}
		b, err := os.ReadFile(copyOut)
		if err != nil {
			t.Fatal(err)
		}
		if got := digest.FromBytes(b); got != big.Digest || int64(len(b)) != big.Size {
			t.Fatalf("dd %d: %d bytes, digest %s; want %d bytes, %s", i, len(b), got, big.Size, big.Digest)
		}
	}
	checkFetched(t, "dd twice", reg, layers[1:])
}
