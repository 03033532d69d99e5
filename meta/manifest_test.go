package meta

import (
	"errors"
	"path/filepath"
	"reflect"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"

	"github.com/poolfs/poolfs/layer"
	"github.com/poolfs/poolfs/remote"
)

// TestManifestRecords: what a reference lists survives a reopen, and
// Prune forgets the lists fetched before its cutoff.
func TestManifestRecords(t *testing.T) {
	path := filepath.Join(t.TempDir(), "meta.db")
	s, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	old := time.Now().Add(-48 * time.Hour).UTC().Truncate(time.Second)
	recent := time.Now().UTC().Truncate(time.Second)
	records := map[string]Manifest{
		"reg.example/app:1": {Layers: []digest.Digest{digest.FromString("a"), digest.FromString("b")}, FetchedAt: recent},
		"reg.example/app@" + digest.FromString("m").String(): {Layers: []digest.Digest{digest.FromString("a")}, FetchedAt: old, Pinned: true},
		"reg.example/old:1": {Layers: []digest.Digest{digest.FromString("c")}, FetchedAt: old},
	}
	for ref, m := range records {
		if err := s.PutManifest(ref, m); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if s, err = Open(path); err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for ref, want := range records {
		got, err := s.LookupManifest(ref)
		if err != nil || !reflect.DeepEqual(got.Layers, want.Layers) || !got.FetchedAt.Equal(want.FetchedAt) || got.Pinned != want.Pinned {
			t.Errorf("%s: %+v, %v; want %+v", ref, got, err, want)
		}
	}
	if _, err := s.LookupManifest("reg.example/none:1"); !errors.Is(err, ErrNotFound) {
		t.Errorf("unknown reference: %v, want ErrNotFound", err)
	}

	if _, err := s.Prune(time.Now().Add(-24*time.Hour), nil); err != nil {
		t.Fatal(err)
	}
	for ref, m := range records {
		_, err := s.LookupManifest(ref)
		if gone := errors.Is(err, ErrNotFound); gone != m.FetchedAt.Equal(old) {
			t.Errorf("%s fetched %s: after Prune %v", ref, m.FetchedAt, err)
		}
	}
}

// TestAlias: a layer stored under one reference is found under another
// that the pool recorded as naming it.
func TestAlias(t *testing.T) {
	s, err := Open(filepath.Join(t.TempDir(), "meta.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	rec := testRecord(t)
	if err := s.Put("reg.example/a:1", rec.Desc.Digest, rec); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Lookup("reg.example/b:1", rec.Desc.Digest); !errors.Is(err, ErrNotFound) {
		t.Fatalf("before Alias: %v", err)
	}
	for range 2 { // the second is a no-op
		if err := s.Alias("reg.example/b:1", rec.TOC.Digest, rec.Desc.Digest); err != nil {
			t.Fatal(err)
		}
	}
	got, err := s.Lookup("reg.example/b:1", rec.TOC.Digest)
	if err != nil || got.Desc.Digest != rec.Desc.Digest {
		t.Errorf("after Alias: %v, %v", got.Desc.Digest, err)
	}
}

func testRecord(t *testing.T) Record {
	t.Helper()
	toc := []byte(`{"version":1,"entries":[]}`)
	return Record{
		Desc: remote.LayerDesc{Ref: "reg.example/a:1", Digest: digest.FromString("blob"), TOCDigest: digest.FromBytes(toc)},
		TOC:  layer.TOC{Digest: digest.FromBytes(toc), Offset: 10, JSON: toc},
	}
}
