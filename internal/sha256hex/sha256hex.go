// Package sha256hex recognizes sha256 sums written the one way poolfs
// writes and expects them: 64 lower-case hex digits (TOC digests after
// "sha256:", disk cache file names).
package sha256hex

// Len is the length of a sha256 sum in hex.
const Len = 64

// Valid reports whether s is exactly Len lower-case hex digits.
func Valid(s string) bool {
	if len(s) != Len {
		return false
	}
	// One table lookup per byte: a TOC has two digests per file, and a
	// branchy range test was a fifth of building the python layer's view.
	for i := 0; i < len(s); i++ {
		if !lowerHex[s[i]] {
			return false
		}
	}
	return true
}

var lowerHex = func() (t [256]bool) {
	for _, c := range "0123456789abcdef" {
		t[c] = true
	}
	return t
}()
