package pace

import (
	"context"
	"sync"
	"time"
)

// now is time.Now; tests set their own clock.
var now = time.Now

// MinWindow is the least Ordered keeps in flight: about what a link of
// 200 Mbit/s carries in a round trip of 20 ms (or 50 Mbit/s in 80 ms).
const MinWindow = 512 << 10

// Ordered runs job(i, progress) for each of sizes (the bytes each job
// reads) and returns once all have returned. Jobs start in the order
// given, at most parallel at once, each once the bytes the jobs in flight
// have yet to receive are fewer than the link carries in a round trip
// (the window; job calls progress with the bytes it has so far). Once ctx
// ends no job starts; skipped is told of each that did not.
//
// On a link whose bandwidth bounds the reads, reads in flight together
// share it and arrive together: a program that needs them one after
// another (its library, then the data it maps) waits for the last of a
// batch before it goes on, and then computes with the link idle. With
// about one round trip's worth of bytes in flight, each read is asked for
// as the ones before it are about to end: they arrive in the order given,
// at the link's full rate, and the link does not idle between one and the
// next. Small reads, which a round trip bounds, go side by side.
//
// The window is measured on the reads themselves: the rate of the last
// read to end after its first byte, times the shortest time to a first
// byte seen (the round trip; a longer one is a read queued behind others,
// which would widen the window towards all reads at once). It is never
// less than MinWindow.
func Ordered(ctx context.Context, sizes []int, parallel int, job func(i int, progress func(n int)), skipped func(i int)) {
	var (
		mu       sync.Mutex
		inflight int
		left     int // bytes the jobs in flight have yet to receive
		window   = MinWindow
		rtt      time.Duration // shortest time to a first byte so far
		changed  = make(chan struct{}, 1)
		wg       sync.WaitGroup
	)
	poke := func() {
		select {
		case changed <- struct{}{}:
		default:
		}
	}
	// admit waits until a job of n bytes may start; false if ctx ended.
	admit := func(n int) bool {
		for {
			mu.Lock()
			if inflight == 0 || (inflight < parallel && left < window) {
				inflight++
				left += n
				mu.Unlock()
				return true
			}
			mu.Unlock()
			select {
			case <-changed:
			case <-ctx.Done():
				return false
			}
		}
	}
	defer wg.Wait()
	for i, n := range sizes {
		if ctx.Err() != nil || !admit(n) {
			for j := i; j < len(sizes); j++ {
				skipped(j)
			}
			return
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			asked := now()
			var first time.Time
			got, atFirst := 0, 0
			job(i, func(m int) {
				mu.Lock()
				if first.IsZero() {
					first, atFirst = now(), m
				}
				if m > got {
					left -= min(m, n) - got
					got = min(m, n)
				}
				mu.Unlock()
				poke()
			})
			mu.Lock()
			inflight--
			left -= n - got
			if !first.IsZero() {
				if t := first.Sub(asked); rtt == 0 || t < rtt {
					rtt = t
				}
				if d := now().Sub(first); got == n && n-atFirst >= MinPipelined && d > 0 {
					window = max(MinWindow, int(float64(n-atFirst)/d.Seconds()*rtt.Seconds()))
				}
			}
			mu.Unlock()
			poke()
		}()
	}
}
