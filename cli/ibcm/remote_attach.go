package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"
	"unicode/utf8"

	"github.com/urfave/cli/v3"
	"golang.org/x/term"

	"github.com/ibcm-project/ibcm/internal/wire"
	"github.com/ibcm-project/ibcm/remote/frame"
	"github.com/ibcm-project/ibcm/remote/helper"
)

// escapeKey opens the session menu (Ctrl-]).
const escapeKey = 0x1d

// endWait bounds the wait for the device's End once the helper ended.
const endWait = 5 * time.Second

// terminal is the helper's side of `ibcm remote start|join`: the session's output on
// stdout, status lines on stderr, keystrokes from stdin (raw when it is a terminal).
type terminal struct {
	in        io.Reader
	out, errw io.Writer
	inFd      int
	outFd     int
	inTTY     bool
	outTTY    bool
	mu        sync.Mutex // one writer at a time on out and errw; guards the fields below
	raw       bool
	chatting  bool   // a chat line is being typed: status lines draw its prompt again
	chatLine  []byte // what has been typed of it
}

// chatPrompt is the line the helper types a chat message on; call with mu held.
func (t *terminal) chatPrompt() {
	fmt.Fprintf(t.errw, "\r\x1b[K\x1b[7m[ibcm]\x1b[0m chat> %s", frame.Printable(string(t.chatLine)))
}

func newTerminal(c *cli.Command) *terminal {
	root := c.Root()
	t := &terminal{in: root.Reader, out: root.Writer, errw: root.ErrWriter, inFd: -1, outFd: -1}
	if t.in == nil {
		t.in = os.Stdin
	}
	if t.out == nil {
		t.out = os.Stdout
	}
	if t.errw == nil {
		t.errw = os.Stderr
	}
	if f, ok := t.in.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		t.inTTY, t.inFd = true, int(f.Fd())
	}
	if f, ok := t.out.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		t.outTTY, t.outFd = true, int(f.Fd())
	}
	return t
}

// status prints one line on stderr without breaking the line the shell is drawing.
func (t *terminal) status(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.raw {
		fmt.Fprintf(t.errw, "\r\n\x1b[7m[ibcm]\x1b[0m %s\r\n", msg)
		if t.chatting {
			t.chatPrompt()
		}
		return
	}
	fmt.Fprintf(t.errw, "ibcm: %s\n", msg)
}

func (t *terminal) write(p []byte) {
	t.mu.Lock()
	_, _ = t.out.Write(p)
	t.mu.Unlock()
}

// size is the terminal's size, 0, 0 when there is none.
func (t *terminal) size() (rows, cols uint16) {
	for _, fd := range []int{t.outFd, t.inFd} {
		if fd < 0 {
			continue
		}
		if w, h, err := term.GetSize(fd); err == nil && w > 0 && h > 0 && w < 1<<16 && h < 1<<16 {
			return uint16(h), uint16(w)
		}
	}
	return 0, 0
}

// makeRaw puts stdin in raw mode when it is a terminal and returns the undo.
func (t *terminal) makeRaw() func() {
	if !t.inTTY {
		return func() {}
	}
	old, err := term.MakeRaw(t.inFd)
	if err != nil {
		t.status("cannot put the terminal in raw mode: %v", err)
		return func() {}
	}
	t.mu.Lock()
	t.raw = true
	t.mu.Unlock()
	return func() {
		t.mu.Lock()
		t.raw = false
		t.mu.Unlock()
		_ = term.Restore(t.inFd, old)
	}
}

// card is the device's identity card in one line.
func card(s wire.SessionStart) string {
	d := s.Device
	parts := []string{"device " + frame.Printable(orDefault(d.Name, d.ID))}
	if d.FQDN != "" {
		parts = append(parts, frame.Printable(d.FQDN))
	}
	if d.Location != "" {
		parts = append(parts, "on the "+frame.Printable(d.Location))
	}
	if d.OS != "" {
		parts = append(parts, frame.Printable(d.OS))
	}
	parts = append(parts, "id "+frame.Printable(d.ID))
	return strings.Join(parts, ", ")
}

func sharerLine(g frame.Greeting) string {
	mode := frame.Printable(dash(g.Mode))
	switch {
	case g.Sharer != "":
		return fmt.Sprintf("sharer %s on a %s terminal; mode %s", frame.Printable(withName(g.Sharer, g.SharerName)), frame.Printable(orDefault(g.Terminal, "shared")), mode)
	case g.Terminal != "":
		return fmt.Sprintf("nobody shares: a %s terminal; mode %s", frame.Printable(g.Terminal), mode)
	}
	return "mode " + mode
}

func presenceLine(p frame.Presence) string {
	var who []string
	for _, h := range p.Helpers {
		s := frame.Printable(withName(h.User, h.DisplayName)) + " " + frame.Printable(h.Role)
		if h.Mode != "" {
			s += " (" + frame.Printable(h.Mode) + ")"
		}
		who = append(who, s)
	}
	var parts []string
	if p.Message != "" {
		parts = append(parts, frame.Printable(p.Message))
	}
	if len(who) > 0 {
		parts = append(parts, "connected: "+strings.Join(who, ", "))
	}
	if p.Mode != "" {
		parts = append(parts, "mode "+frame.Printable(p.Mode))
	}
	return strings.Join(parts, "; ")
}

// attach connects to the device of start and runs the session on the terminal until one
// side ends it. A session the device ends with another outcome than completed, and a
// refusal, exit with exitRefused.
func attach(ctx context.Context, hc *helper.Client, start wire.SessionStart, t *terminal) error {
	t.status("%s", card(start))
	if start.ComplianceWarning != "" {
		t.status("WARNING: %s", frame.Printable(start.ComplianceWarning))
	}
	role := orDefault(start.Role, "helper")
	t.status("session %s (%s, mode %s): waiting for the device…", start.Session.ID, role, frame.Printable(orDefault(start.Session.Mode, "?")))
	rows, cols := t.size()
	s, err := hc.Connect(ctx, start, frame.Greeting{Session: start.Session.ID, Mode: start.Session.Mode, Rows: rows, Cols: cols})
	if err != nil {
		if ctx.Err() != nil {
			return errors.New("interrupted")
		}
		return remoteError(fmt.Errorf("reaching %s: %w", frame.Printable(orDefault(start.Device.Name, start.Device.ID)), err))
	}
	defer s.Close()
	if strings.HasPrefix(start.Session.Device, wire.GuestURIPrefix) {
		// An unenrolled device's program is nobody the site vouches for: its output may draw
		// on the helper's terminal but not command it (OSC 52 clipboard, DCS, titles).
		t.mu.Lock()
		raw := t.out
		t.out = helper.NewGuestOutput(raw)
		t.mu.Unlock()
		defer func() { // its modes that type into the terminal's input end with it
			t.mu.Lock()
			_, _ = io.WriteString(raw, helper.GuestReset)
			t.mu.Unlock()
		}()
	}
	conn := s.Connection
	line := fmt.Sprintf("connected over %s in %s, end to end encrypted", conn.Transport, conn.Took.Round(time.Millisecond))
	if lost := conn.Lost(); lost != "" {
		line += " (" + lost + ")"
	}
	t.status("%s", line)
	t.status("%s", sharerLine(s.Device))
	if t.inTTY {
		t.status("Ctrl-] for the menu (control, elevated, view, chat, end)")
	}

	restore := t.makeRaw()
	defer restore()
	if t.outTTY || t.inTTY {
		winch := make(chan os.Signal, 1)
		signal.Notify(winch, syscall.SIGWINCH)
		defer signal.Stop(winch)
		go func() {
			for range winch {
				if r, c := t.size(); r > 0 {
					_ = s.Resize(r, c)
				}
			}
		}()
	}

	type ended struct {
		ending *frame.Ending
		err    error
	}
	out := make(chan ended, 1)
	go func() {
		e, err := t.output(s)
		out <- ended{e, err}
	}()
	quit := make(chan string, 1) // the helper ends: why
	go t.input(s, role == "viewer", quit)

	result := func(e ended, helperEnded bool) error {
		switch {
		case e.ending != nil && (e.ending.Outcome == wire.OutcomeCompleted || e.ending.Outcome == ""):
			t.status("session ended%s", messageSuffix(e.ending.Message))
			return nil
		case e.ending != nil:
			restore()
			return exitErr{code: exitRefused, err: &helper.EndedError{Outcome: frame.Printable(e.ending.Outcome), Message: frame.Printable(e.ending.Message)}}
		case helperEnded && (errors.Is(e.err, io.EOF) || e.err == nil):
			t.status("session ended")
			return nil
		case errors.Is(e.err, io.EOF):
			return errors.New("the device closed the session without ending it")
		}
		return fmt.Errorf("the session broke: %w", e.err)
	}
	wait := func() error {
		timer := time.NewTimer(endWait)
		defer timer.Stop()
		select {
		case e := <-out:
			return result(e, true)
		case <-timer.C:
			t.status("the device did not confirm the end within %s", endWait)
			return nil
		}
	}
	select {
	case e := <-out:
		return result(e, false)
	case why := <-quit:
		if err := s.End(why); err != nil {
			return fmt.Errorf("ending the session: %w", err)
		}
		return wait()
	case <-ctx.Done():
		_ = s.End("the helper's command was interrupted")
		_ = wait()
		return errors.New("interrupted")
	}
}

func messageSuffix(m string) string {
	if m == "" {
		return ""
	}
	return ": " + frame.Printable(m)
}

// output shows what the device sends until its End or the end of the stream.
func (t *terminal) output(s *helper.Session) (*frame.Ending, error) {
	for {
		ev, err := s.Next()
		if err != nil {
			return nil, err
		}
		switch ev.Type {
		case frame.Data:
			t.write(ev.Data)
		case frame.Chat:
			t.status("chat: %s", frame.Printable(ev.Text))
		case frame.Mode:
			m := ev.Mode
			switch {
			case m.Granted:
				t.status("mode is now %s%s", frame.Printable(m.Mode), messageSuffix(m.Reason))
			case m.Reason != "":
				t.status("%s refused: %s", frame.Printable(m.Mode), frame.Printable(m.Reason))
			default:
				t.status("mode %s", frame.Printable(m.Mode))
			}
		case frame.Resize:
			if r, c := t.size(); r != ev.Rows || c != ev.Cols {
				t.status("the shared terminal is now %dx%d (this one is %dx%d)", ev.Cols, ev.Rows, c, r)
			}
		case frame.Status:
			if l := presenceLine(ev.Presence); l != "" {
				t.status("%s", l)
			}
		case frame.End:
			e := ev.Ending
			return &e, nil
		}
	}
}

// input sends the keystrokes; on a terminal, Ctrl-] opens the menu. It reports on quit
// when the helper ends the session (the menu, or the end of stdin).
func (t *terminal) input(s *helper.Session, viewer bool, quit chan<- string) {
	buf := make([]byte, 4096)
	const (
		typing = iota
		menu
		chat
	)
	state := typing
	var line []byte
	send := func(p []byte) bool {
		if len(p) == 0 || viewer { // a viewer's keys have nowhere to go (the device drops them too)
			return true
		}
		_, err := s.Write(p)
		return err == nil
	}
	showChat := func() {
		t.mu.Lock()
		t.chatting, t.chatLine = state == chat, append(t.chatLine[:0], line...)
		if t.chatting {
			t.chatPrompt()
		}
		t.mu.Unlock()
	}
	for {
		n, err := t.in.Read(buf)
		data := buf[:n]
		if !t.inTTY {
			if !send(data) {
				return
			}
		}
		for t.inTTY && len(data) > 0 {
			switch state {
			case typing:
				i := -1
				for j, b := range data {
					if b == escapeKey {
						i = j
						break
					}
				}
				if i < 0 {
					if !send(data) {
						return
					}
					data = nil
					continue
				}
				if !send(data[:i]) {
					return
				}
				data = data[i+1:]
				state = menu
				if viewer {
					t.status("menu: t chat, q leave, any other key back (Ctrl-] again sends Ctrl-])")
				} else {
					t.status("menu: c request control, e request elevated, v back to view, t chat, q end, any other key back (Ctrl-] again sends Ctrl-])")
				}
			case menu:
				b := data[0]
				data = data[1:]
				state = typing
				switch {
				case b == escapeKey:
					if !send([]byte{escapeKey}) {
						return
					}
				case b == 't':
					state, line = chat, line[:0]
					showChat()
				case b == 'q' || b == '.':
					quit <- "the helper ended the session"
					return
				case !viewer && (b == 'c' || b == 'e' || b == 'v'):
					mode := map[byte]string{'c': "control", 'e': "elevated", 'v': "view"}[b]
					if err := s.RequestMode(mode); err != nil {
						t.status("asking for %s: %v", mode, err)
					} else {
						t.status("asked for %s…", mode)
					}
				default:
					t.status("back to the session")
				}
			case chat:
				b := data[0]
				data = data[1:]
				switch b {
				case '\r', '\n':
					state = typing
					showChat()
					t.mu.Lock()
					fmt.Fprint(t.errw, "\r\n")
					t.mu.Unlock()
					if text := strings.TrimSpace(string(line)); text != "" {
						if err := s.Chat(text); err != nil {
							t.status("chat not sent: %v", err)
						}
					}
				case 0x7f, 0x08:
					if len(line) > 0 {
						_, size := utf8.DecodeLastRune(line)
						line = line[:len(line)-size]
					}
					showChat()
				case 0x1b, 0x03, escapeKey:
					state = typing
					showChat()
					t.status("chat cancelled")
				default:
					if b >= 0x20 && len(line) < frame.MaxChat {
						line = append(line, b)
						if utf8.FullRune(line[lastRuneStart(line):]) {
							showChat()
						}
					}
				}
			}
		}
		if err != nil {
			quit <- "the helper's input ended"
			return
		}
	}
}

// lastRuneStart is where the last (maybe partial) UTF-8 sequence of b begins.
func lastRuneStart(b []byte) int {
	for i := len(b) - 1; i >= 0 && i >= len(b)-utf8.UTFMax; i-- {
		if utf8.RuneStart(b[i]) {
			return i
		}
	}
	return len(b) - 1
}
