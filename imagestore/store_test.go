package imagestore

import (
	"archive/tar"
	"bufio"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"
	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"

	"github.com/poolfs/poolfs/cache"
	"github.com/poolfs/poolfs/layer"
	"github.com/poolfs/poolfs/pool"
	"github.com/poolfs/poolfs/remote"
	"github.com/poolfs/poolfs/test/fixture"
)

// holdEnv makes the test binary a reader that holds a shared fcntl lock on
// the file it names until its stdin closes (fcntl locks are per process, so
// a reader must be another process).
const holdEnv = "IMAGESTORE_TEST_HOLD_LOCK"

func TestMain(m *testing.M) {
	if path := os.Getenv(holdEnv); path != "" {
		os.Exit(holdReadLock(path))
	}
	os.Exit(m.Run())
}

func holdReadLock(path string) int {
	f, err := os.Open(path)
	if err != nil {
		fmt.Println(err)
		return 1
	}
	lk := unix.Flock_t{Type: unix.F_RDLCK}
	if err := unix.FcntlFlock(f.Fd(), unix.F_SETLKW, &lk); err != nil {
		fmt.Println(err)
		return 1
	}
	fmt.Println("locked")
	_, _ = bufio.NewReader(os.Stdin).ReadString('\n')
	return 0
}

func newDaemon(t *testing.T, reg *fixture.Registry, root string) *Daemon {
	t.Helper()
	l := logrus.New()
	l.SetOutput(io.Discard)
	log := logrus.NewEntry(l)
	res := remote.New(remote.Options{Insecure: []string{reg.Host}, Log: log})
	p := pool.New(res, cache.NewMemory(64<<20), log)
	d, err := Open(root, Options{Pool: p, Resolver: res, Log: log})
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func push(ctx context.Context, t *testing.T, reg *fixture.Registry, repo, tag string, contents []string, o fixture.ImageOptions) (string, []fixture.LayerInfo) {
	t.Helper()
	ref := fixture.ImageRef(reg.Host, repo, tag)
	var tars [][]byte
	for i, c := range contents {
		tars = append(tars, fixture.BuildTar([]fixture.TarEntry{
			{Name: "d", Type: tar.TypeDir, Mode: 0o755},
			{Name: fmt.Sprintf("d/f%d", i), Mode: 0o644, Content: []byte(c)},
		}))
	}
	_, layers, err := fixture.PushImage(ctx, ref, tars, o)
	if err != nil {
		t.Fatal(err)
	}
	return ref, layers
}

func readRaw(t *testing.T, path string) []map[string]any {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out []map[string]any
	if err := json.Unmarshal(b, &out); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return out
}

// TestAddLayout checks what containers/storage 1.43 reads of an added
// image, computed here independently of the package's own helpers where
// the format is containers/storage's.
func TestAddLayout(t *testing.T) {
	ctx := context.Background()
	reg := fixture.StartRegistry(t)
	ref, layers := push(ctx, t, reg, "test/layout", "v1", []string{"base", "app"}, fixture.ImageOptions{})
	root := t.TempDir()
	d := newDaemon(t, reg, root)

	var progress []Progress
	im, err := d.Add(ctx, ref, func(p Progress) { progress = append(progress, p) })
	if err != nil {
		t.Fatal(err)
	}
	if len(progress) != 3 || progress[2].Resolved != 2 || progress[2].Total != 2 {
		t.Errorf("progress %+v, want 0/2, 1/2, 2/2", progress)
	}
	dir := filepath.Join(root, "images")

	// Layer IDs as containers/image computes them.
	ids := []string{layers[0].DiffID.Encoded()}
	ids = append(ids, digest.SHA256.FromString(ids[0]+"+"+layers[1].DiffID.Encoded()).Encoded())
	ls := readRaw(t, filepath.Join(dir, "overlay-layers", "layers.json"))
	if len(ls) != 2 {
		t.Fatalf("layers.json has %d layers, want 2", len(ls))
	}
	for i, l := range ls {
		want := map[string]any{
			"id":                     ids[i],
			"compressed-diff-digest": layers[i].Digest.String(),
			"compressed-size":        float64(layers[i].Size),
			"diff-digest":            layers[i].DiffID.String(),
			"compression":            float64(2),
		}
		if i > 0 {
			want["parent"] = ids[i-1]
		}
		for k, v := range want {
			if l[k] != v {
				t.Errorf("layer %d: %s = %v, want %v", i, k, l[k], v)
			}
		}
		if n, _ := l["diff-size"].(float64); n <= 0 {
			t.Errorf("layer %d: diff-size %v; podman fails an image with a layer of unknown size", i, l["diff-size"])
		}
		// The overlay driver's files.
		ldir := filepath.Join(dir, "overlay", ids[i])
		link, err := os.ReadFile(filepath.Join(ldir, "link"))
		if err != nil || len(link) != 26 {
			t.Fatalf("layer %d: link %q (%v), want a 26-character name", i, link, err)
		}
		if target, err := os.Readlink(filepath.Join(dir, "overlay", "l", string(link))); err != nil || target != "../"+ids[i]+"/diff" {
			t.Errorf("layer %d: l/%s -> %q (%v)", i, link, target, err)
		}
		lower, err := os.ReadFile(filepath.Join(ldir, "lower"))
		if i == 0 && err == nil {
			t.Errorf("base layer has a lower file: %q", lower)
		}
		if i == 1 {
			parentLink, _ := os.ReadFile(filepath.Join(dir, "overlay", ids[0], "link"))
			if string(lower) != "l/"+string(parentLink) {
				t.Errorf("layer 1: lower %q, want l/%s", lower, parentLink)
			}
		}
		target, err := os.Readlink(filepath.Join(ldir, "diff"))
		wantTarget := "../../../.pool/" + base64.URLEncoding.EncodeToString([]byte(im.Digested)) + "/" + layers[i].Digest.String() + "/diff"
		if err != nil || target != wantTarget {
			t.Errorf("layer %d: diff -> %q (%v), want %q", i, target, err, wantTarget)
		}
	}

	is := readRaw(t, filepath.Join(dir, "overlay-images", "images.json"))
	if len(is) != 1 {
		t.Fatalf("images.json has %d images, want 1", len(is))
	}
	rec := is[0]
	if rec["layer"] != ids[1] || rec["id"] != im.ID || rec["digest"] != im.Digest.String() {
		t.Errorf("image record %v; want layer %s, id %s, digest %s", rec, ids[1], im.ID, im.Digest)
	}
	if names, _ := rec["names"].([]any); len(names) != 1 || names[0] != ref {
		t.Errorf("names %v, want [%s]", rec["names"], ref)
	}
	// Big data: containers/storage's file names, the bytes the registry
	// has (digests checked), and the config's digest is the image ID.
	bigNames, _ := rec["big-data-names"].([]any)
	digests, _ := rec["big-data-digests"].(map[string]any)
	var sawConfig bool
	for _, n := range bigNames {
		key := n.(string)
		file := key
		if key != "manifest" {
			file = "=" + base64.StdEncoding.EncodeToString([]byte(key))
		}
		b, err := os.ReadFile(filepath.Join(dir, "overlay-images", im.ID, file))
		if err != nil {
			t.Errorf("big data %s: %v", key, err)
			continue
		}
		if got := digest.FromBytes(b).String(); got != digests[key] {
			t.Errorf("big data %s: content digest %s, record says %v", key, got, digests[key])
		}
		if key == "sha256:"+im.ID {
			sawConfig = true
		}
	}
	if !sawConfig || !slices.Contains(bigNames, any("manifest-"+im.Digest.String())) {
		t.Errorf("big-data-names %v lack the config or the manifest-<digest>", bigNames)
	}
	for _, lf := range []string{"overlay-images/images.lock", "overlay-layers/layers.lock"} {
		b, err := os.ReadFile(filepath.Join(dir, lf))
		if err != nil || len(b) != lastWriterIDSize {
			t.Errorf("%s: %d bytes (%v), want the %d-byte last-writer ID", lf, len(b), err, lastWriterIDSize)
		}
	}
	for i, l := range layers {
		if !d.Keeps(l.Digest) {
			t.Errorf("Keeps(layer %d) = false", i)
		}
	}

	// Reopened from disk: the same store.
	d2 := newDaemon(t, reg, root)
	if got, want := d2.List(), d.List(); len(got) != 1 || got[0].ID != want[0].ID || got[0].Layers != 2 || got[0].Size != want[0].Size {
		t.Errorf("reopened: %+v, want %+v", got, want)
	}
}

func TestAddRefusesGzip(t *testing.T) {
	ctx := context.Background()
	reg := fixture.StartRegistry(t)
	ref, layers := push(ctx, t, reg, "test/gzip", "v1", []string{"a", "b"}, fixture.ImageOptions{Gzip: true})
	root := t.TempDir()
	d := newDaemon(t, reg, root)
	_, err := d.Add(ctx, ref, nil)
	if !errors.Is(err, layer.ErrNoFormat) || !strings.Contains(err.Error(), "layer 1 ("+layers[0].Digest.String()+")") {
		t.Fatalf("Add of a gzip image: %v; want ErrNoFormat naming layer 1", err)
	}
	if _, err := os.Stat(filepath.Join(root, "images", "overlay-images", "images.json")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("images.json written after a refused add (%v)", err)
	}
	if _, err := os.Stat(filepath.Join(root, "images", "overlay-images", "images.lock")); err != nil {
		t.Errorf("the lock file podman opens read-only must exist: %v", err)
	}
}

// TestSyncAndRemove: a moved tag goes to the new image and the old one
// stays, nameless; rm of a name drops that name (and the image with its
// last name), rm of an ID the image; layers go with their last image.
func TestSyncAndRemove(t *testing.T) {
	ctx := context.Background()
	reg := fixture.StartRegistry(t)
	ref, old := push(ctx, t, reg, "test/sync", "v1", []string{"base", "one"}, fixture.ImageOptions{})
	d := newDaemon(t, reg, t.TempDir())
	first, err := d.Add(ctx, ref, nil)
	if err != nil {
		t.Fatal(err)
	}
	stable, _ := push(ctx, t, reg, "test/sync", "stable", []string{"base", "one"}, fixture.ImageOptions{})
	if _, err := d.Add(ctx, stable, nil); err != nil {
		t.Fatal(err)
	}
	if ims := d.List(); len(ims) != 1 || len(ims[0].Names) != 2 {
		t.Fatalf("one image under two tags, got %+v", ims)
	}

	_, moved := push(ctx, t, reg, "test/sync", "v1", []string{"base", "two"}, fixture.ImageOptions{})
	res, err := d.Sync(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	var movedTo digest.Digest
	for _, r := range res {
		if r.Name == ref {
			movedTo = r.To
			if r.From != first.Digest || r.To == r.From {
				t.Errorf("sync of %s: %+v, want a move from %s", ref, r, first.Digest)
			}
		} else if r.From != r.To {
			t.Errorf("sync of %s moved it: %+v", r.Name, r)
		}
	}
	ims := d.List()
	if len(ims) != 2 {
		t.Fatalf("after sync: %+v, want the old and the new image", ims)
	}
	for _, im := range ims {
		switch im.Digest {
		case first.Digest:
			if !slices.Equal(im.Names, []string{stable}) {
				t.Errorf("old image names %v, want [%s]", im.Names, stable)
			}
		case movedTo:
			if !slices.Equal(im.Names, []string{ref}) {
				t.Errorf("new image names %v, want [%s]", im.Names, ref)
			}
		default:
			t.Errorf("unexpected image %+v", im)
		}
	}
	if !d.Keeps(moved[1].Digest) || !d.Keeps(old[1].Digest) {
		t.Error("Keeps: both images' layers must be kept")
	}

	if _, err := d.Remove(ctx, []string{"nothere:v9"}); err == nil {
		t.Error("Remove of a name not in the store succeeded")
	}
	if _, err := d.Remove(ctx, []string{ref}); err != nil {
		t.Fatal(err)
	}
	if d.Keeps(moved[1].Digest) || !d.Keeps(moved[0].Digest) {
		t.Error("after rm: the removed image's own layer must go, the shared base stay")
	}
	if _, err := d.Remove(ctx, []string{first.ID[:12]}); err != nil {
		t.Fatal(err)
	}
	if ims := d.List(); len(ims) != 0 || d.Keeps(old[0].Digest) {
		t.Errorf("after removing everything: %+v", ims)
	}
}

// TestCommitWaitsForReaders: an update waits while a reader (another
// process, as podman is) holds images.lock shared, and then changes the
// last-writer ID readers compare.
func TestCommitWaitsForReaders(t *testing.T) {
	s, err := open(filepath.Join(t.TempDir(), "images"), "pool", nil)
	if err != nil {
		t.Fatal(err)
	}
	lock := s.path(imagesDir, imagesLock)
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), holdEnv+"="+lock)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Wait()
	defer stdin.Close()
	if line, _ := bufio.NewReader(stdout).ReadString('\n'); line != "locked\n" {
		t.Fatalf("reader: %q", line)
	}

	before, _ := os.ReadFile(lock)
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if err := s.commit(ctx, nil, nil); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("commit while a reader holds the lock: %v, want it to wait", err)
	}
	done := make(chan error, 1)
	go func() { done <- s.commit(context.Background(), nil, nil) }()
	time.Sleep(50 * time.Millisecond)
	select {
	case err := <-done:
		t.Fatalf("commit returned while the reader held the lock: %v", err)
	default:
	}
	stdin.Close()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	after, _ := os.ReadFile(lock)
	if len(after) != lastWriterIDSize || string(after) == string(before) {
		t.Errorf("last-writer ID not renewed: %d bytes", len(after))
	}
}

func TestStorageName(t *testing.T) {
	for in, want := range map[string]string{
		"busybox":                     "docker.io/library/busybox:latest",
		"docker.io/library/busybox:1": "docker.io/library/busybox:1",
		"127.0.0.1:5000/a/b:v1":       "127.0.0.1:5000/a/b:v1",
		"quay.io/x/y@sha256:" + strings.Repeat("a", 64): "quay.io/x/y@sha256:" + strings.Repeat("a", 64),
	} {
		got, err := StorageName(in)
		if err != nil || got != want {
			t.Errorf("StorageName(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	if _, err := StorageName("UPPER/case"); err == nil {
		t.Error("StorageName accepted an invalid reference")
	}
}

func TestBigDataFile(t *testing.T) {
	for key, want := range map[string]string{
		"manifest":      "manifest",
		"sha256:abc":    "=" + base64.StdEncoding.EncodeToString([]byte("sha256:abc")),
		"manifest-sha2": "=" + base64.StdEncoding.EncodeToString([]byte("manifest-sha2")),
		"a.b9":          "a.b9",
	} {
		if got := bigDataFile(key); got != want {
			t.Errorf("bigDataFile(%q) = %q, want %q", key, got, want)
		}
	}
}

// TestConcurrentAdds: images sharing a base layer added at once all land,
// with the shared layer once.
func TestConcurrentAdds(t *testing.T) {
	ctx := context.Background()
	reg := fixture.StartRegistry(t)
	var refs []string
	for i := range 4 {
		ref, _ := push(ctx, t, reg, fmt.Sprintf("test/c%d", i), "v1", []string{"base", fmt.Sprintf("app %d", i)}, fixture.ImageOptions{})
		refs = append(refs, ref)
	}
	root := t.TempDir()
	d := newDaemon(t, reg, root)
	errs := make(chan error, len(refs))
	for _, ref := range refs {
		go func() {
			_, err := d.Add(ctx, ref, nil)
			errs <- err
		}()
	}
	for range refs {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
	if ims := d.List(); len(ims) != len(refs) {
		t.Errorf("%d images, want %d", len(ims), len(refs))
	}
	if ls := readRaw(t, filepath.Join(root, "images", "overlay-layers", "layers.json")); len(ls) != len(refs)+1 {
		t.Errorf("%d layers, want %d (one shared base)", len(ls), len(refs)+1)
	}
}

// TestOpenAfterCrash: what an update interrupted by a crash can leave (a
// temporary file, a layer record no image names yet) is cleaned up, and
// the store works.
func TestOpenAfterCrash(t *testing.T) {
	ctx := context.Background()
	reg := fixture.StartRegistry(t)
	ref, _ := push(ctx, t, reg, "test/crash", "v1", []string{"base", "app"}, fixture.ImageOptions{})
	root := t.TempDir()
	if _, err := newDaemon(t, reg, root).Add(ctx, ref, nil); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(root, "images")
	layersPath := filepath.Join(dir, "overlay-layers", "layers.json")
	ls := readRaw(t, layersPath)
	ls = append(ls, map[string]any{"id": "orphan", "compressed-diff-digest": "sha256:" + strings.Repeat("0", 64)})
	b, _ := json.Marshal(ls)
	if err := os.WriteFile(layersPath, b, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"overlay-images/.tmp-images.json-1", "overlay/.tmp-abc/diff"} {
		if err := os.MkdirAll(filepath.Dir(filepath.Join(dir, p)), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, p), nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}

	d := newDaemon(t, reg, root)
	for _, p := range []string{"overlay-images/.tmp-images.json-1", "overlay/.tmp-abc"} {
		if _, err := os.Stat(filepath.Join(dir, p)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s left after Open (%v)", p, err)
		}
	}
	if ims := d.List(); len(ims) != 1 || ims[0].Layers != 2 {
		t.Fatalf("after the crash: %+v", ims)
	}
	// The next update drops the record no image names.
	other, _ := push(ctx, t, reg, "test/crash2", "v1", []string{"other"}, fixture.ImageOptions{})
	if _, err := d.Add(ctx, other, nil); err != nil {
		t.Fatal(err)
	}
	for _, l := range readRaw(t, layersPath) {
		if l["id"] == "orphan" {
			t.Error("the orphan layer record survived an update")
		}
	}
}
