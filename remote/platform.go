package remote

import (
	"runtime"
	"runtime/debug"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// hostPlatform describes the machine we run on, the way image indexes
// label their children.
func hostPlatform() v1.Platform {
	p := v1.Platform{OS: runtime.GOOS, Architecture: runtime.GOARCH}
	switch runtime.GOARCH {
	case "arm64":
		p.Variant = "v8"
	case "arm":
		// The runtime does not export GOARM, but the build settings carry
		// it ("7" or e.g. "6,softfloat").
		p.Variant = "v7"
		if bi, ok := debug.ReadBuildInfo(); ok {
			for _, s := range bi.Settings {
				if s.Key == "GOARM" && s.Value != "" {
					v, _, _ := strings.Cut(s.Value, ",")
					p.Variant = "v" + v
				}
			}
		}
	}
	return p
}

// normVariant maps the variants that are implied when absent, so that a
// host "arm64/v8" matches an index entry that just says "arm64".
func normVariant(arch, variant string) string {
	if variant != "" {
		return variant
	}
	switch arch {
	case "arm64":
		return "v8"
	case "arm":
		return "v7"
	}
	return ""
}

// platformMatches reports whether an index child labelled have can serve a
// request for want. Fields left empty in want are not compared, like
// ggcr's own matcher, except that implied variants are normalised first.
func platformMatches(have, want v1.Platform) bool {
	if have.OS != want.OS || have.Architecture != want.Architecture {
		return false
	}
	if want.Variant != "" && normVariant(have.Architecture, have.Variant) != normVariant(want.Architecture, want.Variant) {
		return false
	}
	if want.OSVersion != "" && have.OSVersion != want.OSVersion {
		return false
	}
	return subset(want.OSFeatures, have.OSFeatures) && subset(want.Features, have.Features)
}

func subset(want, have []string) bool {
	for _, w := range want {
		found := false
		for _, h := range have {
			if h == w {
				found = true
				break
			}
		}
		if !found {
			return false
		}
	}
	return true
}

// pickChild returns the first index entry that matches want. Entries without
// a platform are taken as linux/amd64, as ggcr does.
func pickChild(idx *v1.IndexManifest, want v1.Platform) (v1.Descriptor, bool) {
	for _, d := range idx.Manifests {
		have := v1.Platform{OS: "linux", Architecture: "amd64"}
		if d.Platform != nil {
			have = *d.Platform
		}
		if platformMatches(have, want) {
			return d, true
		}
	}
	return v1.Descriptor{}, false
}
