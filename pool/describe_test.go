package pool

import (
	"errors"
	"testing"

	digest "github.com/opencontainers/go-digest"
	"github.com/sirupsen/logrus"

	"github.com/poolfs/poolfs/alspath"
	"github.com/poolfs/poolfs/layer"
	"github.com/poolfs/poolfs/remote"
)

// TestDescribe: remote finds a layer by any digest its annotations
// publish; the pool takes the TOC digest from the annotation the layer's
// format names and refuses a layer found through any other.
func TestDescribe(t *testing.T) {
	blob, toc, other := digest.FromString("blob"), digest.FromString("toc"), digest.FromString("other")
	log := logrus.NewEntry(logrus.New())
	tests := []struct {
		name    string
		ann     map[string]string
		by      digest.Digest
		wantTOC digest.Digest
		wantErr error
	}{
		{"blob digest, no annotations", nil, blob, "", nil},
		{"blob digest, eStargz", map[string]string{alspath.TOCDigestAnnotation: toc.String()}, blob, toc, nil},
		{"TOC digest, eStargz", map[string]string{alspath.TOCDigestAnnotation: toc.String()}, toc, toc, nil},
		{"manifest checksum, zstd:chunked", map[string]string{layer.ZstdChunkedChecksumAnnotation: toc.String()}, toc, toc, nil},
		{"legacy manifest checksum", map[string]string{layer.LegacyZstdChunkedChecksumAnnotation: toc.String()}, toc, toc, nil},
		{"another annotation's digest", map[string]string{alspath.TOCDigestAnnotation: toc.String(), "x": other.String()}, other, "", remote.ErrLayerNotFound},
		{"malformed TOC digest, blob digest", map[string]string{alspath.TOCDigestAnnotation: "nope"}, blob, "", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := describe(remote.LayerDesc{Digest: blob, Annotations: tt.ann}, tt.by, log)
			if !errors.Is(err, tt.wantErr) || (tt.wantErr == nil && err != nil) {
				t.Fatalf("describe: %v, want %v", err, tt.wantErr)
			}
			if err == nil && got.TOCDigest != tt.wantTOC {
				t.Errorf("TOCDigest %q, want %q", got.TOCDigest, tt.wantTOC)
			}
		})
	}
}
