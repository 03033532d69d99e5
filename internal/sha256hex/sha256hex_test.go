package sha256hex

import (
	"strings"
	"testing"
)

func TestValid(t *testing.T) {
	sum := "a665a45920422f9d417e4867efdc4fb8a04a1f3fff1fa07e998e86f7f7a27ae3"
	tests := []struct {
		s    string
		want bool
	}{
		{sum, true},
		{strings.Repeat("0", 64), true},
		{strings.ToUpper(sum), false},
		{sum[:63], false},
		{sum + "0", false},
		{sum[:63] + "g", false},
		{sum[:63] + "/", false},
		{sum[:63] + ":", false},
		{sum[:63] + "\xff", false},
		{"", false},
	}
	for _, tc := range tests {
		if got := Valid(tc.s); got != tc.want {
			t.Errorf("Valid(%q) = %v, want %v", tc.s, got, tc.want)
		}
	}
}
