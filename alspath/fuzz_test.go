package alspath

import (
	"encoding/base64"
	"errors"
	"strings"
	"testing"
)

// FuzzParseElement feeds arbitrary path elements to the grammar. Nothing
// may panic; every refusal is ErrGrammar; what is accepted is text without
// control characters, and an accepted reference is stable (parsing it again
// gives itself), so two spellings of a path cannot name different layers.
func FuzzParseElement(f *testing.F) {
	std := func(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }
	url := func(s string) string { return base64.RawURLEncoding.EncodeToString([]byte(s)) }
	for _, s := range []string{
		std("registry.example/app:1.2"),
		std("docker.io/library/busybox@sha256:" + strings.Repeat("a", 64)),
		std("127.0.0.1:5000/x/y:z@sha256:" + strings.Repeat("b", 64)),
		url(RefAnnotation + "=registry.example/app:1.2"),
		url(LayerAnnotation + "=sha256:" + strings.Repeat("c", 64)),
		url(TOCDigestAnnotation + "=md5:d41d8cd98f00b204e9800998ecf8427e"),
		// Found by the fuzzer: a "tag" holding ':' left a reference
		// that did not read back as itself.
		std("cmtcm4ap4gm4:04:}@sha256:" + strings.Repeat("fbc", 21) + "e"),
		std("=novalue"), std("k="), std("a\x00b"), std("../../etc"),
		std(strings.Repeat("a", 5000)), "not base64!", "", "====", "rootfs.", "rootfs..", "rootfs.x/y",
		"sha256:" + strings.Repeat("0", 64), "sha512:" + strings.Repeat("0", 128),
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		el, err := ParseElement(s)
		if err != nil {
			if !errors.Is(err, ErrGrammar) {
				t.Fatalf("ParseElement(%q): %v is not ErrGrammar", s, err)
			}
		} else {
			for _, v := range []string{el.Key, el.Value, el.Ref} {
				if strings.ContainsFunc(v, isControl) {
					t.Fatalf("ParseElement(%q) accepted control characters: %+v", s, el)
				}
			}
			switch {
			case el.IsAnnotation():
				if el.Ref != "" || strings.Contains(el.Key, "=") {
					t.Fatalf("ParseElement(%q) = %+v", s, el)
				}
			case el.Ref == "":
				t.Fatalf("ParseElement(%q) accepted neither an annotation nor a reference", s)
			default:
				again, err := ParseRef(el.Ref)
				if err != nil || again != el.Ref {
					t.Fatalf("reference %q from %q parses again to %q, %v", el.Ref, s, again, err)
				}
			}
		}

		if d, err := ParseDigest(s); err == nil {
			if d.String() != s || d.Validate() != nil {
				t.Fatalf("ParseDigest(%q) = %q", s, d)
			}
		} else if !errors.Is(err, ErrGrammar) {
			t.Fatalf("ParseDigest(%q): %v is not ErrGrammar", s, err)
		}

		if id, err := ParseLayerID(s); err == nil {
			if id == "" || id == "." || id == ".." || strings.Contains(id, "/") && !strings.Contains(s, "/") {
				t.Fatalf("ParseLayerID(%q) = %q", s, id)
			}
		}
	})
}
