package layer

import (
	"testing"

	"github.com/containerd/stargz-snapshotter/estargz"

	"github.com/poolfs/poolfs/fs/fstest"
)

func TestPrioritized(t *testing.T) {
	tests := []struct {
		name string
		opts []estargz.Option
		want []string
	}{
		{"no prioritized files", nil, nil},
		// A hard link drags its target along; directories are not listed.
		{"prioritized", []estargz.Option{estargz.WithPrioritizedFiles([]string{"etc/passwd", fstest.SampleHardLink, fstest.SampleBigFile})},
			[]string{"etc/passwd", fstest.SampleLinkedTo, fstest.SampleBigFile}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := openSample(t, tt.opts...)
			var got []string
			for _, e := range s.l.Prioritized() {
				got = append(got, e.Path)
			}
			if len(got) != len(tt.want) {
				t.Fatalf("Prioritized = %q, want %q", got, tt.want)
			}
			for i := range got {
				if got[i] != tt.want[i] {
					t.Errorf("Prioritized = %q, want %q", got, tt.want)
				}
			}
		})
	}
}

func TestCompressedRangeNonFiles(t *testing.T) {
	s := openSample(t)
	for _, p := range []string{"", "bin", "lib", "dev/null", "empty"} {
		if start, end := s.l.CompressedRange(lookup(t, s.l, p)); start != 0 || end != 0 {
			t.Errorf("CompressedRange(%q) = [%d, %d), want [0, 0)", p, start, end)
		}
	}
	if start, end := s.l.CompressedRange(nil); start != 0 || end != 0 {
		t.Error("CompressedRange(nil) is not empty")
	}
}
