package remote

import (
	"context"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/types"
	digest "github.com/opencontainers/go-digest"
)

// TestResolveImage: through an index, the platform's manifest and config
// byte for byte (digests checked), the index itself, diff IDs from the
// config, and layers named by the digested reference, which then resolves
// from the cache.
func TestResolveImage(t *testing.T) {
	f := newFixture(t, nil)
	amd := makeImage(t, 2, 512, 0, &v1.Platform{OS: "linux", Architecture: "amd64"})
	arm := makeImage(t, 2, 512, 0, &v1.Platform{OS: "linux", Architecture: "arm64"})
	idx := mutate.AppendManifests(mutate.IndexMediaType(empty.Index, types.OCIImageIndex),
		mutate.IndexAddendum{Add: amd.img, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "amd64"}}},
		mutate.IndexAddendum{Add: arm.img, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "arm64"}}},
	)
	ref := f.pushIndex(t, "multi", "latest", idx)
	r, _ := newTestResolver(t, Options{Platform: &v1.Platform{OS: "linux", Architecture: "arm64"}})
	ctx := context.Background()

	img, err := r.ResolveImage(ctx, ref)
	if err != nil {
		t.Fatal(err)
	}
	wantManifest, _ := arm.img.RawManifest()
	wantConfig, _ := arm.img.RawConfigFile()
	if string(img.Manifest) != string(wantManifest) || img.ManifestDigest != digest.FromBytes(wantManifest) {
		t.Errorf("manifest %s, want the arm64 image's", img.ManifestDigest)
	}
	if string(img.Config) != string(wantConfig) || img.ConfigDigest != digest.FromBytes(wantConfig) {
		t.Errorf("config %s, want the arm64 image's", img.ConfigDigest)
	}
	rawIdx, _ := idx.RawManifest()
	if string(img.Index) != string(rawIdx) || img.IndexDigest != digest.FromBytes(rawIdx) {
		t.Errorf("index %s not kept", img.IndexDigest)
	}
	if want := strings.TrimSuffix(ref, ":latest") + "@" + img.ManifestDigest.String(); img.Digested != want {
		t.Errorf("Digested = %s, want %s", img.Digested, want)
	}
	if len(img.Layers) != 2 {
		t.Fatalf("%d layers", len(img.Layers))
	}
	for i, l := range img.Layers {
		if l.Ref != img.Digested || l.DiffID != layerDiffID(t, arm.layers[i]) || l.Digest != layerDigest(t, arm.layers[i]) {
			t.Errorf("layer %d: %+v", i, l)
		}
	}
	// The layers resolve by the digested reference without the registry.
	before := r.Stats().Requests
	if ld, err := r.ResolveLayer(ctx, img.Digested, img.Layers[1].Digest); err != nil || ld.DiffID != img.Layers[1].DiffID {
		t.Errorf("ResolveLayer by the digested reference: %+v, %v", ld, err)
	}
	if n := r.Stats().Requests - before; n != 0 {
		t.Errorf("ResolveLayer by the digested reference made %d requests", n)
	}
}
