package config

import (
	"fmt"
	"math"
	"strconv"
	"strings"
)

// Size is a number of bytes ("10GiB", "512M", "1000000") or, where allowed,
// a share of a filesystem ("10%").
type Size struct {
	Bytes   int64
	Percent float64 // > 0: Bytes is unset and the size is this share of a filesystem
}

var units = []struct {
	suffix string
	mult   int64
}{
	{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"TiB", 1 << 40},
	{"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9}, {"TB", 1e12},
	{"K", 1 << 10}, {"M", 1 << 20}, {"G", 1 << 30}, {"T", 1 << 40},
	{"B", 1},
}

// ParseSize parses a Size; see the type.
func ParseSize(s string) (Size, error) {
	t := strings.TrimSpace(s)
	if p, ok := strings.CutSuffix(t, "%"); ok {
		v, err := strconv.ParseFloat(strings.TrimSpace(p), 64)
		if err != nil || v <= 0 || v > 100 {
			return Size{}, fmt.Errorf("%q is not a percentage in (0, 100]", s)
		}
		return Size{Percent: v}, nil
	}
	mult := int64(1)
	for _, u := range units {
		if n, ok := strings.CutSuffix(t, u.suffix); ok {
			t, mult = strings.TrimSpace(n), u.mult
			break
		}
	}
	v, err := strconv.ParseFloat(t, 64)
	if err != nil || v < 0 || math.IsInf(v, 0) || v*float64(mult) > math.MaxInt64/2 {
		return Size{}, fmt.Errorf("%q is not a size like 10GiB, 512MiB or 10%%", s)
	}
	return Size{Bytes: int64(v * float64(mult))}, nil
}

func (s *Size) UnmarshalText(b []byte) error {
	v, err := ParseSize(string(b))
	if err != nil {
		return err
	}
	*s = v
	return nil
}

// UnmarshalTOML also accepts a bare integer (bytes).
func (s *Size) UnmarshalTOML(v any) error {
	switch x := v.(type) {
	case int64:
		if x < 0 {
			return fmt.Errorf("%d is not a size", x)
		}
		*s = Size{Bytes: x}
		return nil
	case string:
		return s.UnmarshalText([]byte(x))
	}
	return fmt.Errorf("%v is not a size like \"10GiB\"", v)
}

func (s Size) String() string {
	if s.Percent > 0 {
		return strconv.FormatFloat(s.Percent, 'f', -1, 64) + "%"
	}
	return strconv.FormatInt(s.Bytes, 10)
}

// Set makes *Size a flag.Value.
func (s *Size) Set(v string) error { return s.UnmarshalText([]byte(v)) }

// Resolve returns the size in bytes, computing a percentage of total.
func (s Size) Resolve(total int64) int64 {
	if s.Percent > 0 {
		return int64(float64(total) * s.Percent / 100)
	}
	return s.Bytes
}
