// Package progress owns the one-line progress bar of both command lines (`ibcm content add`,
// `ibcm-client download`): a label, the bar, the percent and the bytes, redrawn at most ten
// times a second and only on a terminal, and the byte sizes they print (1.5 MiB).
package progress

import (
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"

	"golang.org/x/term"
)

// Bar is one progress line. A nil *Bar, or one whose writer is not a terminal, draws
// nothing, so callers need not ask.
type Bar struct {
	mu          sync.Mutex
	w           io.Writer
	label       string
	total, done int64
	last        time.Time
	drawn       bool
}

// IsTerminal reports whether w is a terminal.
func IsTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// New returns a bar for total bytes (0 when not known yet) labelled label (terminal
// controls in it are the caller's to strip), or nil when w is not a terminal. It draws
// from the first Add, Set or Update.
func New(w io.Writer, label string, total int64) *Bar {
	if !IsTerminal(w) {
		return nil
	}
	return &Bar{w: w, label: label, total: total}
}

// Add counts n more bytes done.
func (b *Bar) Add(n int64) {
	if b == nil {
		return
	}
	b.mu.Lock()
	done, total := b.done+n, b.total
	b.mu.Unlock()
	b.Update(done, total)
}

// Set says done bytes are done.
func (b *Bar) Set(done int64) {
	if b == nil {
		return
	}
	b.mu.Lock()
	total := b.total
	b.mu.Unlock()
	b.Update(done, total)
}

// Update says done of total bytes are done (the shape of dp/fetch's Options.Progress).
func (b *Bar) Update(done, total int64) {
	if b == nil {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.done, b.total = done, total
	if b.drawn && time.Since(b.last) < 100*time.Millisecond && done < total {
		return
	}
	b.draw()
}

func (b *Bar) draw() {
	b.last, b.drawn = time.Now(), true
	fmt.Fprint(b.w, "\r"+Render(b.label, b.done, b.total, 30)+"\x1b[K")
}

// Finish draws the last state and ends the line (nothing when the bar never drew).
func (b *Bar) Finish() {
	if b == nil {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.drawn {
		return
	}
	b.draw()
	fmt.Fprintln(b.w)
}

// Render is the text of a bar: label (its last 24 characters), width cells, percent, bytes.
func Render(label string, done, total int64, width int) string {
	pct := 100
	if total > 0 {
		pct = int(min(max(done, 0), total) * 100 / total)
	}
	fill := pct * width / 100
	bar := strings.Repeat("=", fill)
	if fill < width {
		bar += ">" + strings.Repeat(" ", width-fill-1)
	}
	if r := []rune(label); len(r) > 24 {
		label = "…" + string(r[len(r)-23:])
	}
	return fmt.Sprintf("%-24s [%s] %3d %% %s / %s", label, bar, pct, Bytes(done), Bytes(total))
}

// Bytes reads 1.5 MiB.
func Bytes(n int64) string {
	if n < 1024 {
		return fmt.Sprintf("%d B", n)
	}
	v, units := float64(n)/1024, []string{"KiB", "MiB", "GiB", "TiB"}
	i := 0
	for v >= 1024 && i < len(units)-1 {
		v /= 1024
		i++
	}
	return fmt.Sprintf("%.1f %s", v, units[i])
}
