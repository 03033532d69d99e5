package layer

import (
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/containerd/stargz-snapshotter/estargz"
	jsonv2 "github.com/go-json-experiment/json"
	"github.com/go-json-experiment/json/jsontext"
	jsonv1 "github.com/go-json-experiment/json/v1"
	digest "github.com/opencontainers/go-digest"

	"github.com/poolfs/poolfs/internal/sha256hex"
)

// errTwoEntryLists refuses a TOC object with two "entries" members:
// encoding/json would merge the second list into the first entry by
// entry, which a decoder that never holds the first list cannot do, and
// no tool writes such a TOC.
var errTwoEntryLists = errors.New(`TOC has more than one "entries" member`)

// streamTOC decodes TOC JSON from r one entry at a time, handing each to
// add (nil for a JSON null), so that a TOC is never held whole: neither
// its JSON (up to maxTOCJSON) nor its decoded entries, which took several
// hundred bytes each. It uses the encoding/json/v2 implementation
// (go-json-experiment/json, the Go team's mirror of it) set to
// encoding/json's v1 semantics: case-insensitive names, duplicate names
// and invalid UTF-8 accepted as v1 accepts them. That decoder took the
// python layer's TOC in 12 ms where encoding/json took 30 ms, and
// FuzzDecodeTOCMatchesEncodingJSON holds it to encoding/json's results.
// goccy/go-json is faster still but not for bytes from a registry: its
// pooled decoder state can be left broken by malformed input so that
// later calls panic (goccy/go-json issue 604, open, fix unmerged).
//
// onList, if not nil, is called when an "entries" array starts.
func streamTOC(r io.Reader, add func(te *estargz.TOCEntry) error, onList func()) (version int, err error) {
	opts := jsonv1.DefaultOptionsV1()
	dec := jsontext.NewDecoder(r, opts)
	tok, err := dec.ReadToken()
	if err != nil {
		return 0, fmt.Errorf("decoding TOC JSON: %w", err)
	}
	switch tok.Kind() {
	case 'n':
		// null leaves the TOC empty, as encoding/json does.
	case '{':
		sawEntries := false
		for dec.PeekKind() != '}' {
			name, err := dec.ReadToken()
			if err != nil {
				return 0, fmt.Errorf("decoding TOC JSON: %w", err)
			}
			switch {
			case strings.EqualFold(name.String(), "version"):
				if err := jsonv2.UnmarshalDecode(dec, &version, opts); err != nil {
					return 0, fmt.Errorf("decoding TOC JSON: version: %w", err)
				}
			case strings.EqualFold(name.String(), "entries"):
				if sawEntries {
					return 0, errTwoEntryLists
				}
				sawEntries = true
				if err := streamEntries(dec, opts, add, onList); err != nil {
					return 0, err
				}
			default:
				if err := dec.SkipValue(); err != nil {
					return 0, fmt.Errorf("decoding TOC JSON: %w", err)
				}
			}
		}
		if _, err := dec.ReadToken(); err != nil {
			return 0, fmt.Errorf("decoding TOC JSON: %w", err)
		}
	default:
		return 0, fmt.Errorf("decoding TOC JSON: the TOC is a JSON %s, not an object", tok.Kind())
	}
	if _, err := dec.ReadToken(); err != io.EOF {
		if err == nil {
			err = errors.New("data after the TOC object")
		}
		return 0, fmt.Errorf("decoding TOC JSON: %w", err)
	}
	return version, nil
}

// streamEntries decodes the "entries" array, one fresh entry per element.
func streamEntries(dec *jsontext.Decoder, opts jsonv2.Options, add func(*estargz.TOCEntry) error, onList func()) error {
	switch dec.PeekKind() {
	case 'n':
		_, err := dec.ReadToken()
		return err
	case '[':
	default:
		// Let the decoder say what it found, as encoding/json would.
		var entries []*estargz.TOCEntry
		if err := jsonv2.UnmarshalDecode(dec, &entries, opts); err != nil {
			return fmt.Errorf("decoding TOC JSON: entries: %w", err)
		}
		return nil
	}
	if _, err := dec.ReadToken(); err != nil {
		return fmt.Errorf("decoding TOC JSON: %w", err)
	}
	if onList != nil {
		onList()
	}
	for i := 0; dec.PeekKind() != ']'; i++ {
		if dec.PeekKind() == 'n' {
			if _, err := dec.ReadToken(); err != nil {
				return fmt.Errorf("decoding TOC JSON: %w", err)
			}
			if err := add(nil); err != nil {
				return err
			}
			continue
		}
		te := new(estargz.TOCEntry)
		if err := jsonv2.UnmarshalDecode(dec, te, opts); err != nil {
			return fmt.Errorf("decoding TOC JSON: entry %d: %w", i, err)
		}
		if err := add(te); err != nil {
			return err
		}
	}
	if _, err := dec.ReadToken(); err != nil {
		return fmt.Errorf("decoding TOC JSON: %w", err)
	}
	return nil
}

// decodeTOC decodes a whole TOC JSON document with streamTOC, for tests
// and tools that want the entries themselves.
func decodeTOC(b []byte) (*estargz.JTOC, error) {
	toc := new(estargz.JTOC)
	v, err := streamTOC(strings.NewReader(string(b)), func(te *estargz.TOCEntry) error {
		toc.Entries = append(toc.Entries, te)
		return nil
	}, func() { toc.Entries = []*estargz.TOCEntry{} })
	if err != nil {
		return nil, err
	}
	toc.Version = v
	return toc, nil
}

// parseDigest is digest.Parse with a fast path for the one form TOCs use
// (sha256 in lower-case hex). digest.Parse matches a regular expression,
// which cost a sixth of opening a TOC (profiled on the python layer).
func parseDigest(s string) (digest.Digest, error) {
	const prefix = "sha256:"
	if len(s) == len(prefix)+sha256hex.Len && s[:len(prefix)] == prefix && sha256hex.Valid(s[len(prefix):]) {
		return digest.Digest(s), nil
	}
	return digest.Parse(s)
}
