package pace

import (
	"context"
	"sync"
	"testing"
	"time"
)

// scripted runs Ordered over jobs that do nothing until the test says: the
// test sees which have started, reports their progress and ends them.
type scripted struct {
	t         *testing.T
	mu        sync.Mutex
	started   map[int]func(int) // job -> its progress
	end       map[int]chan struct{}
	skipped   map[int]bool
	runs      map[int]int
	maxAtOnce int
	running   int
	done      chan struct{}
}

func runScripted(t *testing.T, ctx context.Context, sizes []int, parallel int) *scripted {
	s := &scripted{t: t, started: map[int]func(int){}, end: map[int]chan struct{}{}, skipped: map[int]bool{}, runs: map[int]int{}, done: make(chan struct{})}
	for i := range sizes {
		s.end[i] = make(chan struct{})
	}
	go func() {
		defer close(s.done)
		Ordered(ctx, sizes, parallel, func(i int, progress func(int)) {
			s.mu.Lock()
			s.started[i] = progress
			s.runs[i]++
			s.running++
			s.maxAtOnce = max(s.maxAtOnce, s.running)
			s.mu.Unlock()
			<-s.end[i]
			progress(sizes[i])
			s.mu.Lock()
			s.running--
			s.mu.Unlock()
		}, func(i int) {
			s.mu.Lock()
			s.skipped[i] = true
			s.mu.Unlock()
		})
	}()
	return s
}

// waitStarted waits until exactly the jobs in want have started.
func (s *scripted) waitStarted(want ...int) {
	s.t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		s.mu.Lock()
		n := len(s.started)
		all := true
		for _, i := range want {
			if s.started[i] == nil {
				all = false
			}
		}
		s.mu.Unlock()
		if all && n == len(want) {
			// A job that should wait must not start soon after either.
			time.Sleep(20 * time.Millisecond)
			s.mu.Lock()
			n = len(s.started)
			s.mu.Unlock()
			if n != len(want) {
				s.t.Fatalf("%d jobs started, want %v", n, want)
			}
			return
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("started %v, want %v", s.keys(), want)
		}
		time.Sleep(time.Millisecond)
	}
}

func (s *scripted) keys() []int {
	s.mu.Lock()
	defer s.mu.Unlock()
	var k []int
	for i := range s.started {
		k = append(k, i)
	}
	return k
}

func (s *scripted) progress(i, n int) {
	s.mu.Lock()
	p := s.started[i]
	s.mu.Unlock()
	p(n)
}

// TestOrderedWindow: a read of more than the window keeps the next one
// waiting until fewer than the window's bytes are left to come; small
// reads then go side by side, in order.
func TestOrderedWindow(t *testing.T) {
	sizes := []int{4 << 20, 64 << 10, 64 << 10, 2 << 20}
	s := runScripted(t, context.Background(), sizes, 8)
	s.waitStarted(0)
	s.progress(0, 3<<20) // 1 MiB left: still over the window
	s.waitStarted(0)
	s.progress(0, 4<<20-MinWindow/2)
	s.waitStarted(0, 1, 2, 3) // 256 KiB + 64 KiB + 64 KiB left: under it when 3 is asked for
	for i := range sizes {
		close(s.end[i])
	}
	<-s.done
	for i := range sizes {
		if s.runs[i] != 1 {
			t.Errorf("job %d ran %d times", i, s.runs[i])
		}
	}
}

// TestOrderedParallel: small reads go at most parallel at a time, each
// once.
func TestOrderedParallel(t *testing.T) {
	sizes := make([]int, 20)
	for i := range sizes {
		sizes[i] = 1 << 10
	}
	s := runScripted(t, context.Background(), sizes, 3)
	s.waitStarted(0, 1, 2)
	for i := range sizes {
		close(s.end[i])
	}
	<-s.done
	if s.maxAtOnce > 3 {
		t.Errorf("%d jobs at once, want at most 3", s.maxAtOnce)
	}
	for i := range sizes {
		if s.runs[i] != 1 {
			t.Errorf("job %d ran %d times", i, s.runs[i])
		}
	}
}

// TestOrderedCancel: once ctx ends no job starts, each one not started is
// reported skipped, and Ordered returns when the started ones have.
func TestOrderedCancel(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	sizes := []int{4 << 20, 1 << 10, 1 << 10}
	s := runScripted(t, ctx, sizes, 8)
	s.waitStarted(0)
	cancel()
	select {
	case <-s.done:
		t.Fatal("returned before the job in flight did")
	case <-time.After(20 * time.Millisecond):
	}
	close(s.end[0])
	<-s.done
	if s.skipped[0] || !s.skipped[1] || !s.skipped[2] {
		t.Errorf("skipped %v, want 1 and 2", s.skipped)
	}
}

// TestOrderedWindowGrows: a read that took 100 ms to its first byte and
// then brought 1 MiB in 10 ms measures a link that carries 10 MiB in a
// round trip: the next reads then start together, where the least window
// would keep them one after another.
func TestOrderedWindowGrows(t *testing.T) {
	var mu sync.Mutex
	clock := time.Unix(0, 0)
	set := func(d time.Duration) {
		mu.Lock()
		clock = time.Unix(0, 0).Add(d)
		mu.Unlock()
	}
	now = func() time.Time {
		mu.Lock()
		defer mu.Unlock()
		return clock
	}
	t.Cleanup(func() { now = time.Now })

	sizes := []int{1 << 20, 4 << 20, 64 << 10, 2 << 20}
	s := runScripted(t, context.Background(), sizes, 8)
	s.waitStarted(0)
	set(100 * time.Millisecond)
	s.progress(0, 0) // the first byte
	set(110 * time.Millisecond)
	close(s.end[0]) // the rest, 10 ms later
	s.waitStarted(0, 1, 2, 3)
	for i := 1; i < len(sizes); i++ {
		close(s.end[i])
	}
	<-s.done
}
