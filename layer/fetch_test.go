package layer

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/containerd/stargz-snapshotter/estargz"

	"github.com/poolfs/poolfs/fs/fstest"
)

// oneBigChunk is an eStargz layer holding file "big": n random bytes in
// one chunk (one gzip member about as big), served from memory with no
// tail read, so that reading it is one blob read.
func oneBigChunk(t *testing.T, n int) (*Layer, *fstest.MemBlob, []byte) {
	t.Helper()
	noTail(t)
	content := make([]byte, n)
	_, _ = rand.NewChaCha8([32]byte{7}).Read(content)
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: "big", Mode: 0o644, Size: int64(n)}); err != nil {
		t.Fatal(err)
	}
	if _, err := tw.Write(content); err != nil {
		t.Fatal(err)
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	data, toc := fstest.EStargz(t, buf.Bytes(), estargz.WithChunkSize(4<<20))
	blob := fstest.NewMemBlob(data)
	l, err := Open(context.Background(), blob, toc, newMemCache(), nil)
	if err != nil {
		t.Fatal(err)
	}
	blob.ResetStats()
	return l, blob, content
}

// An eStargz chunk is decompressed as its bytes arrive: with the blob read
// held halfway through the chunk, the decoder has already taken in every
// byte delivered so far and waits for the next one, so that once the last
// byte is in, little is left to do before the reader has it.
func TestChunkDecodedWhileItArrives(t *testing.T) {
	l, blob, content := oneBigChunk(t, 1<<20)
	c := lookup(t, l, "big").file().chunks[0]
	if c.blobEnd-c.blobOff < 512<<10 {
		t.Fatalf("chunk has %d compressed bytes; the test needs a big one", c.blobEnd-c.blobOff)
	}
	half := (c.blobEnd - c.blobOff) / 2

	waits := make(chan int64, 1024)
	streamWaitHook = func(n int64) {
		select {
		case waits <- n:
		default:
		}
	}
	t.Cleanup(func() { streamWaitHook = nil })
	heldAt, release := make(chan int64, 1), make(chan struct{})
	var once sync.Once
	blob.SetMidway(func(ctx context.Context, off, filled int64) error {
		if filled >= half {
			once.Do(func() {
				heldAt <- filled
				<-release
			})
		}
		return nil
	})

	done := make(chan error, 1)
	go func() {
		p := make([]byte, len(content))
		_, err := l.ReadAt(context.Background(), lookup(t, l, "big"), p, 0)
		if err == nil && !bytes.Equal(p, content) {
			t.Error("read returned wrong bytes")
		}
		done <- err
	}()
	held := <-heldAt
	timeout := time.After(20 * time.Second)
	for caughtUp := false; !caughtUp; {
		select {
		case n := <-waits:
			caughtUp = n == held+1 // every byte in is taken, the next one is wanted
		case <-timeout:
			close(release)
			t.Fatalf("with %d of %d compressed bytes in, the decoder did not wait for more", held, c.blobEnd-c.blobOff)
		}
	}
	close(release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if calls, _ := blob.Stats(); calls != 1 {
		t.Errorf("%d blob reads, want 1", calls)
	}
}

// A read that ends early (the registry fails halfway) fails the chunk with
// the transport error, not as a verification failure, and the next read
// fetches it again.
func TestChunkCutWhileArriving(t *testing.T) {
	l, blob, content := oneBigChunk(t, 1<<20)
	e := lookup(t, l, "big")
	c := e.file().chunks[0]
	half := (c.blobEnd - c.blobOff) / 2
	cut := errors.New("connection reset")
	blob.SetMidway(func(ctx context.Context, off, filled int64) error {
		if filled >= half {
			return cut
		}
		return nil
	})
	before := VerifyFailures()
	if _, err := l.ReadAt(context.Background(), e, make([]byte, 10), 0); !errors.Is(err, cut) {
		t.Fatalf("read through a cut range: %v, want %v", err, cut)
	}
	if n := VerifyFailures() - before; n != 0 {
		t.Errorf("%d verification failures counted for a cut read", n)
	}
	blob.SetMidway(nil)
	p := make([]byte, len(content))
	if _, err := l.ReadAt(context.Background(), e, p, 0); err != nil || !bytes.Equal(p, content) {
		t.Fatalf("read after the cut: %v (right bytes: %v)", err, bytes.Equal(p, content))
	}
	if calls, _ := blob.Stats(); calls != 2 {
		t.Errorf("%d blob reads, want 2", calls)
	}
}
