package e2e

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"golang.org/x/sys/unix"

	"github.com/poolfs/poolfs/control"
	"github.com/poolfs/poolfs/test/fixture"
)

// TestDaemonServices runs `poolfs serve` the way a node runs it, from a
// config file and with systemd's readiness protocol, against a registry
// behind basic auth, and checks what issue 5 promises of the running daemon:
// flags override the file; READY=1 comes after the mount; credentials handed
// over by `poolfs auth-helper` (the JSON podman sends) open the registry and
// never reach the log; reading more than the disk cache's cap through the
// mount keeps the cap and reads every byte right, also after eviction;
// `poolfs status --json` reports what was read; `poolfs gc` trims; /metrics
// parses and counts the traffic.
func TestDaemonServices(t *testing.T) {
	requireRoot(t)
	bin := poolfsBinary(t)
	ctx := testContext(t, 3*time.Minute)
	reg := fixture.StartRegistry(t)
	tarBytes := fixture.KitchenSinkTar()
	ref := fixture.ImageRef(reg.Host, "private/sink", "v1")
	_, layers, err := fixture.PushImage(ctx, ref, [][]byte{tarBytes}, fixture.ImageOptions{ChunkSize: 64 << 10})
	if err != nil {
		t.Fatal(err)
	}
	li := layers[0]
	// A second image, looked up only through a registries.conf mirror.
	otherContent := []byte("served through the second mirror\n")
	_, otherLayers, err := fixture.PushImage(ctx, fixture.ImageRef(reg.Host, "private/other", "v1"),
		[][]byte{fixture.BuildTar([]fixture.TarEntry{{Name: "mirror.txt", Type: '0', Mode: 0o644, Content: otherContent}})}, fixture.ImageOptions{})
	if err != nil {
		t.Fatal(err)
	}
	const user, pass = "node-user", "n0de-s3cret-pass"
	reg.SetMiddleware(func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if u, p, ok := r.BasicAuth(); !ok || u != user || p != pass {
				w.Header().Set("WWW-Authenticate", `Basic realm="poolfs-e2e"`)
				http.Error(w, "unauthorized", http.StatusUnauthorized)
				return
			}
			h.ServeHTTP(w, r)
		})
	})

	dir := tempDir(t)
	const capBytes = 1 << 20
	cfg := filepath.Join(dir, "config.toml")
	writeFile(t, cfg, `
log_level = "warn"   # the --log-level debug StartDaemon passes wins
log_format = "json"
profile_lookup = false
[cache]
max_size = "1MiB"
memory_size = "1MiB"
`)
	dead, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	deadHost := dead.Addr().String()
	dead.Close() // nothing listens there any more: a mirror that is down
	regConf := filepath.Join(dir, "registries.conf")
	writeFile(t, regConf, `
[[registry]]
prefix = "mirrored.invalid"
[[registry.mirror]]
location = "`+deadHost+`"
[[registry.mirror]]
location = "`+reg.Host+`"

[[registry]]
location = "blocked.invalid"
blocked = true
`)
	notify := filepath.Join(dir, "notify.sock")
	nconn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: notify, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer nconn.Close()
	als := filepath.Join(dir, "als")
	cacheDir := filepath.Join(dir, "cache")
	d, err := fixture.StartDaemon(fixture.DaemonOptions{
		Binary:    bin,
		Root:      als,
		CacheDir:  cacheDir,
		LogFile:   filepath.Join(dir, "poolfs.log"),
		ExtraArgs: []string{"--config", cfg, "--registries-conf", regConf},
		Env:       append(os.Environ(), "NOTIFY_SOCKET="+notify),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := d.Stop(); err != nil {
			t.Errorf("stopping poolfs: %v", err)
		}
		if t.Failed() {
			t.Logf("poolfs log:\n%s", d.LogTail(64<<10))
		}
	})
	sock := fixture.ControlSocketFor(als)

	t.Run("ready notification", func(t *testing.T) {
		_ = nconn.SetReadDeadline(time.Now().Add(10 * time.Second))
		buf := make([]byte, 512)
		n, err := nconn.Read(buf)
		if err != nil || !strings.Contains(string(buf[:n]), "READY=1") {
			t.Fatalf("notification %q, %v", buf[:n], err)
		}
		if ok, _ := fixture.IsFUSEMount(d.Mountpoint); !ok {
			t.Error("READY=1 before the mount was up")
		}
	})
	t.Run("control socket is root's", func(t *testing.T) {
		fi, err := os.Stat(sock)
		if err != nil || fi.Mode().Type() != fs.ModeSocket || fi.Mode().Perm() != 0o600 {
			t.Fatalf("control socket: %v %v", fi.Mode(), err)
		}
	})

	layerDir := filepath.Join(d.Mountpoint, base64.StdEncoding.EncodeToString([]byte(ref)), li.Digest.String())
	if _, err := os.Stat(filepath.Join(layerDir, "diff")); err == nil {
		t.Fatal("layer served without credentials")
	}
	t.Run("auth-helper", func(t *testing.T) {
		in, _ := json.Marshal(map[string]any{ref: map[string]string{"username": user, "password": pass, "identityToken": ""}})
		cmd := exec.CommandContext(ctx, bin, "auth-helper", "--socket", sock)
		cmd.Stdin = bytes.NewReader(in)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("auth-helper: %v: %s", err, out)
		}
		if _, err := os.Stat(filepath.Join(layerDir, "diff")); err != nil {
			t.Fatalf("layer not served with the helper's credentials: %v", err)
		}
		// As podman runs it: by the name registries.conf gives, without
		// arguments, finding the daemon through the environment.
		link := filepath.Join(dir, "poolfs-auth-helper")
		if err := os.Symlink(bin, link); err != nil {
			t.Fatal(err)
		}
		cmd = exec.CommandContext(ctx, link)
		cmd.Env = append(os.Environ(), control.SocketEnv+"="+sock)
		cmd.Stdin = strings.NewReader(`{"other.example/app:1": {"username": "someone", "password": "other-s3cret"}}`)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("poolfs-auth-helper: %v: %s", err, out)
		}
		if !strings.Contains(d.Log(), `"registry":"other.example"`) {
			t.Error("the daemon did not record credentials from poolfs-auth-helper")
		}
	})

	const mirroredRef = "mirrored.invalid/private/other:v1"
	t.Run("registries.conf", func(t *testing.T) {
		// The first mirror is down, the second serves; the path keeps the
		// logical reference.
		p := filepath.Join(d.Mountpoint, base64.StdEncoding.EncodeToString([]byte(mirroredRef)), otherLayers[0].Digest.String(), "diff", "mirror.txt")
		got, err := os.ReadFile(p)
		if err != nil || !bytes.Equal(got, otherContent) {
			t.Fatalf("reading through the mirror: %q, %v", got, err)
		}
		blocked := filepath.Join(d.Mountpoint, base64.StdEncoding.EncodeToString([]byte("blocked.invalid/private/other:v1")), otherLayers[0].Digest.String(), "diff")
		if _, err := os.Stat(blocked); err == nil {
			t.Error("a blocked registry was served")
		}
		if !strings.Contains(d.Log(), "blocked in registries.conf") {
			t.Error("the log does not say the registry is blocked")
		}
	})

	// Read every file twice, dropping the page cache between, so the second
	// round goes through poolfs again and meets evicted chunks.
	want := map[string][]byte{}
	var total int
	for _, e := range fixture.KitchenSinkEntries() {
		if e.Type == '0' && len(e.Content) > 0 {
			want[e.Name] = e.Content
			total += len(e.Content)
		}
	}
	if total <= 2*capBytes {
		t.Fatalf("test data (%d bytes) must exceed the cap", total)
	}
	for round := 1; round <= 2; round++ {
		for name, content := range want {
			p := filepath.Join(layerDir, "diff", name)
			got, err := os.ReadFile(p)
			if err != nil {
				t.Fatalf("round %d: %v", round, err)
			}
			if !bytes.Equal(got, content) {
				t.Fatalf("round %d: %s differs from the tar", round, name)
			}
			if f, err := os.Open(p); err == nil {
				_ = unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED)
				f.Close()
			}
		}
		if used := dirBytes(t, filepath.Join(cacheDir, "chunks")); used > capBytes {
			t.Errorf("round %d: cache holds %d bytes on disk, cap %d", round, used, capBytes)
		}
	}

	var st control.Status
	t.Run("status --json", func(t *testing.T) {
		// The daemon writes chunks to disk once reads pause (write-behind),
		// so the disk cache's figures settle shortly after the reads.
		for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(50 * time.Millisecond) {
			out, err := exec.CommandContext(ctx, bin, "status", "--json", "--socket", sock).Output()
			if err != nil {
				t.Fatalf("status: %v", err)
			}
			if err := json.Unmarshal(out, &st); err != nil {
				t.Fatalf("status output: %v\n%s", err, out)
			}
			if (st.Cache.Bytes > 0 && st.Cache.Evictions > 0) || time.Now().After(deadline) {
				break
			}
		}
		if want := filepath.Join(filepath.Dir(d.Mountpoint), ".trees"); st.Mountpoint != d.Mountpoint || st.TreesMountpoint != want {
			t.Errorf("mount points %q and %q, want %q and %q", st.Mountpoint, st.TreesMountpoint, d.Mountpoint, want)
		}
		byDigest := map[string]control.LayerStatus{}
		for _, l := range st.Layers {
			byDigest[l.Digest] = l
		}
		if len(st.Layers) != 2 || byDigest[otherLayers[0].Digest.String()].Ref != mirroredRef {
			t.Fatalf("layers: %+v", st.Layers)
		}
		l := byDigest[li.Digest.String()]
		if l.Ref != ref || l.Digest != li.Digest.String() || l.Size != li.Size || l.TOCDigest != li.TOCDigest.String() {
			t.Errorf("layer %+v, want %s %s size %d", l, ref, li.Digest, li.Size)
		}
		// Every file was read, so nearly all of the blob was fetched.
		if l.Fetched < 0.5 || l.Fetched > 1 || l.FetchedBytes > l.Size {
			t.Errorf("fetched %.2f (%d of %d bytes)", l.Fetched, l.FetchedBytes, l.Size)
		}
		if time.Since(l.LastAccess) > time.Minute {
			t.Errorf("last access %v", l.LastAccess)
		}
		if st.Cache.MaxBytes != capBytes || st.Cache.Bytes > capBytes || st.Cache.Bytes == 0 || st.Cache.Evictions == 0 {
			t.Errorf("cache %+v, want bytes in (0, %d] with evictions", st.Cache, capBytes)
		}
		text, err := exec.CommandContext(ctx, bin, "status", "--socket", sock).Output()
		if err != nil || !strings.Contains(string(text), ref) {
			t.Errorf("status table: %v\n%s", err, text)
		}
	})

	t.Run("profile push", func(t *testing.T) {
		// The start just read is the layer's profile; the daemon pushes it
		// with the credentials the auth helper gave it, to a registry
		// without the referrers API: the artifact, then the referrers tag.
		// profile_lookup = false in the config file: the layers were
		// opened without a single referrers request.
		if n := reg.Stats().ReferrersRequests; n != 0 {
			t.Errorf("%d referrers requests with profile_lookup = false", n)
		}
		_, imgDigest, err := manifestDigestOf(ctx, reg, "private/sink", "v1", user, pass)
		if err != nil {
			t.Fatal(err)
		}
		out, err := exec.CommandContext(ctx, bin, "profile", "push", "--socket", sock, ref).CombinedOutput()
		if err != nil || !strings.Contains(string(out), "pushed the profiles of 1 layers") || !strings.Contains(string(out), imgDigest) {
			t.Fatalf("profile push: %v: %s", err, out)
		}
		tagPut := false
		for _, r := range reg.Requests() {
			if r.Method == http.MethodPut && r.Path == "/v2/private/sink/manifests/"+strings.Replace(imgDigest, ":", "-", 1) && r.Status == http.StatusCreated {
				tagPut = true
			}
		}
		if !tagPut {
			t.Errorf("no referrers tag written for subject %s", imgDigest)
		}
		var st control.Status
		out, err = exec.CommandContext(ctx, bin, "status", "--json", "--socket", sock).Output()
		if err == nil {
			err = json.Unmarshal(out, &st)
		}
		if err != nil {
			t.Fatal(err)
		}
		if l := byDigestOf(st, li.Digest.String()); l.Profile == nil || !l.Profile.Published {
			t.Errorf("status after the push: %+v", l.Profile)
		}
		// An image the daemon has not served has nothing to push.
		if out, err := exec.CommandContext(ctx, bin, "profile", "push", "--socket", sock, fixture.ImageRef(reg.Host, "private/none", "v1")).CombinedOutput(); err == nil {
			t.Errorf("profile push of an image without profiles succeeded: %s", out)
		}
	})

	t.Run("metrics", func(t *testing.T) {
		hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", fixture.MetricsSocketFor(als))
		}}}
		resp, err := hc.Get("http://poolfs/metrics")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		parser := expfmt.NewTextParser(model.UTF8Validation)
		families, err := parser.TextToMetricFamilies(resp.Body)
		if err != nil {
			t.Fatalf("parsing /metrics: %v", err)
		}
		value := func(name string, labels map[string]string) float64 {
			for _, m := range families[name].GetMetric() {
				if matches(m, labels) {
					switch {
					case m.Counter != nil:
						return m.Counter.GetValue()
					case m.Gauge != nil:
						return m.Gauge.GetValue()
					case m.Histogram != nil:
						return float64(m.Histogram.GetSampleCount())
					}
				}
			}
			return -1
		}
		checks := []struct {
			name   string
			labels map[string]string
			min    float64
		}{
			{"poolfs_registry_fetched_bytes_total", map[string]string{"registry": reg.Host}, float64(byDigestOf(st, li.Digest.String()).FetchedBytes)},
			{"poolfs_registry_fetch_failures_total", map[string]string{"registry": deadHost}, 1},
			{"poolfs_registry_requests_total", map[string]string{"registry": reg.Host}, 1},
			{"poolfs_registry_fetch_duration_seconds", map[string]string{"registry": reg.Host, "result": "ok"}, 1},
			{"poolfs_cache_evictions_total", map[string]string{"tier": "disk"}, 1},
			{"poolfs_cache_max_bytes", nil, capBytes},
			{"poolfs_layers_served", nil, 2},
			{"poolfs_layer_fetched_ratio", map[string]string{"digest": li.Digest.String()}, 0.5},
			{"poolfs_fuse_op_duration_seconds", map[string]string{"op": "read"}, 1},
			{"poolfs_fuse_op_duration_seconds", map[string]string{"op": "lookup"}, 1},
			{"poolfs_verify_failures_total", nil, 0},
		}
		for _, c := range checks {
			if v := value(c.name, c.labels); v < c.min {
				t.Errorf("%s%v = %v, want >= %v", c.name, c.labels, v, c.min)
			}
		}
	})

	t.Run("gc", func(t *testing.T) {
		if out, err := exec.CommandContext(ctx, bin, "gc", "--socket", sock).CombinedOutput(); err != nil {
			t.Fatalf("gc: %v: %s", err, out)
		}
		if used := dirBytes(t, filepath.Join(cacheDir, "chunks")); used != 0 {
			t.Errorf("%d bytes left in the cache after gc", used)
		}
		got, err := os.ReadFile(filepath.Join(layerDir, "diff", fixture.KitchenSinkTextFile))
		if err != nil || !bytes.Equal(got, want[fixture.KitchenSinkTextFile]) {
			t.Errorf("reading after gc: %v", err)
		}
	})

	t.Run("logs", func(t *testing.T) {
		log := d.Log()
		if !strings.Contains(log, `"level":"debug"`) {
			t.Error("no JSON debug lines: the config's log_format or the --log-level flag was lost")
		}
		for _, secret := range []string{pass, "other-s3cret", base64.StdEncoding.EncodeToString([]byte(user + ":" + pass))} {
			if strings.Contains(log, secret) {
				t.Errorf("the daemon log contains a secret %q", secret)
			}
		}
		if !strings.Contains(log, "credentials received from auth helper") {
			t.Error("credential hand-over not logged")
		}
	})
}

func byDigestOf(st control.Status, dg string) control.LayerStatus {
	for _, l := range st.Layers {
		if l.Digest == dg {
			return l
		}
	}
	return control.LayerStatus{}
}

func matches(m *dto.Metric, labels map[string]string) bool {
	for k, v := range labels {
		found := false
		for _, lp := range m.GetLabel() {
			if lp.GetName() == k && lp.GetValue() == v {
				found = true
			}
		}
		if !found {
			return false
		}
	}
	return true
}

// dirBytes sums the sizes of the regular files under dir.
func dirBytes(t *testing.T, dir string) int64 {
	t.Helper()
	var n int64
	err := filepath.WalkDir(dir, func(_ string, e fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if e.Type().IsRegular() {
			fi, err := e.Info()
			if err != nil {
				return err
			}
			n += fi.Size()
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// manifestDigestOf fetches repo:tag's manifest from reg with basic auth and
// returns its media type and digest.
func manifestDigestOf(ctx context.Context, reg *fixture.Registry, repo, tag, user, pass string) (string, string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, reg.URL+"/v2/"+repo+"/manifests/"+tag, nil)
	if err != nil {
		return "", "", err
	}
	req.SetBasicAuth(user, pass)
	req.Header.Set("Accept", "application/vnd.oci.image.manifest.v1+json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		return "", "", fmt.Errorf("manifest of %s:%s: %s, %v", repo, tag, resp.Status, err)
	}
	return resp.Header.Get("Content-Type"), digest.FromBytes(body).String(), nil
}
