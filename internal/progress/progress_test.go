package progress

import (
	"bytes"
	"strings"
	"testing"
	"time"
)

// clock is a fake clock moved by hand.
type clock struct{ t time.Time }

func (c *clock) now() time.Time          { return c.t }
func (c *clock) advance(d time.Duration) { c.t = c.t.Add(d) }
func screen(b *bytes.Buffer) string      { return strings.ReplaceAll(b.String(), "\033[K", "<K>") }
func newTerm(width int) (*Line, *bytes.Buffer, *clock) {
	var b bytes.Buffer
	c := &clock{t: time.Unix(1e9, 0)}
	return New(&b, width, c.now), &b, c
}

func TestNotATerminal(t *testing.T) {
	var b bytes.Buffer
	l := New(&b, 0, time.Now)
	l.Show("layers %d/%d", 1, 3)
	l.Flush()
	l.Log("layer %d: converted", 0)
	l.Show("layers %d/%d", 2, 3)
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
	l.Show("a 2") // same instant: kept for later
	c.advance(50 * time.Millisecond)
	l.Show("a 3")
	if got, want := screen(b), "\r<K>a 1"; got != want {
		t.Fatalf("after three updates within 100 ms: %q, want %q", got, want)
	}
	c.advance(50 * time.Millisecond)
	l.Show("a 4")
	if got, want := screen(b), "\r<K>a 1\r<K>a 4"; got != want {
		t.Fatalf("after 100 ms: %q, want %q", got, want)
	}
	l.Show("a 5")
	l.Flush()
	if got, want := screen(b), "\r<K>a 1\r<K>a 4\r<K>a 5"; got != want {
		t.Fatalf("after Flush: %q, want %q", got, want)
	}
	l.Done()
	if got := screen(b); !strings.HasSuffix(got, "a 5\r<K>") {
		t.Errorf("Done did not clear the line: %q", got)
	}
	l.Done() // nothing drawn: nothing written
	if got := screen(b); strings.HasSuffix(got, "\r<K>\r<K>") {
		t.Errorf("a second Done wrote again: %q", got)
	}
}

func TestLogReplacesStatus(t *testing.T) {
	l, b, c := newTerm(80)
	l.Log("before any status")
	l.Show("pushing 1/2")
	c.advance(10 * time.Millisecond)
	l.Log("layer 0: done")
	l.Flush()             // the status ended with the log line: nothing to draw
	l.Show("pushing 2/2") // the line was cleared: drawn at once
	want := "\r<K>before any status\n" +
		"\r<K>pushing 1/2" +
		"\r<K>layer 0: done\n" +
		"\r<K>pushing 2/2"
	if got := screen(b); got != want {
		t.Errorf("got  %q\nwant %q", got, want)
	}
}

func TestStatusCutToWidth(t *testing.T) {
	l, b, _ := newTerm(10)
	l.Show("0123456789abcdef")
	if got, want := screen(b), "\r<K>01234567…"; got != want {
		t.Errorf("status on 10 columns: %q, want 9 runes %q", got, want)
	}
	l2, b2, _ := newTerm(6)
	l2.Show("ééééééé")
	if got, want := screen(b2), "\r<K>éééé…"; got != want {
		t.Errorf("multi-byte status on 6 columns: %q, want %q", got, want)
	}
	l3, b3, _ := newTerm(10)
	l3.Show("short")
	if got, want := screen(b3), "\r<K>short"; got != want {
		t.Errorf("%q, want %q", got, want)
	}
}
