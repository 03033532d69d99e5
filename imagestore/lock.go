package imagestore

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"os"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// A store's lock file, as containers/storage's pkg/lockfile uses it: an
// fcntl (POSIX record) lock on the whole file, shared for readers and
// exclusive for the writer, and a 64-byte "last writer" ID at offset 0
// that a writer rewrites before it unlocks. A reader that finds the ID
// changed since it last looked reloads the store's JSON.
type lockFile struct {
	path string
	f    *os.File
}

const lastWriterIDSize = 64

var lastWriterCounter atomic.Uint64

// lastWriterID is pkg/lockfile's newLastWriterID: time, a counter, the
// pid, then random bytes. Readers only compare it for equality.
func lastWriterID() []byte {
	id := make([]byte, lastWriterIDSize)
	binary.LittleEndian.PutUint64(id[0:8], uint64(time.Now().UnixNano()))
	binary.LittleEndian.PutUint64(id[8:16], lastWriterCounter.Add(1))
	binary.LittleEndian.PutUint32(id[16:20], uint32(os.Getpid()))
	_, _ = rand.Read(id[20:]) // crypto/rand.Read never fails on Linux
	return id
}

// createLockFile makes path if it is missing: readers open it O_RDONLY and
// could not create it in a directory they may not write.
func createLockFile(path string) error {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return fmt.Errorf("creating lock file: %w", err)
	}
	return f.Close()
}

// tryLock takes the exclusive lock without waiting; ok is false if
// another process holds the lock.
func tryLock(path string) (l *lockFile, ok bool, err error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|unix.O_CLOEXEC, 0o644)
	if err != nil {
		return nil, false, fmt.Errorf("opening lock file: %w", err)
	}
	lk := unix.Flock_t{Type: unix.F_WRLCK, Whence: 0, Start: 0, Len: 0}
	if err := unix.FcntlFlock(f.Fd(), unix.F_SETLK, &lk); err != nil {
		f.Close()
		if err == unix.EAGAIN || err == unix.EACCES {
			return nil, false, nil
		}
		return nil, false, fmt.Errorf("locking %s: %w", path, err)
	}
	return &lockFile{path: path, f: f}, true, nil
}

// touch records a new last writer, which makes every reader reload.
func (l *lockFile) touch() error {
	id := lastWriterID()
	if _, err := l.f.WriteAt(id, 0); err != nil {
		return fmt.Errorf("updating last writer in %s: %w", l.path, err)
	}
	return nil
}

// unlock releases the lock (closing the descriptor drops fcntl locks).
func (l *lockFile) unlock() error { return l.f.Close() }

// lockBoth takes the layers' and the images' locks exclusively, in that
// order. containers/storage takes them in either order while holding the
// other, so holding one while waiting for the other could deadlock with a
// reader: the second is only tried, and on failure both are released and
// taken again a little later.
func lockBoth(ctx context.Context, first, second string) (a, b *lockFile, err error) {
	wait := time.Millisecond
	for {
		a, ok, err := tryLock(first)
		if err != nil {
			return nil, nil, err
		}
		if ok {
			b, ok, err = tryLock(second)
			if err != nil {
				_ = a.unlock()
				return nil, nil, err
			}
			if ok {
				return a, b, nil
			}
			_ = a.unlock()
		}
		select {
		case <-ctx.Done():
			return nil, nil, fmt.Errorf("waiting for the image store's locks (podman holds them): %w", ctx.Err())
		case <-time.After(wait):
		}
		wait = min(2*wait, 50*time.Millisecond)
	}
}
