// Package pace times the next request of a stream read in pieces (the
// pool's head stream, the early ranges, the fill's segments): sent about a
// round trip before the read before it ends, it reaches the registry as
// that read's last bytes leave, so the link neither idles for a round
// trip between the two nor is shared by them for long.
package pace

import "time"

// NearTheEnd wraps the progress of a read of n bytes so that start is
// called (maybe more than once) when the read is about one round trip from
// done: a request sent then reaches the registry as the read's last bytes
// leave, and its first bytes follow them with no idle round trip between,
// without sharing the link with the read before. The round trip is taken
// to be the time to the read's first byte, the rate what came after those
// first bytes; a guess too early only shares the link for part of a round
// trip. A read under MinPipelined bytes is left alone.
func NearTheEnd(n int, progress func(int), start func()) func(int) {
	if n < MinPipelined {
		return progress
	}
	asked := time.Now()
	var first time.Time
	var atFirst int
	return func(got int) {
		if progress != nil {
			progress(got)
		}
		now := time.Now()
		if first.IsZero() {
			// The first bytes come in a burst (what was buffered on
			// the way): the rate is measured from here on.
			first, atFirst = now, got
			return
		}
		rtt, since := first.Sub(asked), now.Sub(first)
		if since < rtt/4 || got <= atFirst {
			return
		}
		// The remaining bytes at the rate seen since the first ones take
		// no longer than a round trip: ask now.
		if time.Duration(float64(n-got)/float64(got-atFirst)*float64(since)) <= rtt {
			start()
		}
	}
}

// MinPipelined is the smallest read worth timing the stream's start on:
// a smaller one is over within a round trip anyway.
const MinPipelined = 64 << 10
