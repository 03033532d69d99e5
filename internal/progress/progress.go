// Package progress shows how far a long command got: on a terminal, one
// status line rewritten in place; elsewhere (a log file, a pipe, CI) only
// the plain lines the command logs, since carriage returns and escape codes
// would garble those.
package progress

import (
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"golang.org/x/sys/unix"
)

// redrawEvery is how often the status line is redrawn at most: updates
// come per layer or per pushed chunk, far faster than anyone reads, and
// each redraw is a write to the terminal.
const redrawEvery = 100 * time.Millisecond

// Clock is the time a Line reads and the timer it sets to draw a status
// it held back.
type Clock interface {
	Now() time.Time
	// AfterFunc calls f in its own goroutine after d; stop cancels it.
	AfterFunc(d time.Duration, f func()) (stop func() bool)
}

// realClock is the system's clock.
type realClock struct{}

func (realClock) Now() time.Time { return time.Now() }
func (realClock) AfterFunc(d time.Duration, f func()) func() bool {
	return time.AfterFunc(d, f).Stop
}

// Line is a command's status line and its log. Safe for concurrent use.
type Line struct {
	w     io.Writer
	width int // terminal columns; 0: not a terminal
	clock Clock

	mu      sync.Mutex
	status  string      // the latest status
	drawn   bool        // a status line is on the screen
	at      time.Time   // when it was drawn
	pending bool        // status changed since it was drawn
	stop    func() bool // cancels the timer that draws it; nil: none set
}

// For returns the Line of f: a status line if f is a terminal, plain log
// lines otherwise.
func For(f *os.File) *Line {
	width := 0
	if ws, err := unix.IoctlGetWinsize(int(f.Fd()), unix.TIOCGWINSZ); err == nil {
		width = int(ws.Col)
		if width == 0 { // a terminal that does not say (a serial console)
			width = 80
		}
	}
	return New(f, width, nil)
}

// New returns a Line writing to w, a terminal width columns wide (0: not
// a terminal), on clock (nil: the system's).
func New(w io.Writer, width int, clock Clock) *Line {
	if clock == nil {
		clock = realClock{}
	}
	return &Line{w: w, width: width, clock: clock}
}

// Terminal says whether the status line is shown.
func (l *Line) Terminal() bool { return l.width > 0 }

// Show makes the formatted text the status line. On a terminal it is
// drawn at once if the last drawing is older than redrawEvery (or was
// cleared), otherwise when it is redrawEvery old, unless a newer status
// came by then: the last one is always drawn, even if no other follows
// for minutes. Elsewhere it is not shown.
func (l *Line) Show(format string, args ...any) {
	if !l.Terminal() {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.status = fmt.Sprintf(format, args...)
	now := l.clock.Now()
	if since := now.Sub(l.at); !l.drawn || since >= redrawEvery {
		l.draw(now)
		return
	}
	l.pending = true
	if l.stop == nil {
		l.stop = l.clock.AfterFunc(redrawEvery-now.Sub(l.at), l.drawPending)
	}
}

// drawPending draws the status Show held back, if it is still due.
func (l *Line) drawPending() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.stop = nil
	if l.pending && l.status != "" {
		l.draw(l.clock.Now())
	}
}

// Log writes the formatted text as a line of its own, which stays. On a
// terminal it replaces the status line, which is empty until the next
// Show: a command logs the end of a step, whose status is then stale.
func (l *Line) Log(format string, args ...any) {
	msg := strings.TrimSuffix(fmt.Sprintf(format, args...), "\n")
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.Terminal() {
		fmt.Fprintln(l.w, msg)
		return
	}
	fmt.Fprintf(l.w, "\r\033[K%s\n", msg)
	l.drawn, l.status, l.pending = false, "", false
}

// Done clears the status line: what stays is what was logged.
func (l *Line) Done() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.stop != nil {
		l.stop()
		l.stop = nil
	}
	if l.drawn {
		fmt.Fprint(l.w, "\r\033[K")
	}
	l.drawn, l.status, l.pending = false, "", false
}

// draw writes the status over the line, cut to one column less than the
// terminal's width: a line that wraps cannot be rewritten by "\r".
func (l *Line) draw(now time.Time) {
	fmt.Fprintf(l.w, "\r\033[K%s", cut(l.status, l.width-1))
	l.drawn, l.at, l.pending = true, now, false
}

// cut returns s in at most n runes, ending in "…" if it was cut.
func cut(s string, n int) string {
	if n < 1 {
		return ""
	}
	if utf8.RuneCountInString(s) <= n {
		return s
	}
	r := []rune(s)
	return string(r[:n-1]) + "…"
}
