package imagestore

import (
	"context"
	"io"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"
	"github.com/sirupsen/logrus"
	logtest "github.com/sirupsen/logrus/hooks/test"

	"github.com/poolfs/poolfs/cache"
	"github.com/poolfs/poolfs/pool"
	"github.com/poolfs/poolfs/profile"
	"github.com/poolfs/poolfs/profilestore"
	"github.com/poolfs/poolfs/remote"
	"github.com/poolfs/poolfs/test/fixture"
)

// TestAddReadsProfileIndexBesideManifest: adding an image reads the index
// tag of its published profiles beside the image's manifest (which the
// registry holds back until the index is asked for: an add that resolved
// the image first would make the hold time out), so the layers' profile
// lookups find the profile there and ask for no referrers.
func TestAddReadsProfileIndexBesideManifest(t *testing.T) {
	ctx := context.Background()
	reg := fixture.StartRegistry(t, fixture.WithReferrersAPI())
	const repo = "test/profiled"
	ref, layers := push(ctx, t, reg, repo, "v1", []string{"base"}, fixture.ImageOptions{})
	l := logrus.New()
	l.SetOutput(io.Discard)
	hook := logtest.NewLocal(l)
	log := logrus.NewEntry(l)
	newResolver := func() *remote.Resolver { return remote.New(remote.Options{Insecure: []string{reg.Host}, Log: log}) }

	pr := &profile.Profile{Blob: layers[0].Digest, TOC: layers[0].TOCDigest,
		Chunks: []profile.Chunk{{Offset: 0, End: 1, Digest: digest.FromString("the store does not look inside")}}}
	if _, err := profilestore.New(newResolver(), profilestore.Options{Log: log}).Push(ctx, ref, profile.Set{Profiles: []*profile.Profile{pr}}); err != nil {
		t.Fatal(err)
	}

	held := fixture.HoldManifestsUntil(reg, 10*time.Second, map[string]string{repo: "/v2/" + repo + "/manifests/v1" + profilestore.IndexTagSuffix})
	reg.ResetStats()
	res := newResolver()
	p := pool.New(res, cache.NewMemory(64<<20), log, pool.WithProfileSource(profilestore.New(res, profilestore.Options{Log: log})))
	d, err := Open(t.TempDir(), Options{Pool: p, Resolver: res, Log: log})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.Add(ctx, ref, nil); err != nil {
		t.Fatal(err)
	}
	if held.Load() {
		t.Errorf("the image manifest was answered before the index tag was asked for:\n%s", reg.RequestLog())
	}
	// The lookup runs beside the layer's open.
	deadline := time.Now().Add(10 * time.Second)
	for found := ""; found == ""; {
		for _, e := range hook.AllEntries() {
			if e.Message == "published profile found" {
				found, _ = e.Data["via"].(string)
			}
		}
		if found != "" && found != "index tag" {
			t.Errorf("profile found through the %s, want the index tag", found)
		}
		if time.Now().After(deadline) {
			t.Fatalf("no published profile found\n%s", reg.RequestLog())
		}
		time.Sleep(5 * time.Millisecond)
	}
	if n := reg.Stats().ReferrersRequests; n != 0 {
		t.Errorf("%d referrers requests, want none\n%s", n, reg.RequestLog())
	}
}
