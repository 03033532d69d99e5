package progress

import (
	"bytes"
	"strings"
	"testing"
	"time"
)

// clock is a fake Clock moved by hand; advance runs the timers that fall
// due, in the caller's goroutine.
type clock struct {
	t      time.Time
	timers []*timer
}

type timer struct {
	at      time.Time
	f       func()
	stopped bool
}

func (c *clock) Now() time.Time { return c.t }

func (c *clock) AfterFunc(d time.Duration, f func()) func() bool {
	tm := &timer{at: c.t.Add(d), f: f}
	c.timers = append(c.timers, tm)
	return func() bool { was := !tm.stopped; tm.stopped = true; return was }
}

func (c *clock) advance(d time.Duration) {
	c.t = c.t.Add(d)
	var left []*timer
	for _, tm := range c.timers {
		switch {
		case tm.stopped:
		case !tm.at.After(c.t):
			tm.stopped = true
			tm.f()
		default:
			left = append(left, tm)
		}
	}
	c.timers = left
}

func screen(b *bytes.Buffer) string { return strings.ReplaceAll(b.String(), "\033[K", "<K>") }

func newTerm(width int) (*Line, *bytes.Buffer, *clock) {
	var b bytes.Buffer
	c := &clock{t: time.Unix(1e9, 0)}
	return New(&b, width, c), &b, c
}

func TestNotATerminal(t *testing.T) {
	l, b, c := newTerm(0)
	l.Show("layers %d/%d", 1, 3)
	l.Log("layer %d: converted", 0)
	l.Show("layers %d/%d", 2, 3)
	l.Show("layers %d/%d", 3, 3)
	c.advance(time.Second)
	l.Log("pushed\n")
	l.Done()
	if got, want := b.String(), "layer 0: converted\npushed\n"; got != want {
		t.Errorf("output %q, want only the logged lines %q", got, want)
	}
	if l.Terminal() {
		t.Error("Terminal() on width 0")
	}
}

func TestStatusRedrawnAtMostEvery100ms(t *testing.T) {
	l, b, c := newTerm(80)
	l.Show("a 1")
	l.Show("a 2") // same instant: held back
	c.advance(50 * time.Millisecond)
	l.Show("a 3")
	if got, want := screen(b), "\r<K>a 1"; got != want {
		t.Fatalf("after three updates within 100 ms: %q, want %q", got, want)
	}
	c.advance(50 * time.Millisecond) // the held-back status is due: the latest is drawn
	if got, want := screen(b), "\r<K>a 1\r<K>a 3"; got != want {
		t.Fatalf("100 ms after the first drawing: %q, want %q", got, want)
	}
	c.advance(time.Second) // nothing new: nothing drawn
	l.Show("a 4")          // the last drawing is old: drawn at once
	if got, want := screen(b), "\r<K>a 1\r<K>a 3\r<K>a 4"; got != want {
		t.Fatalf("after a pause: %q, want %q", got, want)
	}
	l.Show("a 5")
	l.Done() // cancels the timer: a 5 is never drawn
	c.advance(time.Second)
	if got, want := screen(b), "\r<K>a 1\r<K>a 3\r<K>a 4\r<K>"; got != want {
		t.Errorf("after Done: %q, want the line cleared and nothing after %q", got, want)
	}
	l.Done() // nothing drawn: nothing written
	if got, want := screen(b), "\r<K>a 1\r<K>a 3\r<K>a 4\r<K>"; got != want {
		t.Errorf("a second Done wrote: %q", got)
	}
}

func TestLogReplacesStatus(t *testing.T) {
	l, b, c := newTerm(80)
	l.Log("before any status")
	l.Show("pushing 1/2")
	c.advance(10 * time.Millisecond)
	l.Show("pushing 1/2, more") // held back
	l.Log("layer 0: done")      // the step is over: its status goes
	c.advance(time.Second)      // the timer finds nothing to draw
	l.Show("pushing 2/2")       // the line was cleared: drawn at once
	want := "\r<K>before any status\n" +
		"\r<K>pushing 1/2" +
		"\r<K>layer 0: done\n" +
		"\r<K>pushing 2/2"
	if got := screen(b); got != want {
		t.Errorf("got  %q\nwant %q", got, want)
	}
}

func TestStatusCutToWidth(t *testing.T) {
	for _, tc := range []struct {
		width      int
		text, want string
	}{
		{10, "0123456789abcdef", "01234567…"}, // 9 columns: a wrapped line could not be rewritten
		{6, "ééééééé", "éééé…"},               // runes, not bytes
		{10, "short", "short"},
	} {
		l, b, _ := newTerm(tc.width)
		l.Show("%s", tc.text)
		if got, want := screen(b), "\r<K>"+tc.want; got != want {
			t.Errorf("%q on %d columns: %q, want %q", tc.text, tc.width, got, want)
		}
	}
}
