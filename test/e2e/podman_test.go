package e2e

import (
	"archive/tar"
	"bytes"
	"encoding/base64"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/poolfs/poolfs/test/fixture"
)

const (
	helloText  = "hello from a layer podman never downloaded\n"
	secretText = "for root only\n"
)

// helloImageTars returns the layers of the test image: the busybox root, and
// a layer with /hello.txt and an 8 MiB file nobody reads (so that the bytes
// the registry serves for that layer must stay far below its size).
func helloImageTars(t *testing.T) [][]byte {
	t.Helper()
	base, err := fixture.BusyboxRootTar()
	if err != nil {
		t.Fatal(err)
	}
	app := fixture.BuildTar([]fixture.TarEntry{
		{Name: "hello.txt", Mode: 0o644, Content: []byte(helloText)},
		{Name: "secret.txt", Mode: 0o600, Content: []byte(secretText)},
		{Name: "unused", Type: tar.TypeDir, Mode: 0o755},
		{Name: "unused/big.bin", Mode: 0o644, Content: fixture.RandomBytes(99, 8<<20)},
	})
	return [][]byte{base, app}
}

// TestPodmanRunFromPool runs a container twice from an eStargz image with
// poolfs as podman's additional layer store (grammar 2, podman 4.3.1 looks
// layers up by compressed digest), and checks that the layers came from the
// pool: no whole-blob download of any layer, the unread layer mostly not
// fetched, and podman's store using links into the pool as layer diffs. A
// container run as a user other than root reads the files its modes let it
// read (overlayfs reaches the store, which is root's, as its mounter).
func TestPodmanRunFromPool(t *testing.T) {
	requireRoot(t)
	requirePodman(t)
	ctx := testContext(t, 5*time.Minute)
	reg := fixture.StartRegistry(t)
	ref := fixture.ImageRef(reg.Host, "test/hello", "v1")
	_, layers, err := fixture.PushImage(ctx, ref, helloImageTars(t), fixture.ImageOptions{Cmd: []string{"/bin/sh"}})
	if err != nil {
		t.Fatal(err)
	}
	_, als := startDaemon(t, reg)
	pm := newPodman(t, als, reg)
	reg.ResetStats()

	var before int64
	for i := 1; i <= 2; i++ {
		runHello(t, ctx, pm, ref)
		st := reg.Stats()
		t.Logf("run %d: the registry served %d bytes of blobs in %d range GETs so far (%d requests, %d for manifests)", i, st.BlobBytes-before, st.RangeGets, st.Requests, st.ManifestRequests)
		before = st.BlobBytes
	}

	if fi, err := os.Stat(als); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("ALS root: %v, %v; want mode 0700, like podman's store", fi.Mode(), err)
	}
	for _, c := range []struct {
		user, file, want string
		ok               bool
	}{
		{"1000", "/hello.txt", helloText, true},
		{"1000:1000", "/secret.txt", "Permission denied", false},
		{"0", "/secret.txt", secretText, true},
	} {
		out, stderr, err := pm.Run(ctx, "run", "--rm", "--network=none", "--user", c.user, ref, "cat", c.file)
		if got := out + stderr; (err == nil) != c.ok || !strings.Contains(got, c.want) {
			t.Errorf("cat %s as user %s: %v, output %q, want %q", c.file, c.user, err, got, c.want)
		}
	}

	st := reg.Stats()
	for i, l := range layers {
		pb := st.PerBlob[l.Digest]
		t.Logf("layer %d %s: %d of %d compressed bytes served in %d range / %d whole-blob GETs",
			i, l.Digest, pb.Bytes, l.Size, pb.RangeGets, pb.FullBlobGets)
		if pb.FullBlobGets != 0 {
			t.Errorf("layer %d: %d whole-blob GETs: podman downloaded the layer instead of using the pool", i, pb.FullBlobGets)
		}
	}
	// No profile is published: the registry lookup (on by default) costs
	// the image one referrers request, two on a registry without the
	// referrers API like this one (the API's 404, then the referrers tag),
	// whatever the number of layers and runs.
	if n := st.ReferrersRequests; n < 1 || n > 2 {
		t.Errorf("%d referrers requests for one image, want 1 or 2", n)
	}
	if app := layers[1]; st.PerBlob[app.Digest].Bytes > app.Size/4 {
		t.Errorf("layer 1: %d of %d bytes fetched, though only hello.txt was read", st.PerBlob[app.Digest].Bytes, app.Size)
	}
	if t.Failed() {
		t.Logf("registry requests:\n%s", reg.RequestLog())
	}

	checkImageLayers(t, pm, ref, layers, filepath.Join(als, ".pool"))
}

// checkImageLayers checks podman's view of the image: its RootFS layers are
// the diff_ids pushed, and the store's records of the layers (layers.json)
// have a diff that links into pool (if pool is not "").
func checkImageLayers(t *testing.T, pm *fixture.Podman, ref string, layers []fixture.LayerInfo, pool string) {
	t.Helper()
	ctx := testContext(t, time.Minute)
	out, _, err := pm.Run(ctx, "image", "inspect", "--format", "{{json .RootFS.Layers}}", ref)
	if err != nil {
		t.Fatal(err)
	}
	var diffIDs []string
	if err := json.Unmarshal([]byte(strings.TrimSpace(out)), &diffIDs); err != nil {
		t.Fatalf("image inspect: %v: %q", err, out)
	}
	if len(diffIDs) != len(layers) {
		t.Fatalf("image inspect shows %d layers, pushed %d", len(diffIDs), len(layers))
	}
	for i, l := range layers {
		if diffIDs[i] != l.DiffID.String() {
			t.Errorf("layer %d: podman has diff_id %s, pushed %s", i, diffIDs[i], l.DiffID)
		}
	}

	records, err := pm.StoreLayers()
	if err != nil {
		t.Fatal(err)
	}
	for i, l := range layers {
		var rec *fixture.StoreLayer
		for j := range records {
			r := &records[j]
			if r.CompressedDiffDigest == l.Digest.String() || r.DiffDigest == l.DiffID.String() {
				rec = r
				break
			}
		}
		if rec == nil {
			b, _ := json.MarshalIndent(records, "", "  ")
			t.Errorf("layer %d (%s): no record in layers.json:\n%s", i, l.Digest, b)
			continue
		}
		if rec.CompressedDiffDigest != "" && rec.CompressedDiffDigest != l.Digest.String() {
			t.Errorf("layer %d: layers.json compressed-diff-digest %s, want %s", i, rec.CompressedDiffDigest, l.Digest)
		}
		if pool == "" {
			continue
		}
		target, err := pm.LayerDiffLink(rec.ID)
		if err != nil {
			t.Errorf("layer %d: %v", i, err)
			continue
		}
		if !strings.HasPrefix(target, pool+"/") {
			t.Errorf("layer %d: store diff of %s is %q, not a link into %s: the layer did not come from the pool", i, rec.ID, target, pool)
		}
	}
}

// TestPodmanStaticALS checks the test environment and the checks above
// without poolfs: podman uses a hand-made additional layer store (plain
// directories in grammar 2, laid out the way containers/storage 1.43 looks
// them up) and pulls no layer blob. If this fails, podman or the machine is
// at fault, not poolfs.
func TestPodmanStaticALS(t *testing.T) {
	requireRoot(t)
	requirePodman(t)
	if _, err := exec.LookPath("tar"); err != nil {
		t.Skip("skipping: needs tar")
	}
	ctx := testContext(t, 5*time.Minute)
	reg := fixture.StartRegistry(t)
	ref := fixture.ImageRef(reg.Host, "test/static", "v1")
	tars := helloImageTars(t)
	_, layers, err := fixture.PushImage(ctx, ref, tars, fixture.ImageOptions{})
	if err != nil {
		t.Fatal(err)
	}

	als := filepath.Join(tempDir(t), "als")
	pool := filepath.Join(als, ".pool")
	for i, l := range layers {
		dir := filepath.Join(pool, base64.StdEncoding.EncodeToString([]byte(ref)), l.Digest.String())
		diff := filepath.Join(dir, "diff")
		if err := os.MkdirAll(diff, 0o755); err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command("tar", "-x", "--numeric-owner", "-C", diff)
		cmd.Stdin = bytes.NewReader(tars[i])
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("extracting layer %d: %v\n%s", i, err, out)
		}
		info, _ := json.Marshal(map[string]any{
			"compressed-diff-digest": l.Digest.String(),
			"compressed-size":        l.Size,
			"diff-digest":            l.DiffID.String(),
			"diff-size":              l.UncompressedSize,
			"compression":            2,
		})
		if err := os.WriteFile(filepath.Join(dir, "info"), info, 0o644); err != nil {
			t.Fatal(err)
		}
		blob, err := fixture.FetchBlob(ctx, ref, l.Digest)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "blob"), blob, 0o644); err != nil {
			t.Fatal(err)
		}
	}

	pm := newPodman(t, als, reg)
	reg.ResetStats()
	out, stderr, err := pm.Run(ctx, "run", "--rm", "--network=none", "--tls-verify=false", ref, "cat", "/hello.txt")
	if err != nil {
		t.Fatal(err)
	}
	if out != helloText {
		t.Errorf("output %q, want %q\nstderr:\n%s", out, helloText, stderr)
	}
	st := reg.Stats()
	for i, l := range layers {
		if pb := st.PerBlob[l.Digest]; pb.Bytes != 0 {
			t.Errorf("layer %d: registry served %d bytes of it (%d range, %d whole GETs) though the store has it", i, pb.Bytes, pb.RangeGets, pb.FullBlobGets)
		}
	}
	if t.Failed() {
		t.Logf("podman stderr:\n%s\nregistry requests:\n%s", stderr, reg.RequestLog())
	}
	checkImageLayers(t, pm, ref, layers, pool)
}
