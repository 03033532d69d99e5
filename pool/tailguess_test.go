package pool

import (
	"bytes"
	"context"
	"io"
	"testing"

	digest "github.com/opencontainers/go-digest"
	"github.com/sirupsen/logrus"

	"github.com/poolfs/poolfs/remote"
)

// doneGuess is a tailGuess whose read is over with data and size.
func doneGuess(b *countingBlob, n int64, data []byte, size int64, err error) *tailGuess {
	g := &tailGuess{digest: b.Digest(), n: n, cancel: func() {}, done: make(chan struct{}), nearEnd: make(chan struct{}), data: data, size: size, err: err}
	g.near()
	close(g.done)
	return g
}

// TestTailGuessUse: the bytes read ahead are used only for the blob the
// manifest describes, with its size; then each byte is served once, and
// what they do not hold, or no longer hold, comes from the blob.
func TestTailGuessUse(t *testing.T) {
	blob := &countingBlob{data: bytes.Repeat([]byte("0123456789"), 1000)}
	size := blob.Size()
	desc := remote.LayerDesc{Digest: blob.Digest(), Size: size}
	log := logrus.NewEntry(logrus.New())
	log.Logger.SetOutput(io.Discard)
	ctx := context.Background()
	// What the guess holds differs from the blob, so reads tell where
	// they were served from.
	ahead := bytes.Repeat([]byte("x"), 1000)

	for _, tc := range []struct {
		name string
		g    *tailGuess
		desc remote.LayerDesc
	}{
		{"another blob", doneGuess(blob, 1000, ahead, size, nil), remote.LayerDesc{Digest: digest.FromString("another"), Size: size}},
		{"another size", doneGuess(blob, 1000, ahead, size+1, nil), desc},
		{"short", doneGuess(blob, 1000, ahead[:999], size, nil), desc},
		{"failed", doneGuess(blob, 1000, nil, 0, remote.ErrNoSuffixRange), desc},
	} {
		if kt := tc.g.use(ctx, blob, tc.desc, true, log); kt != nil {
			t.Errorf("%s: used", tc.name)
		}
	}

	kt := doneGuess(blob, 1000, ahead, size, nil).use(ctx, blob, desc, true, log)
	if kt == nil {
		t.Fatal("a guess that fits was not used")
	}
	read := func(off, n int64) string {
		p := make([]byte, n)
		if _, err := kt.ReadAt(ctx, p, off); err != nil {
			t.Fatal(err)
		}
		return string(p)
	}
	if got := read(size-100, 100); got != string(ahead[:100]) || len(blob.reads()) != 0 {
		t.Errorf("the window's end: %q, blob reads %v", got, blob.reads())
	}
	if got := read(size-1000, 100); got != string(ahead[:100]) || len(blob.reads()) != 0 {
		t.Errorf("a disjoint part: %q, blob reads %v", got, blob.reads())
	}
	if got := read(size-100, 100); got != string(blob.data[size-100:]) || len(blob.reads()) != 1 {
		t.Errorf("a part served before: %q, blob reads %v", got, blob.reads())
	}
	if got := read(size-1010, 20); got != string(blob.data[size-1010:size-990]) || len(blob.reads()) != 2 {
		t.Errorf("a read past the window's start: %q, blob reads %v", got, blob.reads())
	}
	kt.release()
	if got := read(size-500, 100); got != string(blob.data[size-500:size-400]) || len(blob.reads()) != 3 {
		t.Errorf("after release: %q, blob reads %v", got, blob.reads())
	}
}
