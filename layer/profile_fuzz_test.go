package layer

import (
	"context"
	"testing"

	"github.com/poolfs/poolfs/profile"
)

// FuzzReplay: whatever bytes a profile comes as, decoding it and replaying
// it on a layer never panics, and a replay the layer accepts fetched only
// chunks of the layer (each verified, so the cache holds only true
// content).
func FuzzReplay(f *testing.F) {
	s := openSample(f)
	var good profile.Profile
	good.Blob, good.TOC = s.toc, s.l.TOCDigest()
	for _, c := range first(s.l.chunksByOffset()) {
		good.Chunks = append(good.Chunks, profile.Chunk{Offset: c.blobOff, Inner: c.inner, End: c.blobEnd, Digest: c.digest})
	}
	seed, err := profile.Marshal(&good)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(seed)
	f.Add([]byte(`{"version":1,"blob":"sha256:` + s.toc.Encoded() + `","toc":"` + s.l.TOCDigest().String() + `","chunks":[{"o":0,"e":10,"d":"sha256:` + s.toc.Encoded() + `"}]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := profile.Unmarshal(b)
		if err != nil {
			return
		}
		p.TOC = s.l.TOCDigest() // past the first check, onto the chunks
		l, err := Open(context.Background(), s.blob, s.toc, newMemCache(), nil)
		if err != nil {
			t.Fatal(err)
		}
		st, err := l.Replay(context.Background(), p)
		if err != nil {
			return
		}
		if st.Chunks != len(p.Chunks) {
			t.Fatalf("accepted %d chunks of %d", st.Chunks, len(p.Chunks))
		}
	})
}

func first[A, B any](a A, _ B) A { return a }
