package profilestore_test

import (
	"reflect"
	"strings"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"

	"github.com/poolfs/poolfs/profile"
	"github.com/poolfs/poolfs/profilestore"
	"github.com/poolfs/poolfs/test/fixture"
)

// indexTagGets counts the GETs of tag's manifest the registry answered.
func indexTagGets(reg *fixture.Registry, tag string) int {
	n := 0
	for _, r := range reg.Requests() {
		if r.Method == "GET" && strings.HasSuffix(r.Path, "/manifests/"+tag) {
			n++
		}
	}
	return n
}

// waitIndexTagGet waits until the registry has answered a GET of tag.
func waitIndexTagGet(t *testing.T, reg *fixture.Registry, tag string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for indexTagGets(reg, tag) == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("no GET of %s\n%s", tag, reg.RequestLog())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestIndexTag: a pushed profile is listed under the reference's index tag,
// which a daemon reads before it has the image manifest (Expect); the
// lookup after it then needs no referrers request. An entry for another
// image manifest (the tag moved, another platform) is not used.
func TestIndexTag(t *testing.T) {
	reg := fixture.StartRegistry(t, fixture.WithReferrersAPI())
	ctx := testCtx(t)

	// Layer profiles pushed for the image now tagged v1, by reference.
	ref, md, layers, set, _ := pushProfiles(t, reg, "app/tagged")

	t.Run("found beside the manifest", func(t *testing.T) {
		reg.ResetStats()
		store, _ := newStore(profilestore.Options{})
		store.Expect(ref)
		// The index is asked for before any lookup, so before the
		// lookup's manifest.
		waitIndexTagGet(t, reg, "v1"+profilestore.IndexTagSuffix)
		lookupAll(t, store, ref, layers, set)
		if n := reg.Stats().ReferrersRequests; n != 0 {
			t.Errorf("%d referrers requests, want none: the index tag listed the profile\n%s", n, reg.RequestLog())
		}
		if n := indexTagGets(reg, "v1"+profilestore.IndexTagSuffix); n != 1 {
			t.Errorf("%d GETs of the index tag, want 1 for the image's layers", n)
		}
		for _, r := range reg.Requests() {
			if strings.Contains(r.Path, "/blobs/") {
				t.Errorf("the lookup read a blob (%s): the index entry inlines the profile", r.Path)
			}
		}
	})

	t.Run("without Expect the referrers are asked", func(t *testing.T) {
		reg.ResetStats()
		store, _ := newStore(profilestore.Options{})
		got, err := store.Lookup(ctx, ref, layers[0].Digest, layers[0].TOCDigest)
		if err != nil || !reflect.DeepEqual(got, set.Profiles[0]) {
			t.Fatalf("looked up %+v, %v", got, err)
		}
		if n := indexTagGets(reg, "v1"+profilestore.IndexTagSuffix); n != 0 {
			t.Errorf("%d GETs of the index tag without Expect", n)
		}
	})

	// The tag moves to another image with no profile of its own: the
	// index still lists v1's old manifest, which is not this one.
	_, md2, layers2 := image2(t, reg, "app/tagged")
	t.Run("entry for another manifest", func(t *testing.T) {
		reg.ResetStats()
		store, _ := newStore(profilestore.Options{})
		store.Expect(ref)
		got, err := store.Lookup(ctx, ref, layers2[0].Digest, layers2[0].TOCDigest)
		if err != nil || got != nil {
			t.Fatalf("looked up %+v, %v; want nothing for the new image", got, err)
		}
		if n := reg.Stats().ReferrersRequests; n != 1 {
			t.Errorf("%d referrers requests, want 1 (the index lists no profile of %s)", n, md2)
		}
	})

	// Its profile pushed too: the index lists both manifests, newest first.
	set2 := profile.Set{Profiles: []*profile.Profile{profileOf(layers2[0], 2)}}
	pusher, _ := newStore(profilestore.Options{})
	if _, err := pusher.Push(ctx, ref, set2); err != nil {
		t.Fatal(err)
	}
	_, r := newStore(profilestore.Options{})
	entries, err := r.TaggedIndex(ctx, ref, "v1"+profilestore.IndexTagSuffix)
	if err != nil {
		t.Fatal(err)
	}
	var subjects []string
	for _, e := range entries {
		subjects = append(subjects, e.Annotations[profilestore.SubjectAnnotation])
	}
	if want := []string{md2.String(), md.String()}; !reflect.DeepEqual(subjects, want) {
		t.Errorf("index tag lists subjects %v, want %v", subjects, want)
	}
	t.Run("the newest entry for the manifest", func(t *testing.T) {
		reg.ResetStats()
		store, _ := newStore(profilestore.Options{})
		store.Expect(ref)
		got, err := store.Lookup(ctx, ref, layers2[0].Digest, layers2[0].TOCDigest)
		if err != nil || !reflect.DeepEqual(got, set2.Profiles[0]) {
			t.Fatalf("looked up %+v, %v; want %+v", got, err, set2.Profiles[0])
		}
		if n := reg.Stats().ReferrersRequests; n != 0 {
			t.Errorf("%d referrers requests, want none", n)
		}
	})
}

// TestIndexTagByDigest: a reference by digest has its index tag named
// after the digest.
func TestIndexTagByDigest(t *testing.T) {
	reg := fixture.StartRegistry(t) // no referrers API: the tag schema would cost two requests
	ctx := testCtx(t)
	tagRef, md, layers := image(t, reg, "app/bydigest")
	ref := tagRef[:strings.LastIndexByte(tagRef, ':')] + "@" + md.String()
	set := profile.Set{Profiles: []*profile.Profile{profileOf(layers[1], 2)}}
	pusher, _ := newStore(profilestore.Options{})
	if _, err := pusher.Push(ctx, ref, set); err != nil {
		t.Fatal(err)
	}
	reg.ResetStats()
	store, _ := newStore(profilestore.Options{})
	store.Expect(ref)
	got, err := store.Lookup(ctx, ref, layers[1].Digest, layers[1].TOCDigest)
	if err != nil || !reflect.DeepEqual(got, set.Profiles[0]) {
		t.Fatalf("looked up %+v, %v", got, err)
	}
	tag := strings.Replace(md.String(), ":", "-", 1) + profilestore.IndexTagSuffix
	if n := indexTagGets(reg, tag); n != 1 {
		t.Errorf("%d GETs of %s, want 1\n%s", n, tag, reg.RequestLog())
	}
	if n := reg.Stats().ReferrersRequests; n != 0 {
		t.Errorf("%d referrers requests, want none", n)
	}
}

// image2 pushes another image as repo:v1, moving the tag.
func image2(t *testing.T, reg *fixture.Registry, repo string) (string, digest.Digest, []fixture.LayerInfo) {
	return pushTars(t, fixture.ImageRef(reg.Host, repo, "v1"), tarOf("opt/new", "new"))
}
