package alspath

import (
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"

	"github.com/google/go-containerregistry/pkg/name"
	digest "github.com/opencontainers/go-digest"

	"github.com/poolfs/poolfs/layer"
)

// Annotation keys of grammar 1 (the pool) that poolfs needs.
const (
	RefAnnotation       = "containers/image/target.reference"
	LayerAnnotation     = "containers/image/target.layerdigest"
	TOCDigestAnnotation = "containerd.io/snapshot/stargz/toc.digest"

	// RootfsPrefix starts the last element of a grammar-1 path.
	RootfsPrefix = "rootfs."
)

// Limits that keep hostile paths cheap. A name longer than the kernel's
// NAME_MAX never reaches us; these bound what a path can make us hold.
const (
	maxElementLen = 255
	// MaxAnnotations is the most annotation elements one grammar-1 path
	// may have.
	MaxAnnotations = 64
	maxRefLen      = 4096
	maxLayerIDLen  = 255
)

// ErrGrammar marks a path element that fits neither grammar.
var ErrGrammar = errors.New("path element fits no grammar")

// encodings are tried in this order: the containers/storage client uses
// standard padded base64, but hand-made paths and other clients use the
// URL-safe or unpadded forms, which the brief asks us to accept.
var encodings = []*base64.Encoding{
	base64.StdEncoding,
	base64.RawStdEncoding,
	base64.URLEncoding,
	base64.RawURLEncoding,
}

// decodeElement decodes one base64 path element in any of the accepted
// alphabets. The result must be printable UTF-8: annotations and image
// references are text, and anything else is not ours to interpret.
func decodeElement(s string) (string, error) {
	if s == "" || len(s) > maxRefLen {
		return "", fmt.Errorf("%w: element of %d bytes", ErrGrammar, len(s))
	}
	for _, enc := range encodings {
		b, err := enc.DecodeString(s)
		if err != nil {
			continue
		}
		text := string(b)
		if !utf8.ValidString(text) || strings.ContainsFunc(text, isControl) {
			return "", fmt.Errorf("%w: %q decodes to non-text", ErrGrammar, s)
		}
		return text, nil
	}
	return "", fmt.Errorf("%w: %q is not base64", ErrGrammar, s)
}

func isControl(r rune) bool { return r < 0x20 || r == 0x7f }

// Element is one decoded top-level path element: either a grammar-1
// annotation or a grammar-2 image reference.
type Element struct {
	Key, Value string // grammar 1
	Ref        string // grammar 2 (normalised reference)
}

// IsAnnotation tells grammar 1 from grammar 2.
func (e Element) IsAnnotation() bool { return e.Key != "" }

// ParseElement decodes a path element. A decoded text with "=" is an
// annotation (references never contain "="); anything else must be an image
// reference.
func ParseElement(s string) (Element, error) {
	text, err := decodeElement(s)
	if err != nil {
		return Element{}, err
	}
	if k, v, ok := strings.Cut(text, "="); ok {
		if k == "" {
			return Element{}, fmt.Errorf("%w: annotation %q has no key", ErrGrammar, text)
		}
		return Element{Key: k, Value: v}, nil
	}
	ref, err := ParseRef(text)
	if err != nil {
		return Element{}, err
	}
	return Element{Ref: ref}, nil
}

// ParseRef validates an image reference and returns it in the form the
// registry client takes. containers/image may name a reference by tag and
// digest at once ("repo:tag@sha256:..."); the digest alone is authoritative.
func ParseRef(s string) (string, error) {
	s = stripTagBeforeDigest(s)
	r, err := name.ParseReference(s)
	if err != nil {
		return "", fmt.Errorf("%w: %q is not an image reference: %w", ErrGrammar, s, err)
	}
	// The form returned must read back as itself, or two spellings could
	// name different repositories ("a:1:x@d" leaves "a:1@d", which the
	// tag stripping above would read as "a@d"). Found by FuzzParseElement.
	canon := r.String()
	if stripTagBeforeDigest(canon) != canon {
		return "", fmt.Errorf("%w: %q is not an image reference (it does not read back as itself)", ErrGrammar, s)
	}
	return canon, nil
}

// stripTagBeforeDigest turns "repo:tag@digest" into "repo@digest".
func stripTagBeforeDigest(s string) string {
	if repo, dg, ok := strings.Cut(s, "@"); ok {
		if i := strings.LastIndex(repo, ":"); i > strings.LastIndex(repo, "/") {
			repo = repo[:i]
		}
		return repo + "@" + dg
	}
	return s
}

// ParseDigest accepts a layer digest path element. Only sha256 is used by
// registries for layers; other algorithms are refused rather than guessed.
func ParseDigest(s string) (digest.Digest, error) {
	d, err := digest.Parse(s)
	if err != nil {
		return "", fmt.Errorf("%w: %q is not a digest: %w", ErrGrammar, s, err)
	}
	if d.Algorithm() != digest.SHA256 {
		return "", fmt.Errorf("%w: digest algorithm %q not supported", ErrGrammar, d.Algorithm())
	}
	return d, nil
}

// LayerKey is what a path asks for: the layer Digest (its blob or TOC
// digest) of image Ref, and for grammar 1 the TOC digest the layer must
// have, if the path names one. It has the fields of pool.LayerKey, which
// the pool is asked for; this package does not import the pool.
type LayerKey struct {
	Ref       string
	Digest    digest.Digest
	TOCDigest digest.Digest // optional
}

// KeyFromAnnotations extracts the layer a grammar-1 path names.
func KeyFromAnnotations(ann map[string]string) (LayerKey, error) {
	refText, ok := ann[RefAnnotation]
	if !ok {
		return LayerKey{}, fmt.Errorf("%w: missing annotation %s", ErrGrammar, RefAnnotation)
	}
	dgText, ok := ann[LayerAnnotation]
	if !ok {
		return LayerKey{}, fmt.Errorf("%w: missing annotation %s", ErrGrammar, LayerAnnotation)
	}
	ref, err := ParseRef(refText)
	if err != nil {
		return LayerKey{}, err
	}
	dg, err := ParseDigest(dgText)
	if err != nil {
		return LayerKey{}, err
	}
	key := LayerKey{Ref: ref, Digest: dg}
	// eStargz's TOC digest or zstd:chunked's manifest checksum: whichever
	// the client passed on from the manifest, the layer is verified by it.
	td, err := layer.TOCDigestFromAnnotations(ann)
	if err != nil {
		return LayerKey{}, fmt.Errorf("%w: %w", ErrGrammar, err)
	}
	if td != "" {
		if key.TOCDigest, err = ParseDigest(td.String()); err != nil {
			return LayerKey{}, err
		}
	}
	return key, nil
}

// ParseLayerID validates the ID in "rootfs.<ID>": the client's name for the
// layer, which poolfs only echoes, so only path safety matters.
func ParseLayerID(s string) (string, error) {
	id, ok := strings.CutPrefix(s, RootfsPrefix)
	if !ok || id == "" || len(id) > maxLayerIDLen || id == "." || id == ".." {
		return "", fmt.Errorf("%w: %q is not rootfs.<layer ID>", ErrGrammar, s)
	}
	return id, nil
}
