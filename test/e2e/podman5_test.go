package e2e

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/poolfs/poolfs/control"
	"github.com/poolfs/poolfs/test/fixture"
)

// requirePodman5 returns the podman v5.4.2 that scripts/install-podman5.sh
// builds (make deps runs it), or skips.
func requirePodman5(t *testing.T) string {
	t.Helper()
	bin := fixture.Podman5Path()
	if _, err := os.Stat(bin); err != nil {
		t.Skipf("skipping: podman 5 not built (%v); scripts/install-podman5.sh builds it", err)
	}
	return bin
}

// TestPodman5RunFromPool runs the hello image with podman 5.4.2, which looks
// additional layers up by their TOC digest (containers/storage >= 1.54)
// where Debian's podman 4.3.1 uses the blob digest: the layers must come
// from the pool (no whole-blob download, the unread layer mostly not
// fetched), the store must record the TOC digests, a second run must start
// from the same store without asking the registry for a blob, and `rmi`
// must release the layers (their use counts back to zero).
func TestPodman5RunFromPool(t *testing.T) {
	requireRoot(t)
	requirePodman(t) // conmon and runc come with Debian's podman
	bin := requirePodman5(t)
	ctx := testContext(t, 5*time.Minute)
	reg := fixture.StartRegistry(t)
	ref := fixture.ImageRef(reg.Host, "test/hello5", "v1")
	_, layers, err := fixture.PushImage(ctx, ref, helloImageTars(t), fixture.ImageOptions{Cmd: []string{"/bin/sh"}})
	if err != nil {
		t.Fatal(err)
	}
	_, als := startDaemon(t, reg)
	runPodman5FromPool(t, ctx, reg, bin, als, ref, layers)
}

// runPodman5FromPool runs `cat /hello.txt` in the image at ref (the hello
// layer last) twice
// with the podman 5 at bin and the pool at als as its layer store, and
// checks what TestPodman5RunFromPool says: layers looked up by TOC digest
// (layers[i].TOCDigest: eStargz's, or zstd:chunked's manifest checksum),
// lazily fetched, the second run from the store, rmi releasing them.
func runPodman5FromPool(t *testing.T, ctx context.Context, reg *fixture.Registry, bin, als, ref string, layers []fixture.LayerInfo) {
	t.Helper()
	pm, err := fixture.NewPodman(tempDir(t), fixture.PodmanOptions{Binary: bin, ALS: als, InsecureRegistries: []string{reg.Host}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := pm.Cleanup(); err != nil {
			t.Logf("podman store cleanup: %v", err)
		}
	})
	if out, _, err := pm.Run(ctx, "--version"); err != nil || !strings.Contains(out, "5.4.2") {
		t.Fatalf("podman --version: %q, %v", out, err)
	}
	reg.ResetStats()

	var blobBytes int64
	for i := 1; i <= 2; i++ {
		runHello(t, ctx, pm, ref)
		st := reg.Stats()
		t.Logf("run %d: the registry served %d bytes of blobs in %d range GETs so far", i, st.BlobBytes, st.RangeGets)
		if i == 2 && st.BlobBytes != blobBytes {
			t.Errorf("run 2 fetched %d more blob bytes: the second run did not start from the store", st.BlobBytes-blobBytes)
		}
		blobBytes = st.BlobBytes
	}

	st := reg.Stats()
	for i, l := range layers {
		if l.TOCDigest == "" {
			t.Fatalf("layer %d has no TOC digest: the test image is neither eStargz nor zstd:chunked", i)
		}
		if pb := st.PerBlob[l.Digest]; pb.FullBlobGets != 0 {
			t.Errorf("layer %d: %d whole-blob GETs: podman downloaded the layer instead of using the pool", i, pb.FullBlobGets)
		}
	}
	if app := layers[len(layers)-1]; st.PerBlob[app.Digest].Bytes > app.Size/4 {
		t.Errorf("app layer (the last): %d of %d bytes fetched, though only hello.txt was read", st.PerBlob[app.Digest].Bytes, app.Size)
	}

	// containers/storage >= 1.54 asks by TOC digest and records it.
	records, err := pm.StoreLayers()
	if err != nil {
		t.Fatal(err)
	}
	pool := filepath.Join(als, ".pool")
	for i, l := range layers {
		var rec *fixture.StoreLayer
		for j := range records {
			if records[j].TOCDigest == l.TOCDigest.String() {
				rec = &records[j]
			}
		}
		if rec == nil {
			t.Errorf("layer %d: no layers.json record with toc-digest %s (records: %+v)", i, l.TOCDigest, records)
			continue
		}
		if rec.DiffDigest != "" && rec.DiffDigest != l.DiffID.String() {
			t.Errorf("layer %d: diff-digest %s, pushed diff_id %s", i, rec.DiffDigest, l.DiffID)
		}
		target, err := pm.LayerDiffLink(rec.ID)
		if err != nil {
			t.Errorf("layer %d: %v", i, err)
		} else if !strings.HasPrefix(target, pool+"/") || !strings.Contains(target, "/"+l.TOCDigest.String()+"/") {
			t.Errorf("layer %d: store diff %q is not the pool's path for its TOC digest %s", i, target, l.TOCDigest)
		}
	}

	ctl := control.NewClient(fixture.ControlSocketFor(als))
	status, err := ctl.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	used := 0
	for _, ls := range status.Layers {
		if ls.Uses > 0 {
			used++
		}
	}
	if used != len(layers) {
		t.Errorf("with the image in the store, %d of %d layers have uses: %+v", used, len(layers), status.Layers)
	}
	if _, _, err := pm.Run(ctx, "rmi", ref); err != nil {
		t.Fatal(err)
	}
	if status, err = ctl.Status(ctx); err != nil {
		t.Fatal(err)
	}
	for _, ls := range status.Layers {
		if ls.Uses != 0 {
			t.Errorf("after rmi, layer %s still has %d uses", ls.Digest, ls.Uses)
		}
	}
	if t.Failed() {
		t.Logf("registry requests:\n%s", tail(reg.RequestLog(), 100))
	}
}
