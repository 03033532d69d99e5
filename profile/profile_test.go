package profile

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"

	digest "github.com/opencontainers/go-digest"
)

func chunk(i int) Chunk {
	return Chunk{Offset: int64(i) * 100, End: int64(i)*100 + 100, Digest: digest.Digest(fmt.Sprintf("sha256:%064x", i))}
}

func sample(n int) *Profile {
	p := &Profile{Blob: digest.FromString("blob"), TOC: digest.FromString("toc")}
	for i := range n {
		p.Chunks = append(p.Chunks, chunk(i))
	}
	return p
}

func TestRoundTrip(t *testing.T) {
	p := sample(5)
	p.Chunks[2].Inner = 7
	b, err := Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	got, err := Unmarshal(b)
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(got) != fmt.Sprint(p) {
		t.Errorf("round trip: %+v, want %+v", got, p)
	}
	sb, err := MarshalSet(Set{Profiles: []*Profile{p, sample(1)}})
	if err != nil {
		t.Fatal(err)
	}
	s, err := UnmarshalSet(sb)
	if err != nil || len(s.Profiles) != 2 || s.Find(p.Blob) == nil {
		t.Fatalf("UnmarshalSet: %+v, %v", s, err)
	}
}

func TestUnmarshalRefuses(t *testing.T) {
	good, err := Marshal(sample(3))
	if err != nil {
		t.Fatal(err)
	}
	edit := func(old, new string) string {
		if !strings.Contains(string(good), old) {
			t.Fatalf("%q not in %s", old, good)
		}
		return strings.Replace(string(good), old, new, 1)
	}
	huge := sample(MaxChunks + 1)
	cases := map[string]string{
		"not JSON":        "{",
		"empty":           "",
		"other version":   edit(`"version":1`, `"version":2`),
		"no version":      edit(`"version":1,`, ``),
		"unknown field":   edit(`"version":1`, `"version":1,"x":1`),
		"trailing data":   string(good) + "{}",
		"bad blob":        edit(`"blob":"sha256:`, `"blob":"sha256:zz`),
		"no toc":          edit(`"toc":"`+sample(1).TOC.String()+`"`, `"toc":""`),
		"negative offset": edit(`"o":0`, `"o":-1`),
		"empty range":     edit(`"e":100`, `"e":0`),
		"oversized":       `{"version":1,"blob":"` + strings.Repeat(" ", MaxEncoded) + `"}`,
		"too many chunks": func() string {
			huge.Blob = digest.FromString("x")
			b, _ := jsonOf(huge)
			return string(b)
		}(),
	}
	for name, in := range cases {
		t.Run(name, func(t *testing.T) {
			if _, err := Unmarshal([]byte(in)); !errors.Is(err, ErrInvalid) {
				t.Errorf("Unmarshal: %v, want ErrInvalid", err)
			}
		})
	}
	if _, err := UnmarshalSet([]byte(`{"version":1,"layers":[` + string(good) + `]}`)); !errors.Is(err, ErrInvalid) {
		t.Errorf("a Set holding a versioned profile: %v, want ErrInvalid (unknown field)", err)
	}
	if _, err := Marshal(huge); !errors.Is(err, ErrInvalid) {
		t.Errorf("Marshal of %d chunks: %v, want ErrInvalid", len(huge.Chunks), err)
	}
}

func TestMerge(t *testing.T) {
	old := &Profile{Blob: "sha256:b", TOC: "sha256:t", Chunks: []Chunk{chunk(1), chunk(2), chunk(3), chunk(4)}}
	newer := &Profile{Blob: "sha256:b", TOC: "sha256:t", Chunks: []Chunk{chunk(5), chunk(2), chunk(6), chunk(7)}}
	got := Merge(old, newer)
	want := []Chunk{chunk(5), chunk(1), chunk(2), chunk(6), chunk(3), chunk(7), chunk(4)}
	if fmt.Sprint(got.Chunks) != fmt.Sprint(want) {
		t.Errorf("Merge = %v\nwant %v", got.Chunks, want)
	}
	other := &Profile{Blob: "sha256:b", TOC: "sha256:other", Chunks: []Chunk{chunk(9)}}
	if got := Merge(old, other); got != other {
		t.Errorf("Merge with another TOC kept the old chunks: %v", got.Chunks)
	}
	if Merge(nil, newer) != newer || Merge(old, nil) != old {
		t.Error("Merge with nil did not return the other")
	}
	big := sample(MaxChunks)
	big2 := sample(MaxChunks + 10)
	big2.Chunks = big2.Chunks[10:]
	if n := len(Merge(big, big2).Chunks); n != MaxChunks {
		t.Errorf("Merge kept %d chunks, want the bound %d", n, MaxChunks)
	}
}

func jsonOf(p *Profile) ([]byte, error) {
	return json.Marshal(versioned{Version: Version, Profile: *p})
}
