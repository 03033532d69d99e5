// Package meta keeps what the pool learned about layers (the registry's
// layer descriptor and the eStargz TOC) in an embedded bbolt database, so
// that after a restart a known layer is served again without a registry
// round trip. It stores and returns records; deciding whether a record can
// still be trusted (TOC digest check) is the caller's job.
package meta

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"time"

	"github.com/klauspost/compress/gzip"
	digest "github.com/opencontainers/go-digest"
	bolt "go.etcd.io/bbolt"

	"github.com/poolfs/poolfs/layer"
	"github.com/poolfs/poolfs/profile"
	"github.com/poolfs/poolfs/remote"
)

// Record is everything needed to reopen one layer without the registry.
type Record struct {
	Desc remote.LayerDesc
	TOC  layer.TOC
}

var (
	bucketRefs   = []byte("refs")   // ref + "\x00" + lookup digest -> blob digest
	bucketLayers = []byte("layers") // blob digest -> JSON layerRecord
	bucketTOCs   = []byte("tocs")   // TOC digest -> the TOC's gzip member from the blob, or (older records) gzip of the TOC JSON
	// bucketProfiles: blob digest -> profile.Marshal of the layer's startup
	// profile. Kept apart from the layer record: a profile may come (by
	// import) before the daemon ever opened its layer.
	bucketProfiles = []byte("profiles")
	// bucketProfileTimes: blob digest -> when its profile was stored (Unix
	// seconds, decimal), so that Prune can forget an imported profile
	// whose layer is never opened (it has no layer record to age with).
	bucketProfileTimes = []byte("profile_times")
	// ref -> JSON Manifest: which layers a reference's manifest lists.
	bucketManifests = []byte("manifests")
)

// layerRecord is the stored form of Record without the (big) TOC JSON,
// which lives in its own bucket.
type layerRecord struct {
	Desc      remote.LayerDesc `json:"desc"`
	TOCDigest digest.Digest    `json:"toc_digest"`
	TOCOffset int64            `json:"toc_offset"`
	TOCFormat string           `json:"toc_format,omitempty"` // layer.TOC.Format; "" (eStargz) in older records
	// UsedAt (Unix seconds) is when the layer was last stored, reopened
	// or found in use by Prune; 0 in records written before it existed.
	UsedAt int64 `json:"used_at,omitempty"`
	// TOCMember says the tocs bucket holds the compressed TOC as found in
	// the blob (layer.TOC.Member: eStargz's gzip member, zstd:chunked's
	// compressed manifest), not gzip of its JSON.
	TOCMember bool `json:"toc_member,omitempty"`
}

// maxTOCJSON bounds what a damaged record can make Lookup allocate.
const maxTOCJSON = 1 << 30

// Store is the metadata database; it is safe for concurrent use.
type Store struct {
	db *bolt.DB
}

// Open opens (creating if needed) the database at path. It fails after a
// few seconds if another process holds it, rather than blocking a daemon
// start forever.
func Open(path string) (*Store, error) {
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: 5 * time.Second})
	if err != nil {
		return nil, fmt.Errorf("opening metadata store %s: %w", path, err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bucketRefs, bucketLayers, bucketTOCs, bucketProfiles, bucketProfileTimes, bucketManifests} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("initialising metadata store %s: %w", path, err)
	}
	return &Store{db: db}, nil
}

// Close closes the database.
func (s *Store) Close() error { return s.db.Close() }

func refKey(ref string, d digest.Digest) []byte {
	return []byte(ref + "\x00" + d.String())
}

// Put records rec as the answer for (ref, d), where d is the digest the
// layer was asked for (blob or TOC digest).
func (s *Store) Put(ref string, d digest.Digest, rec Record) error {
	member := rec.TOC.Member != nil
	lr, err := json.Marshal(layerRecord{Desc: rec.Desc, TOCDigest: rec.TOC.Digest, TOCOffset: rec.TOC.Offset, TOCFormat: rec.TOC.Format, UsedAt: now().Unix(), TOCMember: member})
	if err != nil {
		return fmt.Errorf("encoding record of layer %s: %w", rec.Desc.Digest, err)
	}
	// The member is stored as the blob has it: already compressed, and a
	// few bytes per entry where the JSON can be a GiB.
	z := rec.TOC.Member
	if !member {
		var buf bytes.Buffer
		zw := gzip.NewWriter(&buf)
		if _, err := zw.Write(rec.TOC.JSON); err != nil {
			return fmt.Errorf("compressing TOC %s: %w", rec.TOC.Digest, err)
		}
		if err := zw.Close(); err != nil {
			return fmt.Errorf("compressing TOC %s: %w", rec.TOC.Digest, err)
		}
		z = buf.Bytes()
	}
	err = s.db.Update(func(tx *bolt.Tx) error {
		blob := []byte(rec.Desc.Digest.String())
		if err := tx.Bucket(bucketTOCs).Put([]byte(rec.TOC.Digest.String()), z); err != nil {
			return err
		}
		if err := tx.Bucket(bucketLayers).Put(blob, lr); err != nil {
			return err
		}
		return tx.Bucket(bucketRefs).Put(refKey(ref, d), blob)
	})
	if err != nil {
		return fmt.Errorf("storing record of layer %s for %s: %w", rec.Desc.Digest, ref, err)
	}
	return nil
}

// ErrNotFound says the store knows nothing about the layer.
var ErrNotFound = errors.New("no stored record")

// Lookup returns the record stored for (ref, d), or ErrNotFound.
func (s *Store) Lookup(ref string, d digest.Digest) (Record, error) {
	var (
		lr layerRecord
		z  []byte
	)
	err := s.db.View(func(tx *bolt.Tx) error {
		blob := tx.Bucket(bucketRefs).Get(refKey(ref, d))
		if blob == nil {
			return ErrNotFound
		}
		raw := tx.Bucket(bucketLayers).Get(blob)
		if raw == nil {
			return ErrNotFound
		}
		if err := json.Unmarshal(raw, &lr); err != nil {
			return fmt.Errorf("decoding record of layer %s: %w", blob, err)
		}
		tz := tx.Bucket(bucketTOCs).Get([]byte(lr.TOCDigest.String()))
		if tz == nil {
			return ErrNotFound
		}
		z = append([]byte(nil), tz...) // only valid inside the transaction
		return nil
	})
	if err != nil {
		return Record{}, err
	}
	if lr.TOCMember {
		return Record{Desc: lr.Desc, TOC: layer.TOC{Digest: lr.TOCDigest, Offset: lr.TOCOffset, Format: lr.TOCFormat, Member: z}}, nil
	}
	zr, err := gzip.NewReader(bytes.NewReader(z))
	if err != nil {
		return Record{}, fmt.Errorf("reading stored TOC %s: %w", lr.TOCDigest, err)
	}
	tocJSON, err := io.ReadAll(io.LimitReader(zr, maxTOCJSON))
	if err != nil {
		return Record{}, fmt.Errorf("reading stored TOC %s: %w", lr.TOCDigest, err)
	}
	return Record{
		Desc: lr.Desc,
		TOC:  layer.TOC{Digest: lr.TOCDigest, Offset: lr.TOCOffset, Format: lr.TOCFormat, JSON: tocJSON},
	}, nil
}

// Delete forgets the layer with blob digest blob (refs that point at it
// then find nothing).
func (s *Store) Delete(blob digest.Digest) error {
	err := s.db.Update(func(tx *bolt.Tx) error {
		lb := tx.Bucket(bucketLayers)
		if raw := lb.Get([]byte(blob.String())); raw != nil {
			var lr layerRecord
			if json.Unmarshal(raw, &lr) == nil && lr.TOCDigest != "" {
				if err := tx.Bucket(bucketTOCs).Delete([]byte(lr.TOCDigest.String())); err != nil {
					return err
				}
			}
		}
		return lb.Delete([]byte(blob.String()))
	})
	if err != nil {
		return fmt.Errorf("deleting record of layer %s: %w", blob, err)
	}
	return nil
}

// now is time.Now, replaceable by tests.
var now = time.Now

// Touch marks the layer with blob digest blob as used now, so Prune keeps
// it; a layer the store does not know is not an error.
func (s *Store) Touch(blob digest.Digest) error {
	err := s.db.Update(func(tx *bolt.Tx) error {
		lb := tx.Bucket(bucketLayers)
		raw := lb.Get([]byte(blob.String()))
		if raw == nil {
			return nil
		}
		return setUsed(lb, []byte(blob.String()), raw, now().Unix())
	})
	if err != nil {
		return fmt.Errorf("marking layer %s used: %w", blob, err)
	}
	return nil
}

// setUsed rewrites the layer record raw, stored under key, with UsedAt t.
func setUsed(lb *bolt.Bucket, key, raw []byte, t int64) error {
	var lr layerRecord
	if err := json.Unmarshal(raw, &lr); err != nil {
		return fmt.Errorf("decoding record of layer %s: %w", key, err)
	}
	lr.UsedAt = t
	b, err := json.Marshal(lr)
	if err != nil {
		return err
	}
	return lb.Put(key, b)
}

// Prune forgets every layer not used since before cutoff: its record, its profile, its
// TOC and the refs that lead to it. Layers inUse (those the daemon has
// open) count as used now. Records from before UsedAt existed start their
// clock now rather than go at once; records that do not decode are left
// to Lookup, which reports them (and the pool then drops them).
// Manifest records fetched before cutoff go too. It returns how many
// layers it forgot.
func (s *Store) Prune(cutoff time.Time, inUse map[digest.Digest]bool) (int, error) {
	stamp := now().Unix()
	gone := map[string]bool{}
	err := s.db.Update(func(tx *bolt.Tx) error {
		lb, tb := tx.Bucket(bucketLayers), tx.Bucket(bucketTOCs)
		type rewrite struct{ key, raw []byte }
		var fresh []rewrite
		var stale [][2][]byte // layer key, TOC key
		err := lb.ForEach(func(k, v []byte) error {
			var lr layerRecord
			switch {
			case json.Unmarshal(v, &lr) != nil:
			case lr.UsedAt == 0 || inUse[digest.Digest(k)]:
				fresh = append(fresh, rewrite{append([]byte(nil), k...), append([]byte(nil), v...)})
			case lr.UsedAt < cutoff.Unix():
				stale = append(stale, [2][]byte{append([]byte(nil), k...), []byte(lr.TOCDigest.String())})
			}
			return nil
		})
		if err != nil {
			return err
		}
		// Changing a bucket while iterating over it is not allowed.
		for _, r := range fresh {
			if err := setUsed(lb, r.key, r.raw, stamp); err != nil {
				return err
			}
		}
		for _, st := range stale {
			if err := tb.Delete(st[1]); err != nil {
				return err
			}
			if err := deleteProfile(tx, st[0]); err != nil {
				return err
			}
			if err := lb.Delete(st[0]); err != nil {
				return err
			}
			gone[string(st[0])] = true
		}
		rb := tx.Bucket(bucketRefs)
		var refs [][]byte
		err = rb.ForEach(func(k, v []byte) error {
			if gone[string(v)] {
				refs = append(refs, append([]byte(nil), k...))
			}
			return nil
		})
		if err != nil {
			return err
		}
		for _, k := range refs {
			if err := rb.Delete(k); err != nil {
				return err
			}
		}
		if err := pruneProfiles(tx, cutoff, stamp, inUse); err != nil {
			return err
		}
		return pruneManifests(tx, cutoff)
	})
	if err != nil {
		return 0, fmt.Errorf("pruning layer records: %w", err)
	}
	return len(gone), nil
}

// pruneProfiles forgets the profiles of layers with no record (imported,
// their layer never opened here) stored before cutoff. A profile whose
// layer has a record goes with the record; one from before its store time
// was kept starts aging now (stamp), as a layer record without UsedAt
// does.
func pruneProfiles(tx *bolt.Tx, cutoff time.Time, stamp int64, inUse map[digest.Digest]bool) error {
	lb, times := tx.Bucket(bucketLayers), tx.Bucket(bucketProfileTimes)
	var stale, unstamped [][]byte
	err := tx.Bucket(bucketProfiles).ForEach(func(k, _ []byte) error {
		if lb.Get(k) != nil || inUse[digest.Digest(k)] {
			return nil
		}
		at, err := strconv.ParseInt(string(times.Get(k)), 10, 64)
		switch {
		case err != nil:
			unstamped = append(unstamped, append([]byte(nil), k...))
		case at < cutoff.Unix():
			stale = append(stale, append([]byte(nil), k...))
		}
		return nil
	})
	if err != nil {
		return err
	}
	for _, k := range unstamped {
		if err := times.Put(k, []byte(strconv.FormatInt(stamp, 10))); err != nil {
			return err
		}
	}
	for _, k := range stale {
		if err := deleteProfile(tx, k); err != nil {
			return err
		}
	}
	return nil
}

// deleteProfile forgets the profile stored under key (a blob digest).
func deleteProfile(tx *bolt.Tx, key []byte) error {
	if err := tx.Bucket(bucketProfileTimes).Delete(key); err != nil {
		return err
	}
	return tx.Bucket(bucketProfiles).Delete(key)
}

// PutProfile stores p as the startup profile of its layer (p.Blob),
// replacing any earlier one.
func (s *Store) PutProfile(p *profile.Profile) error {
	b, err := profile.Marshal(p)
	if err != nil {
		return fmt.Errorf("encoding profile of layer %s: %w", p.Blob, err)
	}
	err = s.db.Update(func(tx *bolt.Tx) error {
		key := []byte(p.Blob.String())
		if err := tx.Bucket(bucketProfileTimes).Put(key, []byte(strconv.FormatInt(now().Unix(), 10))); err != nil {
			return err
		}
		return tx.Bucket(bucketProfiles).Put(key, b)
	})
	if err != nil {
		return fmt.Errorf("storing profile of layer %s: %w", p.Blob, err)
	}
	return nil
}

// Profile returns the startup profile stored for the layer with blob
// digest blob, or ErrNotFound. One that does not decode is an error
// wrapping profile.ErrInvalid.
func (s *Store) Profile(blob digest.Digest) (*profile.Profile, error) {
	var raw []byte
	err := s.db.View(func(tx *bolt.Tx) error {
		v := tx.Bucket(bucketProfiles).Get([]byte(blob.String()))
		if v == nil {
			return ErrNotFound
		}
		raw = append([]byte(nil), v...)
		return nil
	})
	if err != nil {
		return nil, err
	}
	p, err := profile.Unmarshal(raw)
	if err != nil {
		return nil, fmt.Errorf("stored profile of layer %s: %w", blob, err)
	}
	if p.Blob != blob {
		return nil, fmt.Errorf("stored profile of layer %s names layer %s: %w", blob, p.Blob, profile.ErrInvalid)
	}
	return p, nil
}
