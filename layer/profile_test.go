package layer

import (
	"context"
	"errors"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"

	"github.com/poolfs/poolfs/profile"
)

// readRange reads [off, off+n) of name through ReadAt.
func (b *bigLayer) readRange(t *testing.T, name string, off, n int64) {
	t.Helper()
	e := lookup(t, b.l, name)
	got := make([]byte, n)
	if _, err := b.l.ReadAt(context.Background(), e, got, off); err != nil {
		t.Fatalf("ReadAt(%s, %d): %v", name, off, err)
	}
	if string(got) != string(b.files[name][off:off+n]) {
		t.Fatalf("ReadAt(%s, %d): content differs", name, off)
	}
}

// chunksOf lists the chunks of name holding [off, off+n), as a profile
// names them.
func chunksOf(t *testing.T, l *Layer, name string, off, n int64) []profile.Chunk {
	t.Helper()
	f := lookup(t, l, name).file()
	var out []profile.Chunk
	for _, c := range f.chunks[f.find(off) : f.find(off+n-1)+1] {
		out = append(out, profile.Chunk{Offset: c.blobOff, Inner: c.inner, End: c.blobEnd, Digest: c.digest})
	}
	return out
}

// TestRecordAndReplay: the chunks ReadAt needs are recorded in first-need
// order, cache hits included and read-ahead left out; replaying the
// recording on a fresh layer fetches exactly those chunks, after which the
// same reads need no request.
func TestRecordAndReplay(t *testing.T) {
	b := openBigLayer(t, false, WithReadahead(256<<10)) // its chunks must not count as needed
	reads := []struct {
		name   string
		off, n int64
	}{
		{"data/y", 300 << 10, 40 << 10},
		{"app/a", 0, 1000},
		{"data/y", 310 << 10, 10}, // cached now: needed, but recorded once
		{"data/z", 700 << 10, 50 << 10},
	}
	var want []profile.Chunk
	seen := map[profile.Chunk]bool{}
	for _, r := range reads {
		b.readRange(t, r.name, r.off, r.n)
		for _, c := range chunksOf(t, b.l, r.name, r.off, r.n) {
			if !seen[c] {
				seen[c] = true
				want = append(want, c)
			}
		}
	}
	rec := b.l.Recorded()
	if rec == nil || rec.TOC != b.l.TOCDigest() {
		t.Fatalf("Recorded() = %+v, want a profile of TOC %s", rec, b.l.TOCDigest())
	}
	if len(rec.Chunks) != len(want) {
		t.Fatalf("recorded %d chunks, want %d: %+v", len(rec.Chunks), len(want), rec.Chunks)
	}
	for i := range want {
		if rec.Chunks[i] != want[i] {
			t.Errorf("recorded chunk %d = %+v, want %+v", i, rec.Chunks[i], want[i])
		}
	}
	select {
	case <-b.l.RecordDone():
		t.Fatal("startup window closed while reads were coming")
	default:
	}
	b.l.EndRecording()
	<-b.l.RecordDone()
	b.readRange(t, "data/x", 0, 10)
	if got := b.l.Recorded(); len(got.Chunks) != len(want) {
		t.Errorf("a read after the window was recorded: %d chunks", len(got.Chunks))
	}

	// A fresh layer on the same blob, empty cache.
	rec.Blob = digest.FromString("blob")
	fresh := openBigLayer(t, false)
	st, err := fresh.l.Replay(context.Background(), rec)
	if err != nil {
		t.Fatalf("Replay: %v", err)
	}
	var wantBytes int64
	for _, c := range want {
		wantBytes += fresh.chunkSpan(c)
	}
	calls, got := fresh.blob.Stats()
	t.Logf("replay: %d chunks, %d requests, %d bytes", st.Chunks, calls, got)
	if st.Chunks != len(want) || st.Fetched != len(want) {
		t.Errorf("Replay stats %+v, want %d chunks all fetched", st, len(want))
	}
	if got != wantBytes {
		t.Errorf("Replay fetched %d bytes, want exactly the recorded chunks' %d", got, wantBytes)
	}
	checkNoOverlap(t, fresh.blob.Reads())
	fresh.blob.ResetStats()
	for _, r := range reads {
		fresh.readRange(t, r.name, r.off, r.n)
	}
	if calls, n := fresh.blob.Stats(); calls != 0 {
		t.Errorf("reads after the replay made %d requests (%d bytes), want none", calls, n)
	}
	if u := fresh.l.ProfileUsed(); u != len(want) {
		t.Errorf("ProfileUsed = %d, want %d", u, len(want))
	}

	// Replayed again: everything is cached, nothing is fetched.
	fresh.blob.ResetStats()
	if st, err := fresh.l.Replay(context.Background(), rec); err != nil || st.Fetched != 0 {
		t.Errorf("second Replay: %+v, %v; want nothing fetched", st, err)
	}
	if calls, _ := fresh.blob.Stats(); calls != 0 {
		t.Errorf("second Replay made %d requests", calls)
	}
}

// span is the compressed bytes of c not already in Open's tail.
func (b *bigLayer) chunkSpan(c profile.Chunk) int64 {
	if len(b.l.tail) > 0 && c.Offset >= b.l.tailStart {
		return 0
	}
	return c.End - c.Offset
}

// TestReplayRefusesForeignProfiles: a profile of another TOC, or naming a
// chunk the layer lacks, is refused whole before anything is fetched.
func TestReplayRefusesForeignProfiles(t *testing.T) {
	b := openBigLayer(t, false)
	good := chunksOf(t, b.l, "data/y", 0, 100<<10)
	mk := func(f func(p *profile.Profile)) *profile.Profile {
		p := &profile.Profile{Blob: digest.FromString("blob"), TOC: b.l.TOCDigest(), Chunks: append([]profile.Chunk(nil), good...)}
		f(p)
		return p
	}
	cases := []struct {
		name string
		p    *profile.Profile
		want error
	}{
		{"other TOC", mk(func(p *profile.Profile) { p.TOC = digest.FromString("other") }), ErrProfileMismatch},
		{"offset not a chunk", mk(func(p *profile.Profile) { p.Chunks[1].Offset++ }), ErrProfileMismatch},
		{"past the last chunk", mk(func(p *profile.Profile) {
			p.Chunks[1].Offset, p.Chunks[1].End = b.blob.Size()-10, b.blob.Size()
		}), ErrProfileMismatch},
		{"wrong digest", mk(func(p *profile.Profile) { p.Chunks[2].Digest = digest.FromString("x") }), ErrProfileMismatch},
		{"wrong end", mk(func(p *profile.Profile) { p.Chunks[0].End += 5 }), ErrProfileMismatch},
		{"wrong inner", mk(func(p *profile.Profile) { p.Chunks[0].Inner = 7 }), ErrProfileMismatch},
		{"chunk twice", mk(func(p *profile.Profile) { p.Chunks = append(p.Chunks, p.Chunks[0]) }), profile.ErrInvalid},
		{"bad digest", mk(func(p *profile.Profile) { p.Chunks[0].Digest = "sha256:zz" }), profile.ErrInvalid},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			b.blob.ResetStats()
			_, err := b.l.Replay(context.Background(), tc.p)
			if !errors.Is(err, tc.want) {
				t.Errorf("Replay: %v, want %v", err, tc.want)
			}
			if calls, _ := b.blob.Stats(); calls != 0 {
				t.Errorf("a refused profile made %d requests", calls)
			}
		})
	}
}

// TestReplayCoalesces: profile chunks close together in the blob are
// fetched in one request with the chunks between them; the pieces keep
// the profile's need order.
func TestReplayCoalesces(t *testing.T) {
	b := openBigLayer(t, false)
	// Every other chunk of data/x (32 KiB chunks of random data: gaps of
	// about 32 KiB, under replayGap).
	f := lookup(t, b.l, "data/x").file()
	var p profile.Profile
	p.Blob, p.TOC = digest.FromString("blob"), b.l.TOCDigest()
	for i := len(f.chunks) - 1; i >= 0; i -= 2 {
		c := f.chunks[i]
		p.Chunks = append(p.Chunks, profile.Chunk{Offset: c.blobOff, Inner: c.inner, End: c.blobEnd, Digest: c.digest})
	}
	if _, err := b.l.Replay(context.Background(), &p); err != nil {
		t.Fatal(err)
	}
	calls, got := b.blob.Stats()
	if calls != 1 {
		t.Errorf("Replay made %d requests for close chunks, want 1", calls)
	}
	first, _ := f.span()
	last := f.chunks[len(f.chunks)-1].blobEnd
	if want := last - first; got > want {
		t.Errorf("Replay fetched %d bytes, more than data/x's %d", got, want)
	}
	for _, c := range f.chunks {
		if !b.cache.has(string(c.digest)) {
			t.Errorf("chunk at %d not cached after the replay", c.fileOff)
		}
	}
}

// TestRecordWindowClosesWhenReadsPause: the startup window ends on its own
// once no read came for the idle time, and later reads are not recorded.
func TestRecordWindowClosesWhenReadsPause(t *testing.T) {
	b := openBigLayer(t, false)
	b.l.rec.idle = 50 * time.Millisecond
	b.readRange(t, "app/a", 0, 100)
	select {
	case <-b.l.RecordDone():
	case <-time.After(10 * time.Second):
		t.Fatal("the window did not close after reads paused")
	}
	b.readRange(t, "data/x", 0, 100)
	if got := b.l.Recorded(); got == nil || len(got.Chunks) != 1 {
		t.Errorf("recorded %+v, want the one chunk read before the pause", got)
	}
}
