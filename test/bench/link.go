package main

import (
	"net/http"
	"sync"
	"time"
)

// link emulates a network path in front of the registry: every request
// waits one round trip before it is served, and all response bodies share
// one bandwidth cap (a token bucket without burst: bytes leave in the order
// they were written, at the link's rate, whatever the connection).
type link struct {
	delay       time.Duration
	bytesPerSec float64 // 0: no cap

	mu   sync.Mutex
	next time.Time // when the link is free again
}

func newLink(delay time.Duration, mbit float64) *link {
	return &link{delay: delay, bytesPerSec: mbit * 1e6 / 8}
}

// reserve books n bytes on the link and returns when they have gone out.
func (l *link) reserve(n int) time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	// A bucket of linkBurst bytes: a writer that comes back a little late
	// (scheduling, the socket write) uses the credit it accrued instead of
	// losing it, so the link delivers its nominal rate on a busy machine.
	now := time.Now()
	if floor := now.Add(-l.transferTime(linkBurst)); l.next.Before(floor) {
		l.next = floor
	}
	l.next = l.next.Add(time.Duration(float64(n) / l.bytesPerSec * float64(time.Second)))
	return l.next
}

// middleware is for fixture.Registry.SetMiddleware.
func (l *link) middleware(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if l.delay > 0 {
			time.Sleep(l.delay)
		}
		if l.bytesPerSec > 0 {
			w = &shapedWriter{ResponseWriter: w, l: l}
		}
		next.ServeHTTP(w, r)
	})
}

// shapedWriter paces a response body through the link in small pieces so
// that concurrent responses share the bandwidth.
type shapedWriter struct {
	http.ResponseWriter
	l *link
}

const (
	shapeQuantum = 32 << 10
	linkBurst    = 256 << 10
)

func (s *shapedWriter) Write(p []byte) (int, error) {
	written := 0
	for len(p) > 0 {
		n := min(len(p), shapeQuantum)
		time.Sleep(time.Until(s.l.reserve(n)))
		m, err := s.ResponseWriter.Write(p[:n])
		written += m
		if err != nil {
			return written, err
		}
		p = p[n:]
	}
	return written, nil
}

func (s *shapedWriter) Flush() {
	if f, ok := s.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

func (s *shapedWriter) Unwrap() http.ResponseWriter { return s.ResponseWriter }

// transferTime is how long n bytes take on the link, without round trips.
func (l *link) transferTime(n int64) time.Duration {
	if l.bytesPerSec <= 0 {
		return 0
	}
	return time.Duration(float64(n) / l.bytesPerSec * float64(time.Second))
}
