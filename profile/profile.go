// Package profile is the startup profile of an eStargz layer: the chunks a
// container read from it while starting, in the order it first needed them.
// A daemon records one per layer, keeps it in meta.db, replays it (fetches
// those chunks early) when the layer is opened again on any node, and
// exchanges it with other nodes as a file or an OCI artifact. A profile is
// a hint: the layer checks every chunk it names against its own TOC, and
// the chunks are verified as always when fetched.
//
// Chunks are named by what the TOC says about them (compressed offset,
// inner offset, digest), never by file path or in-memory entry, so a
// profile stays valid for the same blob whatever the reader's layout.
package profile

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"

	digest "github.com/opencontainers/go-digest"
)

const (
	// Version is the encoding this package writes; Unmarshal refuses others.
	Version = 1

	// MediaType is the media type of an encoded Set (the artifact's layer
	// blob, and the file `poolfs profile export` writes).
	MediaType = "application/vnd.poolfs.profile.v1+json"

	// ArtifactType is the artifactType of the OCI manifest that carries a
	// Set for an image (its subject is the image manifest).
	ArtifactType = "application/vnd.poolfs.profile.v1"

	// MaxChunks bounds one layer's profile: far more than a start reads
	// (python print(42) needs a few hundred chunks), little enough that a
	// hostile profile cannot make a layer queue much work.
	MaxChunks = 1 << 15

	// MaxLayers bounds the layers of one Set.
	MaxLayers = 512

	// MaxEncoded bounds the encoded size of one Profile or Set that
	// Unmarshal accepts (a chunk takes about 110 bytes).
	MaxEncoded = 8 << 20
)

// ErrInvalid says an encoded profile is malformed, of another version, or
// over the bounds above.
var ErrInvalid = errors.New("invalid profile")

// Chunk names one chunk of the layer as its TOC does: the compressed
// offset of the gzip member holding it (the TOC entry's "offset"), the
// uncompressed bytes to skip in that member ("innerOffset"), and the
// digest of its uncompressed content ("chunkDigest"). End is where the
// chunk's compressed bytes end in the blob (the next member with data, or
// the TOC); it lets a reader fetch the range before it has the TOC, and
// the layer checks it like the rest.
type Chunk struct {
	Offset int64         `json:"o"`
	Inner  int64         `json:"i,omitempty"`
	End    int64         `json:"e"`
	Digest digest.Digest `json:"d"`
}

// Profile is one layer's startup profile. Blob is the layer's compressed
// blob digest, TOC the digest of its TOC JSON; Chunks are in first-need
// order, each at most once.
type Profile struct {
	Blob   digest.Digest `json:"blob"`
	TOC    digest.Digest `json:"toc"`
	Chunks []Chunk       `json:"chunks"`
}

// Bytes is the compressed size of the profile's chunks.
func (p *Profile) Bytes() int64 {
	var n int64
	for _, c := range p.Chunks {
		n += c.End - c.Offset
	}
	return n
}

// Validate checks what can be checked without the layer: digests that
// parse, sane ranges, no chunk twice, within MaxChunks.
func (p *Profile) Validate() error {
	if p == nil {
		return fmt.Errorf("%w: no profile", ErrInvalid)
	}
	if err := p.Blob.Validate(); err != nil {
		return fmt.Errorf("%w: blob digest %q: %v", ErrInvalid, p.Blob, err)
	}
	if err := p.TOC.Validate(); err != nil {
		return fmt.Errorf("%w: layer %s: TOC digest %q: %v", ErrInvalid, p.Blob, p.TOC, err)
	}
	if len(p.Chunks) > MaxChunks {
		return fmt.Errorf("%w: layer %s: %d chunks, more than %d", ErrInvalid, p.Blob, len(p.Chunks), MaxChunks)
	}
	seen := make(map[Chunk]bool, len(p.Chunks))
	for i, c := range p.Chunks {
		if c.Offset < 0 || c.Inner < 0 || c.End <= c.Offset {
			return fmt.Errorf("%w: layer %s: chunk %d: bad range %d+%d..%d", ErrInvalid, p.Blob, i, c.Offset, c.Inner, c.End)
		}
		if err := c.Digest.Validate(); err != nil {
			return fmt.Errorf("%w: layer %s: chunk %d: digest %q: %v", ErrInvalid, p.Blob, i, c.Digest, err)
		}
		if seen[c] {
			return fmt.Errorf("%w: layer %s: chunk %d at %d+%d named twice", ErrInvalid, p.Blob, i, c.Offset, c.Inner)
		}
		seen[c] = true
	}
	return nil
}

// versioned is the encoded form of a Profile.
type versioned struct {
	Version int `json:"version"`
	Profile
}

// Marshal encodes p (after Validate).
func Marshal(p *Profile) ([]byte, error) {
	if err := p.Validate(); err != nil {
		return nil, err
	}
	return json.Marshal(versioned{Version: Version, Profile: *p})
}

// Unmarshal decodes and validates one profile written by Marshal.
func Unmarshal(b []byte) (*Profile, error) {
	var v versioned
	if err := decode(b, &v, &v.Version); err != nil {
		return nil, err
	}
	p := v.Profile
	if err := p.Validate(); err != nil {
		return nil, err
	}
	return &p, nil
}

// Set is the profiles of several layers (of one image, usually): what an
// export file and a registry artifact hold.
type Set struct {
	Profiles []*Profile
}

type versionedSet struct {
	Version int        `json:"version"`
	Layers  []*Profile `json:"layers"`
}

// MarshalSet encodes s (each profile validated; at most MaxLayers).
func MarshalSet(s Set) ([]byte, error) {
	if len(s.Profiles) > MaxLayers {
		return nil, fmt.Errorf("%w: %d layers, more than %d", ErrInvalid, len(s.Profiles), MaxLayers)
	}
	for _, p := range s.Profiles {
		if err := p.Validate(); err != nil {
			return nil, err
		}
	}
	return json.Marshal(versionedSet{Version: Version, Layers: append([]*Profile{}, s.Profiles...)})
}

// UnmarshalSet decodes and validates a Set written by MarshalSet. One
// invalid profile makes the whole Set invalid: it came from one writer.
func UnmarshalSet(b []byte) (Set, error) {
	var v versionedSet
	if err := decode(b, &v, &v.Version); err != nil {
		return Set{}, err
	}
	if len(v.Layers) > MaxLayers {
		return Set{}, fmt.Errorf("%w: %d layers, more than %d", ErrInvalid, len(v.Layers), MaxLayers)
	}
	for _, p := range v.Layers {
		if err := p.Validate(); err != nil {
			return Set{}, err
		}
	}
	return Set{Profiles: v.Layers}, nil
}

// Find returns the profile of the layer with blob digest blob, or nil.
func (s Set) Find(blob digest.Digest) *Profile {
	for _, p := range s.Profiles {
		if p.Blob == blob {
			return p
		}
	}
	return nil
}

// decode parses b into v strictly (no unknown fields, one value) and
// checks the version it finds.
func decode(b []byte, v any, version *int) error {
	if len(b) > MaxEncoded {
		return fmt.Errorf("%w: %d bytes, more than %d", ErrInvalid, len(b), MaxEncoded)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	if dec.More() {
		return fmt.Errorf("%w: data after the profile", ErrInvalid)
	}
	if *version != Version {
		return fmt.Errorf("%w: version %d, want %d", ErrInvalid, *version, Version)
	}
	return nil
}

// Merge refines old with a newer recording: chunks from both, each once,
// ordered by when either run first needed them relative to its own length
// (a chunk needed early by either run stays early), bounded by MaxChunks
// (the latest-needed chunks go). Blob and TOC come from newer. Either may
// be nil.
func Merge(old, newer *Profile) *Profile {
	switch {
	case newer == nil:
		return old
	case old == nil || old.Blob != newer.Blob || old.TOC != newer.TOC:
		return newer
	}
	out := &Profile{Blob: newer.Blob, TOC: newer.TOC}
	seen := make(map[Chunk]bool, len(old.Chunks)+len(newer.Chunks))
	add := func(c Chunk) {
		if !seen[c] && len(out.Chunks) < MaxChunks {
			seen[c] = true
			out.Chunks = append(out.Chunks, c)
		}
	}
	// A two-way merge by fraction of each run: i/len(a) vs j/len(b).
	a, b := newer.Chunks, old.Chunks
	i, j := 0, 0
	for i < len(a) || j < len(b) {
		if j >= len(b) || (i < len(a) && i*len(b) <= j*len(a)) {
			add(a[i])
			i++
		} else {
			add(b[j])
			j++
		}
	}
	return out
}

// Source finds a profile published for a layer (in its image's registry,
// for one). Lookup returns (nil, nil) when there is none; the pool calls
// it beside the TOC read and never waits for it before serving.
type Source interface {
	Lookup(ctx context.Context, ref string, blob, toc digest.Digest) (*Profile, error)
}

// Expecter is a Source that can start looking for the profiles of ref's
// layers before the image's manifest is in: the pool calls Expect when a
// layer of ref is first asked for and the manifest is yet to be fetched
// (or when told to, by pool.ExpectProfiles), so that the Lookup after it
// has part of its way behind it. Expect does not block.
type Expecter interface {
	Expect(ref string)
}
