package meta

import (
	"errors"
	"path/filepath"
	"reflect"
	"testing"

	digest "github.com/opencontainers/go-digest"

	"github.com/poolfs/poolfs/layer"
	"github.com/poolfs/poolfs/remote"
)

func TestStoreSurvivesReopen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "meta.db")
	tocJSON := []byte(`{"version":1,"entries":[]}`)
	blob := digest.FromString("blob")
	rec := Record{
		Desc: remote.LayerDesc{
			Ref: "registry.example/app:1", Digest: blob, Size: 1234,
			MediaType: "application/vnd.oci.image.layer.v1.tar+gzip",
			TOCDigest: digest.FromBytes(tocJSON), Annotations: map[string]string{"a": "b"},
		},
		TOC: layer.TOC{Digest: digest.FromBytes(tocJSON), Offset: 1000, JSON: tocJSON},
	}
	s, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	// Asked for by blob digest and by TOC digest: two refs, one record.
	if err := s.Put(rec.Desc.Ref, blob, rec); err != nil {
		t.Fatal(err)
	}
	if err := s.Put(rec.Desc.Ref, rec.TOC.Digest, rec); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s, err = Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	tests := []struct {
		name    string
		ref     string
		digest  digest.Digest
		wantErr error
	}{
		{"by blob digest", rec.Desc.Ref, blob, nil},
		{"by TOC digest", rec.Desc.Ref, rec.TOC.Digest, nil},
		{"other reference", "registry.example/app:2", blob, ErrNotFound},
		{"other digest", rec.Desc.Ref, digest.FromString("x"), ErrNotFound},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := s.Lookup(tc.ref, tc.digest)
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("Lookup: %v, want %v", err, tc.wantErr)
			}
			if err == nil && !reflect.DeepEqual(got, rec) {
				t.Errorf("Lookup = %+v, want %+v", got, rec)
			}
		})
	}

	if err := s.Delete(blob); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Lookup(rec.Desc.Ref, blob); !errors.Is(err, ErrNotFound) {
		t.Errorf("after Delete: %v, want ErrNotFound", err)
	}
}

// TestStoreLockedByAnotherOpen: a second daemon on the same cache dir gets
// an error, not a hang.
func TestStoreLockedByAnotherOpen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "meta.db")
	s, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if s2, err := Open(path); err == nil {
		s2.Close()
		t.Fatal("second Open of a held store succeeded")
	}
}
