package main

import (
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	digest "github.com/opencontainers/go-digest"
	"github.com/sirupsen/logrus"

	"github.com/poolfs/poolfs/control"
	"github.com/poolfs/poolfs/profile"
)

// profileDaemon is the control side of a daemon holding profiles.
type profileDaemon struct {
	held     profile.Set
	imported []profile.Set
}

func (d *profileDaemon) Status() control.Status                                     { return control.Status{} }
func (d *profileDaemon) GC(int64) control.GCResult                                  { return control.GCResult{} }
func (d *profileDaemon) SetCredentials(string, control.Credentials) (string, error) { return "", nil }
func (d *profileDaemon) Profiles(ref string) profile.Set {
	if ref == "reg/app:1" {
		return d.held
	}
	return profile.Set{}
}
func (d *profileDaemon) PushProfiles(context.Context, string) (control.PushResult, error) {
	return control.PushResult{}, nil
}
func (d *profileDaemon) ImportProfiles(s profile.Set) (int, error) {
	d.imported = append(d.imported, s)
	return len(s.Profiles), nil
}

// TestProfileExportImport: what `poolfs profile export` writes, `poolfs
// profile import` hands back to a daemon unchanged; an image without
// profiles and a damaged file are errors.
func TestProfileExportImport(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "control.sock")
	p := &profile.Profile{Blob: digest.FromString("blob"), TOC: digest.FromString("toc"),
		Chunks: []profile.Chunk{{Offset: 1, End: 9, Digest: digest.FromString("c")}}}
	d := &profileDaemon{held: profile.Set{Profiles: []*profile.Profile{p}}}
	log := logrus.New()
	log.SetOutput(io.Discard)
	srv, err := control.Listen(sock, d, logrus.NewEntry(log))
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	ctx := context.Background()
	file := filepath.Join(dir, "profiles.json")
	var out bytes.Buffer
	if err := profileCmd(ctx, []string{"export", "--socket", sock, "reg/app:1", file}, &out); err != nil {
		t.Fatalf("export: %v", err)
	}
	if err := profileCmd(ctx, []string{"export", "--socket", sock, "reg/other:1", filepath.Join(dir, "none")}, &out); err == nil {
		t.Error("export of an image without profiles succeeded")
	}
	if err := profileCmd(ctx, []string{"import", "--socket", sock, file}, &out); err != nil {
		t.Fatalf("import: %v", err)
	}
	if len(d.imported) != 1 || len(d.imported[0].Profiles) != 1 || d.imported[0].Profiles[0].Chunks[0] != p.Chunks[0] {
		t.Errorf("the daemon got %+v", d.imported)
	}
	b, _ := os.ReadFile(file)
	bad := filepath.Join(dir, "bad.json")
	if err := os.WriteFile(bad, []byte(strings.Replace(string(b), `"version":1`, `"version":7`, 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := profileCmd(ctx, []string{"import", "--socket", sock, bad}, &out); err == nil {
		t.Error("a file of another version was imported")
	}
	if len(d.imported) != 1 {
		t.Errorf("%d imports reached the daemon, want 1", len(d.imported))
	}
}
