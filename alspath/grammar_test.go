package alspath

import (
	"encoding/base64"
	"errors"
	"strings"
	"testing"
)

func TestParseElement(t *testing.T) {
	ann := "containers/image/target.reference=127.0.0.1:5000/a/b:v1"
	ref := "127.0.0.1:5000/test/app:v1"
	tests := []struct {
		name    string
		elem    string
		wantKey string
		wantVal string
		wantRef string
		wantErr bool
	}{
		{"annotation std", base64.StdEncoding.EncodeToString([]byte(ann)), "containers/image/target.reference", "127.0.0.1:5000/a/b:v1", "", false},
		{"annotation url", base64.URLEncoding.EncodeToString([]byte(ann)), "containers/image/target.reference", "127.0.0.1:5000/a/b:v1", "", false},
		{"annotation raw url", base64.RawURLEncoding.EncodeToString([]byte(ann)), "containers/image/target.reference", "127.0.0.1:5000/a/b:v1", "", false},
		{"annotation raw std", base64.RawStdEncoding.EncodeToString([]byte("k=v")), "k", "v", "", false},
		{"empty value", base64.StdEncoding.EncodeToString([]byte("k=")), "k", "", "", false},
		{"reference", base64.StdEncoding.EncodeToString([]byte(ref)), "", "", ref, false},
		{"reference tag and digest", base64.StdEncoding.EncodeToString([]byte("r.io/a:v1@sha256:" + strings.Repeat("a", 64))), "", "", "r.io/a@sha256:" + strings.Repeat("a", 64), false},
		{"not base64", "diff", "", "", "", true},
		{"empty", "", "", "", "", true},
		{"no key", base64.StdEncoding.EncodeToString([]byte("=v")), "", "", "", true},
		{"binary", base64.StdEncoding.EncodeToString([]byte{0xff, 0xfe, 0x00}), "", "", "", true},
		{"control chars", base64.StdEncoding.EncodeToString([]byte("a\nb")), "", "", "", true},
		{"bad reference", base64.StdEncoding.EncodeToString([]byte("UPPER/Case::x")), "", "", "", true},
		{"huge", strings.Repeat("A", 5000), "", "", "", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			el, err := ParseElement(tt.elem)
			if tt.wantErr {
				if err == nil {
					t.Fatalf("ParseElement(%q) = %+v, want error", tt.elem, el)
				}
				if !errors.Is(err, ErrGrammar) {
					t.Errorf("error %v does not wrap ErrGrammar", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseElement(%q): %v", tt.elem, err)
			}
			if el.Key != tt.wantKey || el.Value != tt.wantVal || el.Ref != tt.wantRef {
				t.Errorf("ParseElement(%q) = %+v, want key %q value %q ref %q", tt.elem, el, tt.wantKey, tt.wantVal, tt.wantRef)
			}
		})
	}
}

func TestParseDigest(t *testing.T) {
	hex := strings.Repeat("0123456789abcdef", 4)
	tests := []struct {
		in      string
		wantErr bool
	}{
		{"sha256:" + hex, false},
		{"sha256:" + hex[:63], true},
		{"sha256:" + strings.ToUpper(hex), true},
		{"sha512:" + hex + hex, true},
		{"md5:abc", true},
		{hex, true},
		{"", true},
	}
	for _, tt := range tests {
		_, err := ParseDigest(tt.in)
		if (err != nil) != tt.wantErr {
			t.Errorf("ParseDigest(%q) error = %v, wantErr %v", tt.in, err, tt.wantErr)
		}
	}
}

func TestKeyFromAnnotations(t *testing.T) {
	dg := "sha256:" + strings.Repeat("b", 64)
	toc := "sha256:" + strings.Repeat("c", 64)
	tests := []struct {
		name    string
		ann     map[string]string
		wantErr bool
		wantTOC string
	}{
		{"complete", map[string]string{RefAnnotation: "r.io/a:v1", LayerAnnotation: dg}, false, ""},
		{"with toc and extras", map[string]string{RefAnnotation: "r.io/a:v1", LayerAnnotation: dg, TOCDigestAnnotation: toc, "x": "y"}, false, toc},
		{"missing ref", map[string]string{LayerAnnotation: dg}, true, ""},
		{"missing digest", map[string]string{RefAnnotation: "r.io/a:v1"}, true, ""},
		{"bad digest", map[string]string{RefAnnotation: "r.io/a:v1", LayerAnnotation: "sha256:zz"}, true, ""},
		{"bad toc digest", map[string]string{RefAnnotation: "r.io/a:v1", LayerAnnotation: dg, TOCDigestAnnotation: "nope"}, true, ""},
		{"bad ref", map[string]string{RefAnnotation: "::", LayerAnnotation: dg}, true, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			key, err := KeyFromAnnotations(tt.ann)
			if (err != nil) != tt.wantErr {
				t.Fatalf("error = %v, wantErr %v", err, tt.wantErr)
			}
			if err == nil && key.TOCDigest.String() != tt.wantTOC {
				t.Errorf("TOC digest = %q, want %q", key.TOCDigest, tt.wantTOC)
			}
		})
	}
}

func TestParseLayerID(t *testing.T) {
	tests := []struct {
		in   string
		want string
		ok   bool
	}{
		{"rootfs.abc", "abc", true},
		{"rootfs.", "", false},
		{"rootfs..", "", false},
		{"rootfs", "", false},
		{"diff", "", false},
		{"rootfs." + strings.Repeat("x", 300), "", false},
	}
	for _, tt := range tests {
		got, err := ParseLayerID(tt.in)
		if (err == nil) != tt.ok || got != tt.want {
			t.Errorf("ParseLayerID(%q) = %q, %v", tt.in, got, err)
		}
	}
}

// TestStdBase64OfReferencesHasNoSlash backs refDir's assumption: every
// character an image reference may contain, in every position of a base64
// group, encodes without '/', so base64std(ref) is always one path element.
func TestStdBase64OfReferencesHasNoSlash(t *testing.T) {
	const refChars = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-/:@"
	for _, a := range refChars {
		for _, b := range refChars {
			for _, c := range refChars {
				enc := base64.StdEncoding.EncodeToString([]byte{byte(a), byte(b), byte(c)})
				if strings.Contains(enc, "/") {
					t.Fatalf("base64(%q) = %q contains '/'", string([]rune{a, b, c}), enc)
				}
			}
		}
	}
}
