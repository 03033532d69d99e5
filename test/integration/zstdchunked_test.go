package integration

import (
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"testing"

	digest "github.com/opencontainers/go-digest"

	"github.com/poolfs/poolfs/alspath"
	"github.com/poolfs/poolfs/layer"
	"github.com/poolfs/poolfs/test/fixture"
)

// zstdGenerations are the two zstd:chunked layouts containers/storage
// writes (podman 4: legacy annotations and footer; podman >= 5: current).
var zstdGenerations = []struct {
	name     string
	legacy   bool
	checksum string // the manifest checksum annotation
}{
	{"current", false, layer.ZstdChunkedChecksumAnnotation},
	{"podman 4", true, layer.LegacyZstdChunkedChecksumAnnotation},
}

// TestZstdChunkedGrammars: a zstd:chunked layer is served as an eStargz one
// is, through grammar 2 by blob digest and by manifest checksum (what
// containers/storage >= 1.54 asks by), and through grammar 1 with and
// without the checksum annotation; a wrong checksum is refused.
func TestZstdChunkedGrammars(t *testing.T) {
	reg := fixture.StartRegistry(t)
	tarBytes := fixture.KitchenSinkTar()
	for _, g := range zstdGenerations {
		t.Run(g.name, func(t *testing.T) {
			ref, layers := pushImage(t, reg, "test/zstd", [][]byte{tarBytes}, fixture.ImageOptions{ZstdChunked: true, LegacyZstd: g.legacy, ChunkSize: 64 << 10})
			li := layers[0]
			if li.TOCDigest == "" || li.Annotations[g.checksum] != li.TOCDigest.String() {
				t.Fatalf("pushed layer has annotations %v", li.Annotations)
			}
			m := mountPool(t, reg)
			testGrammar2(t, m, ref, li, tarBytes)

			refKV := alspath.RefAnnotation + "=" + ref
			dgKV := alspath.LayerAnnotation + "=" + li.Digest.String()
			compareTree(t, m.grammar1(base64.URLEncoding, "z1", refKV, dgKV), tarBytes)
			compareTree(t, m.grammar1(base64.URLEncoding, "z2", refKV, dgKV, g.checksum+"="+li.TOCDigest.String()), tarBytes)
			bad := g.checksum + "=" + digest.FromString("other").String()
			if _, err := os.Stat(m.grammar1(base64.URLEncoding, "z3", refKV, dgKV, bad)); !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("layer with a wrong manifest checksum: stat error %v, want ENOENT", err)
			}
		})
	}
}

// TestZstdChunkedLazy: opening a zstd:chunked layer fetches its manifest
// (one exact request, the position annotation says where), and reading one
// file fetches its own frames.
func TestZstdChunkedLazy(t *testing.T) {
	reg := fixture.StartRegistry(t)
	tarBytes := fixture.KitchenSinkTar()
	ref, layers := pushImage(t, reg, "test/zstd-lazy", [][]byte{tarBytes}, fixture.ImageOptions{ZstdChunked: true, ChunkSize: 64 << 10})
	li := layers[0]
	pos, err := layer.ParseManifestPosition(li.Annotations[layer.ZstdChunkedPositionAnnotation])
	if err != nil {
		t.Fatal(err)
	}
	m := mountPool(t, reg)
	reg.ResetStats()
	diff := filepath.Join(m.grammar2(ref, li.TOCDigest.String()), "diff")
	if _, err := os.Stat(diff); err != nil {
		t.Fatal(err)
	}
	open := reg.Stats().PerBlob[li.Digest]
	t.Logf("opening the layer: %d blob bytes in %d range requests (manifest %d bytes, layer %d)", open.Bytes, open.RangeGets, pos.Length, li.Size)
	if open.Bytes != pos.Length || open.RangeGets != 1 {
		t.Errorf("opening fetched %d blob bytes in %d requests, want the %d byte manifest in one:\n%s", open.Bytes, open.RangeGets, pos.Length, reg.RequestLog())
	}

	reg.ResetStats()
	rel := fixture.KitchenSinkBigFile
	data, err := os.ReadFile(filepath.Join(tree(t, diff), rel))
	if err != nil {
		t.Fatal(err)
	}
	start, end := compressedRange(t, m, li.Digest, rel)
	read := reg.Stats().PerBlob[li.Digest]
	t.Logf("reading %s (%d bytes, %d compressed): %d blob bytes in %d requests", rel, len(data), end-start, read.Bytes, read.RangeGets)
	if read.Bytes != end-start {
		t.Errorf("reading one file fetched %d blob bytes, want its frames' %d", read.Bytes, end-start)
	}
	if sha256.Sum256(data) != tarContentHash(t, tarBytes, rel) {
		t.Errorf("content of %s differs from the tar", rel)
	}
}
