package pool

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"

	"github.com/poolfs/poolfs/alspath"
	"github.com/poolfs/poolfs/meta"
	"github.com/poolfs/poolfs/remote"
)

// listingResolver answers Layers from a table and counts the calls; the
// rest of Resolver is not needed to decide what a reference lists.
type listingResolver struct {
	layers map[string][]remote.LayerDesc
	err    error // answered instead, when set
	calls  int
}

func (r *listingResolver) Layers(ctx context.Context, ref string) ([]remote.LayerDesc, bool, error) {
	r.calls++
	if r.err != nil {
		return nil, false, r.err
	}
	l, ok := r.layers[ref]
	if !ok {
		return nil, false, fmt.Errorf("fetch manifest %s: %w", ref, &remote.StatusError{StatusCode: 404})
	}
	return l, strings.Contains(ref, "@"), nil
}

func (r *listingResolver) ResolveBlob(context.Context, string, digest.Digest) (remote.LayerDesc, error) {
	return remote.LayerDesc{}, errors.New("not used")
}

func (r *listingResolver) ResolveLayer(context.Context, string, digest.Digest) (remote.LayerDesc, error) {
	return remote.LayerDesc{}, errors.New("not used")
}

func (r *listingResolver) Blob(context.Context, remote.LayerDesc) (remote.Blob, error) {
	return nil, errors.New("not used")
}

// TestListed covers what decides whether a reference lists a layer: the
// manifest is asked for once, kept in memory and in the metadata store,
// a tag's list is rechecked once due, and when a recheck fails the old list
// serves on unless the registry said the image is gone.
func TestListed(t *testing.T) {
	base, app := digest.FromString("base"), digest.FromString("app")
	appTOC := digest.FromString("app toc")
	tag, pinned := "reg.example/a:1", "reg.example/a@"+digest.FromString("m").String()
	res := &listingResolver{layers: map[string][]remote.LayerDesc{
		tag:    {{Digest: base}, {Digest: app, Annotations: map[string]string{alspath.TOCDigestAnnotation: appTOC.String()}}},
		pinned: {{Digest: base}},
	}}
	store, err := meta.Open(filepath.Join(t.TempDir(), "meta.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	newPool := func(recheck time.Duration) *Pool {
		return New(res, nil, nil, WithTagRecheck(recheck), WithMeta(store))
	}
	listed := func(p *Pool, ref string, d digest.Digest) error {
		t.Helper()
		err := p.listed(context.Background(), LayerKey{Ref: ref, Digest: d})
		p.Flush()
		return err
	}
	// want is nil (listed), ErrNotListed, or errGone (the registry's 404).
	errGone := errors.New("the registry answered 404")
	step := func(name string, err error, want error, calls int) {
		t.Helper()
		var se *remote.StatusError
		ok := err == nil
		switch want {
		case ErrNotListed:
			ok = errors.Is(err, ErrNotListed)
		case errGone:
			ok = errors.As(err, &se) && se.StatusCode == 404
		}
		if !ok {
			t.Errorf("%s: %v, want %v", name, err, want)
		}
		if res.calls != calls {
			t.Errorf("%s: %d manifest fetches so far, want %d", name, res.calls, calls)
		}
	}

	p := newPool(time.Hour)
	step("tag lists the layer", listed(p, tag, app), nil, 1)
	step("by its TOC digest", listed(p, tag, appTOC), nil, 1)
	// A miss under a tag asks again: the tag may have moved.
	step("tag does not list it", listed(p, tag, digest.FromString("other")), ErrNotListed, 2)
	step("pinned reference", listed(p, pinned, base), nil, 3)
	step("pinned reference does not list it", listed(p, pinned, app), ErrNotListed, 3)
	step("unknown reference", listed(p, "reg.example/none:1", base), errGone, 4)

	// A restart: the lists come from the metadata store.
	p = newPool(time.Hour)
	step("after a restart", listed(p, tag, app), nil, 4)
	step("pinned after a restart", listed(p, pinned, base), nil, 4)

	// The tag moved to an image with a new layer: served at once.
	added := digest.FromString("added")
	res.layers[tag] = []remote.LayerDesc{{Digest: base}, {Digest: added}}
	step("tag gained a layer", listed(p, tag, added), nil, 5)

	// Its list is due for a recheck, which fails.
	res.err = errors.New("connection refused")
	p = newPool(time.Nanosecond)
	step("recheck fails: the old list serves", listed(p, tag, base), nil, 6)
	step("and is not retried at once", listed(p, tag, added), nil, 6)
	step("pinned: never rechecked", listed(p, pinned, base), nil, 6)
	res.err = nil
	p = newPool(time.Nanosecond)
	step("recheck: dropped layer", listed(p, tag, app), ErrNotListed, 7)
	step("recheck: kept layer", listed(p, tag, base), nil, 8)
	p = newPool(time.Hour)
	step("the new list was stored", listed(p, tag, base), nil, 8)

	// The registry says the image is gone: the old list goes too.
	res.err = fmt.Errorf("fetch manifest: %w", &remote.StatusError{StatusCode: 404})
	p = newPool(time.Nanosecond)
	step("image gone", listed(p, tag, base), errGone, 9)
}
