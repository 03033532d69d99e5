package control

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
)

// fakeImages is a Backend with an image store of names.
type fakeImages struct {
	fakeBackend
	names []string
}

func (b *fakeImages) AddImage(ctx context.Context, ref string, progress func(ImageProgress)) (ImageStatus, error) {
	if strings.Contains(ref, "gzip") {
		progress(ImageProgress{Ref: ref, Resolved: 0, Total: 2})
		return ImageStatus{}, errors.New("layer 1 of " + ref + " is not eStargz")
	}
	for i := 0; i <= 3; i++ {
		progress(ImageProgress{Ref: ref, Resolved: i, Total: 3})
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.names = append(b.names, ref)
	return ImageStatus{ID: "id-" + ref, Names: []string{ref}, Layers: 3}, nil
}

func (b *fakeImages) RemoveImages(ctx context.Context, refs []string) ([]ImageStatus, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	var gone []ImageStatus
	for _, r := range refs {
		if !slices.Contains(b.names, r) {
			return nil, errors.New("no image " + r)
		}
		gone = append(gone, ImageStatus{ID: "id-" + r, Names: []string{r}})
	}
	b.names = slices.DeleteFunc(b.names, func(n string) bool { return slices.Contains(refs, n) })
	return gone, nil
}

func (b *fakeImages) Images() []ImageStatus {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := []ImageStatus{}
	for _, n := range b.names {
		out = append(out, ImageStatus{ID: "id-" + n, Names: []string{n}})
	}
	return out
}

func (b *fakeImages) SyncImages(ctx context.Context, progress func(ImageProgress)) ([]ImageSync, error) {
	progress(ImageProgress{Ref: "a:1", Resolved: 1, Total: 1})
	return []ImageSync{{Name: "a:1", From: "sha256:1", To: "sha256:2"}, {Name: "b:1", Error: "registry down"}}, errors.New("registry down")
}

func TestImages(t *testing.T) {
	b := &fakeImages{}
	c, ctx := serveBackend(t, b)

	var progress []ImageProgress
	added, err := c.AddImages(ctx, []string{"a:1", "b:1"}, func(p ImageProgress) { progress = append(progress, p) })
	if err != nil || len(added) != 2 || added[1].ID != "id-b:1" {
		t.Fatalf("AddImages = %+v, %v", added, err)
	}
	if len(progress) != 8 || progress[7] != (ImageProgress{Ref: "b:1", Resolved: 3, Total: 3}) {
		t.Errorf("progress %+v", progress)
	}
	// The first failure ends the request: what was added before counts.
	added, err = c.AddImages(ctx, []string{"c:1", "gzip:1", "d:1"}, nil)
	if err == nil || !strings.Contains(err.Error(), "not eStargz") || len(added) != 1 {
		t.Errorf("AddImages with a gzip image = %+v, %v", added, err)
	}
	if ims, err := c.Images(ctx); err != nil || len(ims) != 3 {
		t.Errorf("Images = %+v, %v", ims, err)
	}
	if _, err := c.RemoveImages(ctx, []string{"nope:1"}); err == nil || !strings.Contains(err.Error(), "no image nope:1") {
		t.Errorf("RemoveImages of a missing image: %v", err)
	}
	if gone, err := c.RemoveImages(ctx, []string{"a:1", "c:1"}); err != nil || len(gone) != 2 {
		t.Errorf("RemoveImages = %+v, %v", gone, err)
	}
	synced, err := c.SyncImages(ctx, nil)
	if err == nil || len(synced) != 2 || synced[0].To != "sha256:2" {
		t.Errorf("SyncImages = %+v, %v", synced, err)
	}
}

// A daemon without an image store says so.
func TestImagesWithoutStore(t *testing.T) {
	c, ctx := serveBackend(t, &fakeBackend{})
	if _, err := c.AddImages(ctx, []string{"a:1"}, nil); err == nil || !strings.Contains(err.Error(), "no image store") {
		t.Errorf("AddImages without a store: %v", err)
	}
}
