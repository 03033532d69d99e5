package integration

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"

	"github.com/poolfs/poolfs/pool"
	"github.com/poolfs/poolfs/profile"
	"github.com/poolfs/poolfs/test/fixture"
)

// profileReads are the start of the profile tests' "container": whole
// files and parts of files far apart in the layer, so that no two of
// their chunks are close enough for the replay to fetch what lies between.
var profileReads = []struct {
	name   string
	off, n int64
}{
	{"d/f050", 100 << 10, 20 << 10},
	{"d/f010", 0, 4096},
	{"d/f035", 0, 1000},
}

func readProfileFiles(t *testing.T, diff string) {
	t.Helper()
	for _, r := range profileReads {
		f, err := os.Open(filepath.Join(diff, r.name))
		if err != nil {
			t.Fatal(err)
		}
		b := make([]byte, r.n)
		if _, err := f.ReadAt(b, r.off); err != nil {
			t.Fatalf("reading %s: %v", r.name, err)
		}
		f.Close()
	}
}

// waitReplayed waits until the pool's only layer has replayed a profile.
func waitReplayed(t *testing.T, p *pool.Pool) pool.ProfileInfo {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		if ls := p.Layers(); len(ls) == 1 {
			if pi := ls[0].Profile(); pi.Loaded && pi.Chunks > 0 {
				return pi
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatal("no profile was replayed")
	return pool.ProfileInfo{}
}

// blobRanges lists the byte ranges of the range requests for blob in the
// registry's log, sorted.
func blobRanges(t *testing.T, reg *fixture.Registry, blob digest.Digest) [][2]int64 {
	t.Helper()
	var out [][2]int64
	for _, r := range reg.Requests() {
		if r.Range == "" || !strings.Contains(r.Path, blob.Encoded()) {
			continue
		}
		a, b, ok := r.Span()
		if !ok {
			t.Fatalf("range %q answered with %q", r.Range, r.ContentRange)
		}
		out = append(out, [2]int64{a, b + 1})
	}
	sort.Slice(out, func(i, j int) bool { return out[i][0] < out[j][0] })
	return out
}

// TestProfileRecordRestartReplay: a pool records which chunks a start
// reads and keeps the profile in meta.db; after a restart with an empty
// chunk cache the layer is replayed from it, asking the registry for
// exactly the recorded chunks and nothing else, and the same start then
// makes no request. A profile imported into another daemon is replayed
// too; foreign or damaged ones are ignored and the layer is served right.
func TestProfileRecordRestartReplay(t *testing.T) {
	reg := fixture.StartRegistry(t)
	tarBytes := layerTar(31, 60)
	ref, layers := pushImage(t, reg, "test/profile", [][]byte{tarBytes}, fixture.ImageOptions{ChunkSize: 64 << 10})
	li := layers[0]
	dir := t.TempDir()
	metaPath := filepath.Join(dir, "meta.db")
	diff := func(m *mounted) string { return filepath.Join(m.grammar2(ref, li.Digest.String()), "diff") }
	if li.Size < 2<<20 {
		t.Fatalf("layer of %d bytes: too small to leave chunks outside the TOC read", li.Size)
	}

	// Record: a start on an empty cache.
	store, closeStore := openMeta(t, metaPath)
	m := mountPoolOpts(t, reg, mountOpts{Meta: store, Quiet: true})
	readProfileFiles(t, diff(m))
	exported := m.Pool.Profiles(ref)
	m.Pool.Flush()
	rec, err := store.Profile(li.Digest)
	if err != nil {
		t.Fatalf("no profile stored: %v", err)
	}
	if rec.TOC != li.TOCDigest || len(rec.Chunks) == 0 {
		t.Fatalf("stored profile: TOC %s, %d chunks", rec.TOC, len(rec.Chunks))
	}
	if len(exported.Profiles) != 1 || len(exported.Profiles[0].Chunks) != len(rec.Chunks) {
		t.Fatalf("Profiles(%s) = %d profiles, want the recorded one", ref, len(exported.Profiles))
	}
	closeStore()

	t.Run("replayed after a restart", func(t *testing.T) {
		store, closeStore := openMeta(t, metaPath)
		defer closeStore()
		reg.ResetStats()
		m := mountPoolOpts(t, reg, mountOpts{Meta: store, Quiet: true})
		defer m.Pool.Flush() // before the store closes
		if _, err := os.Stat(diff(m)); err != nil {
			t.Fatal(err)
		}
		pi := waitReplayed(t, m.Pool)
		if pi.Chunks != len(rec.Chunks) || pi.Fetched != len(rec.Chunks) || pi.Source != "store" {
			t.Errorf("replay: %+v, want all %d recorded chunks fetched from the store's profile", pi, len(rec.Chunks))
		}
		// The layer came from meta.db: every blob request is the replay's.
		got := blobRanges(t, reg, li.Digest)
		var want [][2]int64
		for _, c := range rec.Chunks {
			want = append(want, [2]int64{c.Offset, c.End})
		}
		sort.Slice(want, func(i, j int) bool { return want[i][0] < want[j][0] })
		if fmt.Sprint(merge(got)) != fmt.Sprint(merge(want)) {
			t.Errorf("replay asked for %v, want exactly the recorded chunks %v", got, want)
		}
		reg.ResetStats()
		readProfileFiles(t, diff(m))
		if st := reg.Stats(); st.BlobGets != 0 {
			t.Errorf("the start after the replay made %d blob requests (%d bytes)", st.BlobGets, st.BlobBytes)
		}
		if pi := m.Pool.Layers()[0].Profile(); pi.Used != len(rec.Chunks) {
			t.Errorf("%d of %d replayed chunks used, want all", pi.Used, len(rec.Chunks))
		}
		compareTree(t, diff(m), tarBytes)
	})

	t.Run("imported into another daemon", func(t *testing.T) {
		m := mountPoolOpts(t, reg, mountOpts{Quiet: true})
		if n, err := m.Pool.ImportProfiles(exported); err != nil || n != 1 {
			t.Fatalf("ImportProfiles: %d, %v", n, err)
		}
		reg.ResetStats()
		if _, err := os.Stat(diff(m)); err != nil {
			t.Fatal(err)
		}
		waitReplayed(t, m.Pool)
		// The profile was known before the TOC: its ranges were fetched
		// while the TOC was decoded, and the replay used them instead of
		// asking again.
		got := blobRanges(t, reg, li.Digest)
		for i := 1; i < len(got); i++ {
			if got[i][0] < got[i-1][1] {
				t.Errorf("blob ranges %v and %v overlap: bytes fetched twice", got[i-1], got[i])
			}
		}
		t.Logf("blob requests of the open and replay: %v", got)
		reg.ResetStats()
		readProfileFiles(t, diff(m))
		if st := reg.Stats(); st.BlobGets != 0 {
			t.Errorf("the start after the replay made %d blob requests (%d bytes)", st.BlobGets, st.BlobBytes)
		}
	})

	t.Run("from a profile source", func(t *testing.T) {
		src := &fakeSource{p: exported.Profiles[0], wait: make(chan struct{})}
		m := mountPoolOpts(t, reg, mountOpts{Quiet: true, ProfileSource: src})
		// The source has not answered: the layer is served all the same.
		if _, err := os.Stat(diff(m)); err != nil {
			t.Fatal(err)
		}
		if src.asked() != li.Digest {
			t.Errorf("source asked for %q, want %s", src.asked(), li.Digest)
		}
		close(src.wait)
		pi := waitReplayed(t, m.Pool)
		if pi.Source != "source" || !pi.Published {
			t.Errorf("profile from the source: %+v", pi)
		}
		reg.ResetStats()
		readProfileFiles(t, diff(m))
		if st := reg.Stats(); st.BlobGets != 0 {
			t.Errorf("the start after the replay made %d blob requests (%d bytes)", st.BlobGets, st.BlobBytes)
		}
	})
	t.Run("failing profile source", func(t *testing.T) {
		m := mountPoolOpts(t, reg, mountOpts{Quiet: true, ProfileSource: &fakeSource{err: errors.New("referrers: 500")}})
		compareTree(t, diff(m), tarBytes)
	})

	bad := func(f func(p *profile.Profile)) profile.Set {
		p := *exported.Profiles[0]
		p.Chunks = append([]profile.Chunk(nil), p.Chunks...)
		f(&p)
		return profile.Set{Profiles: []*profile.Profile{&p}}
	}
	for name, set := range map[string]profile.Set{
		"other TOC":     bad(func(p *profile.Profile) { p.TOC = digest.FromString("other") }),
		"missing chunk": bad(func(p *profile.Profile) { p.Chunks[0].Offset++ }),
	} {
		t.Run("ignored: "+name, func(t *testing.T) {
			m := mountPoolOpts(t, reg, mountOpts{Quiet: true})
			if _, err := m.Pool.ImportProfiles(set); err != nil {
				t.Fatal(err)
			}
			reg.ResetStats()
			compareTree(t, diff(m), tarBytes)
			if pi := m.Pool.Layers()[0].Profile(); pi.Loaded {
				t.Errorf("a foreign profile was loaded: %+v", pi)
			}
		})
	}
	t.Run("malformed import refused", func(t *testing.T) {
		m := mountPoolOpts(t, reg, mountOpts{Quiet: true})
		set := bad(func(p *profile.Profile) { p.Chunks = append(p.Chunks, p.Chunks[0]) })
		if _, err := m.Pool.ImportProfiles(set); err == nil {
			t.Error("a profile naming a chunk twice was imported")
		}
	})
}

// fakeSource is a profile.Source that answers p (or err) once wait is
// closed (nil: at once).
type fakeSource struct {
	p    *profile.Profile
	err  error
	wait chan struct{}
	mu   sync.Mutex
	blob digest.Digest
}

func (s *fakeSource) Lookup(ctx context.Context, ref string, blob, toc digest.Digest) (*profile.Profile, error) {
	s.mu.Lock()
	s.blob = blob
	s.mu.Unlock()
	if s.wait != nil {
		select {
		case <-s.wait:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	return s.p, s.err
}

func (s *fakeSource) asked() digest.Digest {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.blob
}

// merge joins touching ranges.
func merge(rs [][2]int64) [][2]int64 {
	var out [][2]int64
	for _, r := range rs {
		if n := len(out); n > 0 && r[0] <= out[n-1][1] {
			out[n-1][1] = max(out[n-1][1], r[1])
			continue
		}
		out = append(out, r)
	}
	return out
}
