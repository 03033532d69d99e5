package remote

import (
	"context"
	"reflect"
	"testing"
)

// TestTaggedIndex: an index written under a tag (UpdateTaggedIndex, to the
// registry itself) is read back by the tag alone (TaggedIndex), through a
// mirror that does not have it; update sees what the index listed before.
// No index is an empty list; a name that is no tag is refused.
func TestTaggedIndex(t *testing.T) {
	ctx := context.Background()
	r, logs := behindEmptyMirror(t, makeImage(t, 1, 4<<10, 0, nil))
	const ref, tag = "example.com/team/app:v1", "v1.listed"

	if got, err := r.TaggedIndex(ctx, ref, tag); err != nil || got != nil {
		t.Fatalf("before any update: %v, %v; want nothing\n%s", got, err, logs)
	}
	var entries []Referrer
	for i, note := range []string{"first", "second"} {
		pushed, err := r.PushArtifact(ctx, ref, Artifact{ArtifactType: "application/x.test", Annotations: map[string]string{"note": note},
			Blobs: []ArtifactBlob{{MediaType: "application/x.test.blob", Data: []byte(note)}}})
		if err != nil {
			t.Fatal(err)
		}
		e := Referrer{Digest: pushed.Digest, Size: pushed.Size, MediaType: pushed.MediaType, ArtifactType: "application/x.test",
			Annotations: map[string]string{"note": note}}
		var saw []Referrer
		if err := r.UpdateTaggedIndex(ctx, ref, tag, func(old []Referrer) []Referrer {
			saw = old
			return append([]Referrer{e}, old...)
		}); err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(saw, entries) {
			t.Errorf("update %d saw %+v, want %+v", i, saw, entries)
		}
		entries = append([]Referrer{e}, entries...)
	}
	got, err := r.TaggedIndex(ctx, ref, tag)
	if err != nil || !reflect.DeepEqual(got, entries) {
		t.Errorf("read %+v, %v; want %+v\n%s", got, err, entries, logs)
	}
	if _, err := r.TaggedIndex(ctx, ref, "no/tag"); err == nil {
		t.Error("an invalid tag was asked for")
	}
}
