package control

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"
	"github.com/sirupsen/logrus"

	"github.com/poolfs/poolfs/profile"
)

// fakeBackend records what the socket asked of it.
type fakeBackend struct {
	mu    sync.Mutex
	creds map[string]Credentials
	kept  int64
}

func (b *fakeBackend) Status() Status {
	return Status{Mountpoint: "/als/.pool", Layers: []LayerStatus{{Ref: "reg/app:1", Digest: "sha256:ab", Size: 10, FetchedBytes: 5, Fetched: 0.5, Uses: 2}},
		Cache: CacheStatus{Bytes: 100, MaxBytes: 1000}}
}

func (b *fakeBackend) GC(keep int64) GCResult {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.kept = keep
	return GCResult{FreedBytes: 100 - keep, Cache: CacheStatus{Bytes: keep}}
}

func (b *fakeBackend) SetCredentials(ref string, c Credentials) (string, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if strings.Contains(ref, "bad") {
		return "", errors.New("bad reference")
	}
	b.creds[ref] = c
	reg, _, _ := strings.Cut(ref, "/")
	return reg, nil
}

func (b *fakeBackend) Profiles(string) profile.Set               { return profile.Set{} }
func (b *fakeBackend) ImportProfiles(s profile.Set) (int, error) { return len(s.Profiles), nil }

func (b *fakeBackend) PushProfiles(_ context.Context, ref string) (PushResult, error) {
	if strings.Contains(ref, "none") {
		return PushResult{}, fmt.Errorf("image %s: %w", ref, ErrNoProfiles)
	}
	return PushResult{Repository: "reg/app", Subject: "sha256:5b", Digest: "sha256:a7", Layers: []string{"sha256:ab"}}, nil
}

func quietLog() *logrus.Entry {
	l := logrus.New()
	l.SetOutput(io.Discard)
	return logrus.NewEntry(l)
}

// serveBackend serves b on a socket of its own until the test ends, and
// returns a client of it and a context that bounds the test's requests.
func serveBackend(t *testing.T, b Backend) (*Client, context.Context) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "control.sock")
	srv, err := Listen(path, b, quietLog())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return NewClient(path), ctx
}

func TestRoundTrip(t *testing.T) {
	path := filepath.Join(t.TempDir(), "run", "control.sock")
	b := &fakeBackend{creds: map[string]Credentials{}}
	srv, err := Listen(path, b, quietLog())
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("socket mode %v, %v", fi.Mode(), err)
	}
	if di, _ := os.Stat(filepath.Dir(path)); di.Mode().Perm() != 0o700 {
		t.Errorf("socket directory mode %v", di.Mode())
	}

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c := NewClient(path)
	st, err := c.Status(ctx)
	if err != nil || len(st.Layers) != 1 || st.Layers[0].Uses != 2 || st.Cache.MaxBytes != 1000 {
		t.Errorf("Status = %+v, %v", st, err)
	}
	res, err := c.GC(ctx, 40)
	if err != nil || res.FreedBytes != 60 || b.kept != 40 {
		t.Errorf("GC = %+v, %v", res, err)
	}
	pr, err := c.PushProfiles(ctx, "reg/app:1")
	if err != nil || pr.Digest != "sha256:a7" || len(pr.Layers) != 1 {
		t.Errorf("PushProfiles = %+v, %v", pr, err)
	}
	if _, err := c.PushProfiles(ctx, "reg/none:1"); err == nil || !strings.Contains(err.Error(), "404") {
		t.Errorf("PushProfiles of an image without profiles: %v, want a 404", err)
	}
	cr, err := c.SetCredentials(ctx, map[string]Credentials{"reg.a/x:1": {Username: "u", Password: "p"}, "reg.b/y:2": {IdentityToken: "t"}})
	if err != nil || strings.Join(cr.Registries, ",") != "reg.a,reg.b" || b.creds["reg.b/y:2"].IdentityToken != "t" {
		t.Errorf("SetCredentials = %+v, %v (%v)", cr, err, b.creds)
	}
	if _, err := c.SetCredentials(ctx, map[string]Credentials{"bad ref": {Password: "hunter2"}}); err == nil || strings.Contains(err.Error(), "hunter2") {
		t.Errorf("bad reference: %v", err)
	}

	// A second daemon on the same socket is refused; the first keeps it.
	if _, err := Listen(path, b, quietLog()); err == nil || !strings.Contains(err.Error(), "another daemon") {
		t.Errorf("second Listen: %v", err)
	}
	if _, err := c.Status(ctx); err != nil {
		t.Errorf("first daemon lost its socket: %v", err)
	}
}

func TestStaleSocketReplaced(t *testing.T) {
	path := filepath.Join(t.TempDir(), "control.sock")
	// What a killed daemon leaves: a socket file nobody listens on.
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	srv, err := Listen(path, &fakeBackend{creds: map[string]Credentials{}}, quietLog())
	if err != nil {
		t.Fatal(err)
	}
	srv.Close()
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Errorf("socket left after Close: %v", err)
	}
}

// TestOtherUserRefused opens the socket's permissions on purpose and
// connects as nobody: the peer check must still refuse.
func TestOtherUserRefused(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to run a client as another user")
	}
	py, err := exec.LookPath("/usr/bin/python3") // a system one: nobody may run it
	if err != nil {
		t.Skip("needs python3 for the client")
	}
	dir := t.TempDir()
	for _, d := range []string{filepath.Dir(dir), dir} { // t.TempDir makes both 0700
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	path := filepath.Join(dir, "control.sock")
	srv, err := Listen(path, &fakeBackend{creds: map[string]Credentials{}}, quietLog())
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	if err := os.Chmod(path, 0o666); err != nil {
		t.Fatal(err)
	}
	script := `import socket,sys
s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); s.settimeout(5)
try:
    s.sendall(b"GET /status HTTP/1.0\r\n\r\n")
    d=s.recv(100)
except Exception:
    d=b"refused"
print(repr(d))`
	cmd := exec.Command(py, "-c", script, path)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("client: %v: %s", err, out)
	}
	if strings.Contains(string(out), "200") {
		t.Errorf("another user was answered: %s", out)
	}
	// The same client as root is answered, so the refusal above is the
	// peer check and not a broken client.
	out, err = exec.Command(py, "-c", script, path).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "200") {
		t.Errorf("root client: %v: %s", err, out)
	}
}

// profileBackend is a fakeBackend that also keeps startup profiles.
type profileBackend struct {
	fakeBackend
	held     map[string]profile.Set
	imported []profile.Set
}

func (b *profileBackend) Profiles(ref string) profile.Set { return b.held[ref] }

func (b *profileBackend) ImportProfiles(s profile.Set) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.imported = append(b.imported, s)
	return len(s.Profiles), nil
}

func TestProfilesRoundTrip(t *testing.T) {
	p := &profile.Profile{Blob: digest.FromString("blob"), TOC: digest.FromString("toc"),
		Chunks: []profile.Chunk{{Offset: 10, End: 20, Digest: digest.FromString("c")}}}
	b := &profileBackend{fakeBackend: fakeBackend{creds: map[string]Credentials{}},
		held: map[string]profile.Set{"reg/app:1": {Profiles: []*profile.Profile{p}}}}
	c, ctx := serveBackend(t, b)

	raw, err := c.Profiles(ctx, "reg/app:1")
	if err != nil {
		t.Fatal(err)
	}
	set, err := profile.UnmarshalSet(raw)
	if err != nil || len(set.Profiles) != 1 || set.Profiles[0].Chunks[0] != p.Chunks[0] {
		t.Fatalf("Profiles = %+v, %v", set, err)
	}
	if raw, err := c.Profiles(ctx, "reg/other:1"); err != nil {
		t.Errorf("Profiles of an image without any: %v", err)
	} else if s, err := profile.UnmarshalSet(raw); err != nil || len(s.Profiles) != 0 {
		t.Errorf("Profiles of an image without any = %+v, %v", s, err)
	}

	res, err := c.ImportProfiles(ctx, raw)
	if err != nil || res.Layers != 1 || len(b.imported) != 1 {
		t.Fatalf("ImportProfiles = %+v, %v", res, err)
	}
	for name, body := range map[string]string{
		"not JSON":      "{",
		"other version": `{"version":9,"layers":[]}`,
		"chunk twice":   strings.Replace(string(raw), `"chunks":[`, `"chunks":[{"o":10,"e":20,"d":"`+digest.FromString("c").String()+`"},`, 1),
	} {
		if _, err := c.ImportProfiles(ctx, []byte(body)); err == nil {
			t.Errorf("import of %s accepted", name)
		}
	}
	if len(b.imported) != 1 {
		t.Errorf("%d imports reached the backend, want 1", len(b.imported))
	}
}
