package meta

import (
	"errors"
	"path/filepath"
	"reflect"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"
	bolt "go.etcd.io/bbolt"

	"github.com/poolfs/poolfs/layer"
	"github.com/poolfs/poolfs/profile"
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

// openWithClock opens a new store whose clock reads *clock, closed (and
// the clock restored) when the test ends.
func openWithClock(t *testing.T, clock *time.Time) *Store {
	t.Helper()
	now = func() time.Time { return *clock }
	t.Cleanup(func() { now = time.Now })
	s, err := Open(filepath.Join(t.TempDir(), "meta.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// TestPrune: layers unused since before the cutoff go (record, TOC and the
// refs leading to them); used, in-use and legacy records stay.
func TestPrune(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	clock := t0
	s := openWithClock(t, &clock)
	record := func(name string) Record {
		toc := []byte(`{"version":1,"entries":[{"name":"` + name + `","type":"reg"}]}`)
		return Record{
			Desc: remote.LayerDesc{Ref: "registry.example/" + name + ":1", Digest: digest.FromString(name), TOCDigest: digest.FromBytes(toc)},
			TOC:  layer.TOC{Digest: digest.FromBytes(toc), Offset: 10, JSON: toc},
		}
	}
	put := func(r Record) {
		t.Helper()
		for _, d := range []digest.Digest{r.Desc.Digest, r.TOC.Digest} {
			if err := s.Put(r.Desc.Ref, d, r); err != nil {
				t.Fatal(err)
			}
		}
	}
	old, touched, open, fresh, legacy := record("old"), record("touched"), record("open"), record("fresh"), record("legacy")
	put(old)
	put(touched)
	put(open)
	put(legacy)
	// A record written before UsedAt existed.
	if err := s.db.Update(func(tx *bolt.Tx) error {
		lb := tx.Bucket(bucketLayers)
		key := []byte(legacy.Desc.Digest.String())
		return setUsed(lb, key, lb.Get(key), 0)
	}); err != nil {
		t.Fatal(err)
	}

	clock = t0.Add(20 * 24 * time.Hour)
	if err := s.Touch(touched.Desc.Digest); err != nil {
		t.Fatal(err)
	}
	if err := s.Touch(digest.FromString("unknown")); err != nil {
		t.Errorf("Touch of an unknown layer: %v", err)
	}
	put(fresh)

	clock = t0.Add(40 * 24 * time.Hour)
	cutoff := clock.Add(-30 * 24 * time.Hour) // t0+10d
	n, err := s.Prune(cutoff, map[digest.Digest]bool{open.Desc.Digest: true})
	if err != nil {
		t.Fatal(err)
	}
	if n != 1 {
		t.Errorf("Prune forgot %d layers, want 1", n)
	}
	tests := []struct {
		name string
		rec  Record
		kept bool
	}{
		{"stored at t0, unused since", old, false},
		{"touched at t0+20d", touched, true},
		{"stored at t0, open in the daemon", open, true},
		{"stored at t0+20d", fresh, true},
		{"legacy record without a use time", legacy, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			for _, d := range []digest.Digest{tc.rec.Desc.Digest, tc.rec.TOC.Digest} {
				_, err := s.Lookup(tc.rec.Desc.Ref, d)
				if tc.kept && err != nil {
					t.Errorf("Lookup by %s: %v, want the record", d, err)
				}
				if !tc.kept && !errors.Is(err, ErrNotFound) {
					t.Errorf("Lookup by %s: %v, want ErrNotFound", d, err)
				}
			}
		})
	}
	// Nothing of the pruned layer is left behind: no ref, no TOC.
	if err := s.db.View(func(tx *bolt.Tx) error {
		if v := tx.Bucket(bucketTOCs).Get([]byte(old.TOC.Digest.String())); v != nil {
			t.Error("the pruned layer's TOC is still stored")
		}
		return tx.Bucket(bucketRefs).ForEach(func(k, v []byte) error {
			if string(v) == old.Desc.Digest.String() {
				t.Errorf("ref %q still leads to the pruned layer", k)
			}
			return nil
		})
	}); err != nil {
		t.Fatal(err)
	}

	// The open layer's and the legacy record's clocks restarted at the
	// prune: 31 days later, with nothing open, they go too.
	clock = clock.Add(31 * 24 * time.Hour)
	n, err = s.Prune(clock.Add(-30*24*time.Hour), nil)
	if err != nil {
		t.Fatal(err)
	}
	if n != 4 {
		t.Errorf("second Prune forgot %d layers, want 4 (all left)", n)
	}
}

// A TOC given as its compressed member (what layer.OpenWithTOC returns) is
// stored and returned byte for byte, as a member again, with its format.
func TestStoreTOCMember(t *testing.T) {
	s, err := Open(filepath.Join(t.TempDir(), "meta.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for _, format := range []string{"", layer.FormatZstdChunked} {
		member := []byte("\x1f\x8b any bytes: the store does not look inside " + format)
		d := digest.FromString("toc " + format)
		blob := digest.FromString("blob " + format)
		rec := Record{Desc: remote.LayerDesc{Ref: "r/a:1", Digest: blob}, TOC: layer.TOC{Digest: d, Offset: 7, Format: format, Member: member}}
		if err := s.Put("r/a:1", rec.Desc.Digest, rec); err != nil {
			t.Fatal(err)
		}
		got, err := s.Lookup("r/a:1", rec.Desc.Digest)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got.TOC, rec.TOC) {
			t.Errorf("format %q: TOC %+v, want %+v", format, got.TOC, rec.TOC)
		}
	}
}

// TestPruneImportedProfiles: a profile whose layer has no record (imported,
// the layer never opened) is forgotten once stored before the cutoff,
// unless its layer is open; one stored later, or whose layer has a record,
// stays; one from before store times were kept starts aging at the prune.
func TestPruneImportedProfiles(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	clock := t0
	s := openWithClock(t, &clock)
	prof := func(name string) *profile.Profile {
		return &profile.Profile{Blob: digest.FromString(name), TOC: digest.FromString(name + " toc"),
			Chunks: []profile.Chunk{{Offset: 0, End: 10, Digest: digest.FromString(name + " chunk")}}}
	}
	putProf := func(p *profile.Profile) {
		t.Helper()
		if err := s.PutProfile(p); err != nil {
			t.Fatal(err)
		}
	}
	imported, open, withRecord, late, legacy := prof("imported"), prof("open"), prof("with record"), prof("late"), prof("legacy")
	for _, p := range []*profile.Profile{imported, open, withRecord, legacy} {
		putProf(p)
	}
	rec := Record{Desc: remote.LayerDesc{Ref: "registry.example/a:1", Digest: withRecord.Blob}, TOC: layer.TOC{Digest: withRecord.TOC, Offset: 10, JSON: []byte(`{"version":1,"entries":[]}`)}}
	if err := s.Put(rec.Desc.Ref, rec.Desc.Digest, rec); err != nil {
		t.Fatal(err)
	}
	// Stored before profile times were kept.
	if err := s.db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketProfileTimes).Delete([]byte(legacy.Blob.String()))
	}); err != nil {
		t.Fatal(err)
	}
	clock = t0.Add(20 * 24 * time.Hour)
	putProf(late)
	// The record is used now and then: only the profiles without one age.
	if err := s.Touch(withRecord.Blob); err != nil {
		t.Fatal(err)
	}

	clock = t0.Add(40 * 24 * time.Hour)
	if _, err := s.Prune(clock.Add(-30*24*time.Hour), map[digest.Digest]bool{open.Blob: true}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		p    *profile.Profile
		kept bool
	}{{imported, false}, {open, true}, {withRecord, true}, {late, true}, {legacy, true}} {
		_, err := s.Profile(tc.p.Blob)
		if tc.kept && err != nil {
			t.Errorf("profile of %s: %v, want it kept", tc.p.Blob, err)
		}
		if !tc.kept && !errors.Is(err, ErrNotFound) {
			t.Errorf("profile of %s: %v, want it pruned", tc.p.Blob, err)
		}
	}
	// 31 days on, with nothing open: the legacy one (aging since the
	// prune), the open one's and the late one go; the recorded layer's
	// profile stays with its record until the record goes.
	clock = clock.Add(31 * 24 * time.Hour)
	if err := s.Touch(withRecord.Blob); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Prune(clock.Add(-30*24*time.Hour), nil); err != nil {
		t.Fatal(err)
	}
	for _, p := range []*profile.Profile{open, late, legacy} {
		if _, err := s.Profile(p.Blob); !errors.Is(err, ErrNotFound) {
			t.Errorf("profile of %s after the second prune: %v, want it pruned", p.Blob, err)
		}
	}
	if _, err := s.Profile(withRecord.Blob); err != nil {
		t.Errorf("profile of a used layer: %v", err)
	}
}
