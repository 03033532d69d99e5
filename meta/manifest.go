package meta

import (
	"encoding/json"
	"fmt"
	"time"

	digest "github.com/opencontainers/go-digest"
	bolt "go.etcd.io/bbolt"
)

// Manifest is what the pool keeps of one reference's manifest: the digests
// (blob and TOC) of the layers it lists, and when it was fetched.
type Manifest struct {
	Layers    []digest.Digest `json:"layers"`
	FetchedAt time.Time       `json:"fetched_at"`
	// Pinned: the reference names the manifest by digest, so the list
	// never changes.
	Pinned bool `json:"pinned,omitempty"`
	// DiffIDs are the diff_ids the reference's config gives layers, by
	// blob digest, as far as they were looked up ("": the config gives
	// none).
	DiffIDs map[digest.Digest]digest.Digest `json:"diff_ids,omitempty"`
}

// PutManifest records what ref's manifest lists.
func (s *Store) PutManifest(ref string, m Manifest) error {
	b, err := json.Marshal(m)
	if err != nil {
		return fmt.Errorf("encoding manifest record of %s: %w", ref, err)
	}
	err = s.db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketManifests).Put([]byte(ref), b)
	})
	if err != nil {
		return fmt.Errorf("storing manifest record of %s: %w", ref, err)
	}
	return nil
}

// LookupManifest returns what PutManifest recorded for ref, or ErrNotFound.
func (s *Store) LookupManifest(ref string) (Manifest, error) {
	var m Manifest
	err := s.db.View(func(tx *bolt.Tx) error {
		raw := tx.Bucket(bucketManifests).Get([]byte(ref))
		if raw == nil {
			return ErrNotFound
		}
		return json.Unmarshal(raw, &m)
	})
	if err != nil {
		return Manifest{}, fmt.Errorf("reading manifest record of %s: %w", ref, err)
	}
	return m, nil
}

// pruneManifests forgets the manifest records fetched before cutoff (the
// next lookup under their reference fetches the manifest again).
func pruneManifests(tx *bolt.Tx, cutoff time.Time) error {
	b := tx.Bucket(bucketManifests)
	var stale [][]byte
	err := b.ForEach(func(k, v []byte) error {
		var m Manifest
		if json.Unmarshal(v, &m) != nil || m.FetchedAt.Before(cutoff) {
			stale = append(stale, append([]byte(nil), k...))
		}
		return nil
	})
	if err != nil {
		return err
	}
	for _, k := range stale {
		if err := b.Delete(k); err != nil {
			return err
		}
	}
	return nil
}

// Alias records that (ref, d) names the layer stored under blob digest
// blob, as Put does, for a layer the pool opened under another reference.
// It writes only if the store does not say so already.
func (s *Store) Alias(ref string, d, blob digest.Digest) error {
	key, val := refKey(ref, d), []byte(blob.String())
	same := false
	_ = s.db.View(func(tx *bolt.Tx) error {
		same = string(tx.Bucket(bucketRefs).Get(key)) == string(val)
		return nil
	})
	if same {
		return nil
	}
	err := s.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucketRefs).Put(key, val) })
	if err != nil {
		return fmt.Errorf("storing %s of %s as layer %s: %w", d, ref, blob, err)
	}
	return nil
}
