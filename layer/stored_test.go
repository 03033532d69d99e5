package layer

import (
	"context"
	"errors"
	"testing"

	"github.com/poolfs/poolfs/fs/fstest"
)

// TestOpenStored: a TOC returned by OpenWithTOC reopens the same view
// without touching the blob; a damaged record is refused, never served.
func TestOpenStored(t *testing.T) {
	tarBytes := fstest.SampleTar(t)
	data, tocDigest := fstest.EStargz(t, tarBytes)
	blob := fstest.NewMemBlob(data)
	first, toc, err := OpenWithTOC(context.Background(), blob, tocDigest, nil, nil)
	if err != nil {
		t.Fatalf("OpenWithTOC: %v", err)
	}
	if toc.Digest != tocDigest || toc.Offset <= 0 || len(toc.Member) == 0 || toc.JSON != nil {
		t.Fatalf("returned TOC: digest %s offset %d, %d member bytes, %d JSON bytes", toc.Digest, toc.Offset, len(toc.Member), len(toc.JSON))
	}

	blob.ResetStats()
	again, err := OpenStored(blob, toc, nil, nil)
	if err != nil {
		t.Fatalf("OpenStored: %v", err)
	}
	if calls, _ := blob.Stats(); calls != 0 {
		t.Errorf("OpenStored read the blob %d times", calls)
	}
	if d := fstest.Diff(viewOf(t, first, true), viewOf(t, again, true)); len(d) != 0 {
		t.Errorf("stored TOC gives another view: %v", d)
	}
	want, err := fstest.TarView(tarBytes)
	if err != nil {
		t.Fatal(err)
	}
	if d := fstest.Diff(want, viewOf(t, again, true)); len(d) != 0 {
		t.Errorf("view from stored TOC differs from the tar: %v", d)
	}

	// Records from before Member existed hold the JSON.
	asJSON := TOC{Digest: toc.Digest, Offset: toc.Offset, JSON: memberJSON(t, toc.Member)}
	if fromJSON, err := OpenStored(blob, asJSON, nil, nil); err != nil {
		t.Errorf("OpenStored from JSON: %v", err)
	} else if d := fstest.Diff(want, viewOf(t, fromJSON, true)); len(d) != 0 {
		t.Errorf("view from stored TOC JSON differs from the tar: %v", d)
	}
	toc.JSON = asJSON.JSON
	flipped := append([]byte(nil), toc.JSON...)
	flippedMember := append([]byte(nil), toc.Member...)
	flippedMember[len(flippedMember)/2] ^= 1
	flipped[len(flipped)/2] ^= 1
	bad := []struct {
		name    string
		toc     TOC
		wantErr error
	}{
		{"member damaged", TOC{Digest: toc.Digest, Offset: toc.Offset, Member: flippedMember}, nil},
		{"member truncated", TOC{Digest: toc.Digest, Offset: toc.Offset, Member: toc.Member[:len(toc.Member)/2]}, nil},
		{"JSON damaged", TOC{Digest: toc.Digest, Offset: toc.Offset, JSON: flipped}, ErrVerify},
		{"JSON truncated", TOC{Digest: toc.Digest, Offset: toc.Offset, JSON: toc.JSON[:len(toc.JSON)-1]}, ErrVerify},
		{"no digest", TOC{Offset: toc.Offset, JSON: toc.JSON}, nil},
		{"offset beyond blob", TOC{Digest: toc.Digest, Offset: int64(len(data)), JSON: toc.JSON}, nil},
		{"negative offset", TOC{Digest: toc.Digest, Offset: -1, JSON: toc.JSON}, nil},
		{"offset before the last chunk", TOC{Digest: toc.Digest, Offset: 10, JSON: toc.JSON}, nil},
	}
	for _, b := range bad {
		t.Run(b.name, func(t *testing.T) {
			_, err := OpenStored(blob, b.toc, nil, nil)
			if err == nil {
				t.Fatal("damaged stored TOC accepted")
			}
			if b.wantErr != nil && !errors.Is(err, b.wantErr) {
				t.Errorf("error %v, want %v", err, b.wantErr)
			}
		})
	}
}
