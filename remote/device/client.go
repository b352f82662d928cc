package device

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"unicode/utf8"

	"github.com/creack/pty"

	"github.com/ibcm-project/ibcm/remote/frame"
)

// DefaultShareSocket is where the agent listens for share and consent clients.
const DefaultShareSocket = "/run/ibcm-client/share.sock"

// EscapeKey opens the share client's commands (Ctrl-]).
const EscapeKey = 0x1d

// ErrSocketOwner is returned when the share socket (or its directory) is not root's: a
// local user could be posing as the agent.
var ErrSocketOwner = errors.New("the share socket is not the agent's")

// CheckSocket checks that path is a socket owned by root in a directory owned by root
// that nobody else may write, before a share or consent client trusts it.
func CheckSocket(path string) error {
	fi, err := os.Lstat(path)
	if err != nil {
		return fmt.Errorf("share socket: %w (is `ibcm-client run` running?)", err)
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok || fi.Mode().Type() != os.ModeSocket {
		return fmt.Errorf("%w: %s is not a socket", ErrSocketOwner, path)
	}
	if st.Uid != 0 {
		return fmt.Errorf("%w: %s belongs to uid %d, not root", ErrSocketOwner, path, st.Uid)
	}
	di, err := os.Stat(filepath.Dir(path))
	if err != nil {
		return err
	}
	dst, ok := di.Sys().(*syscall.Stat_t)
	if !ok || dst.Uid != 0 || di.Mode().Perm()&0o022 != 0 {
		return fmt.Errorf("%w: its directory %s must be root's and writable by root only", ErrSocketOwner, filepath.Dir(path))
	}
	return nil
}

func dialShare(ctx context.Context, path, kind string, rows, cols uint16, display ...string) (net.Conn, error) {
	if err := CheckSocket(path); err != nil {
		return nil, err
	}
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return nil, fmt.Errorf("share socket: %w", err)
	}
	g := frame.Greeting{Terminal: kind, Rows: rows, Cols: cols}
	if len(display) == 2 {
		g.Display, g.XAuthority = display[0], display[1]
	}
	if err := frame.WriteJSON(c, frame.Hello, g); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// Answer gives one consent answer (`ibcm-client consent --accept|--deny [ID]`): id names
// the question or its session (empty: the only question waiting). It returns the
// agent's verdict, or an error with the refusal's code.
func Answer(ctx context.Context, socket, id string, accept bool) (string, error) {
	c, err := dialShare(ctx, socket, KindAnswer, 0, 0)
	if err != nil {
		return "", err
	}
	defer c.Close()
	go func() { <-ctx.Done(); c.Close() }()
	if err := frame.WriteJSON(c, frame.Answer, frame.ConsentAnswer{ID: id, Accept: accept}); err != nil {
		return "", err
	}
	f, err := frame.NewReader(c).Next()
	if err != nil {
		return "", fmt.Errorf("share socket: %w", err)
	}
	var e frame.Ending
	if f.Type != frame.End || frame.DecodeJSON(f, &e) != nil {
		return "", fmt.Errorf("share socket: unexpected %s", f.Type)
	}
	if e.Message != "" {
		return e.Outcome, fmt.Errorf("%s: %s", e.Outcome, e.Message)
	}
	return e.Outcome, nil
}

// Watch is `ibcm-client consent --watch`: the user is present without sharing; questions
// are printed and answered with y or n lines on in; "/chat TEXT", "/view" and "/end" act
// on the session.
func Watch(ctx context.Context, socket string, in io.Reader, out io.Writer) error {
	c, err := dialShare(ctx, socket, KindWatch, 0, 0)
	if err != nil {
		return err
	}
	defer c.Close()
	go func() { <-ctx.Done(); c.Close() }()
	var mu sync.Mutex
	var last string
	var wmu sync.Mutex
	send := func(t frame.Type, v any) {
		wmu.Lock()
		defer wmu.Unlock()
		if b, ok := v.([]byte); ok {
			_ = frame.Write(c, t, b)
		} else {
			_ = frame.WriteJSON(c, t, v)
		}
	}
	go func() {
		sc := bufio.NewScanner(in)
		for sc.Scan() {
			line := strings.TrimSpace(sc.Text())
			mu.Lock()
			id := last
			mu.Unlock()
			switch {
			case line == "y" || line == "yes" || line == "n" || line == "no":
				if id == "" {
					fmt.Fprintln(out, "no question waits")
					continue
				}
				send(frame.Answer, frame.ConsentAnswer{ID: id, Accept: line[0] == 'y'})
				mu.Lock()
				last = ""
				mu.Unlock()
			case strings.HasPrefix(line, "/chat "):
				send(frame.Chat, []byte(strings.TrimPrefix(line, "/chat ")))
			case line == "/view":
				send(frame.Mode, frame.ModeChange{Mode: "view"})
			case line == "/end":
				send(frame.End, frame.Ending{Outcome: "completed", Message: "ended by the user at the device"})
			}
		}
	}()
	r := frame.NewReader(c)
	for {
		f, err := r.Next()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
		switch f.Type {
		case frame.Prompt:
			var p frame.ConsentPrompt
			if frame.DecodeJSON(f, &p) == nil {
				mu.Lock()
				last = p.ID
				mu.Unlock()
				fmt.Fprintf(out, "%s\nAnswer y or n within %ds (question %s).\n", PromptText(p), p.Timeout, frame.Printable(p.ID))
			}
		case frame.Status:
			var p frame.Presence
			if frame.DecodeJSON(f, &p) == nil && p.Message != BellMessage {
				fmt.Fprintln(out, PresenceText(p))
			}
		case frame.Chat:
			fmt.Fprintf(out, "chat: %s\n", frame.Printable(string(f.Payload)))
		case frame.End:
			var e frame.Ending
			if frame.DecodeJSON(f, &e) == nil {
				fmt.Fprintf(out, "session ended (%s) %s\n", frame.Printable(e.Outcome), frame.Printable(e.Message))
			}
		}
	}
}

// PromptText says what a consent question asks, for people (printable only).
func PromptText(p frame.ConsentPrompt) string {
	who := peerText(p.Helper)
	s := fmt.Sprintf("%s asks for a remote %s session on this device", who, p.Mode)
	switch p.Kind {
	case "screen":
		s = fmt.Sprintf("%s asks to see this device's screen (%s mode)", who, p.Mode)
	case KindClipboard:
		s = fmt.Sprintf("%s asks to paste into this device's clipboard", who)
	}
	if p.Reason != "" {
		s += " (" + p.Reason + ")"
	}
	return frame.Printable(s + ".")
}

// promptLine is a question on the status line: how to answer, the mode and the helper's
// name first, since an 80-column terminal cuts what does not fit.
func promptLine(p frame.ConsentPrompt) string {
	what := p.Mode
	switch p.Kind {
	case "screen":
		what = "screen " + p.Mode
	case KindClipboard:
		return fmt.Sprintf("Ctrl-] y/n: allow a clipboard paste from %s? (%s)", peerText(p.Helper), p.Reason)
	}
	s := fmt.Sprintf("Ctrl-] y/n: allow %s access for %s?", what, peerText(p.Helper))
	if p.Reason != "" {
		s += " (" + p.Reason + ")"
	}
	return s
}

func peerText(p frame.Peer) string {
	who := p.User
	if p.DisplayName != "" {
		who = p.DisplayName + " (" + p.User + ")"
	}
	for _, x := range []string{p.Title, p.Organization} {
		if x != "" {
			who += ", " + x
		}
	}
	if p.Console {
		who += ", via the web console"
	}
	return who
}

// PresenceText is the connection bar's text (printable only).
func PresenceText(p frame.Presence) string {
	if p.Session == "" {
		return frame.Printable("ibcm: " + p.Message)
	}
	s := "ibcm: remote session"
	for _, h := range p.Helpers {
		s += ": " + peerText(h)
	}
	if p.Mode != "" {
		s += " [" + p.Mode + "]"
	}
	if p.Message != "" {
		s += " " + p.Message
	}
	return frame.Printable(s)
}

// ShareOptions configure the share client.
type ShareOptions struct {
	Socket string
	Shell  string   // the user's shell (their login shell when empty)
	Args   []string // the shell's arguments
	In     io.Reader
	Out    io.Writer
	// Size is the terminal's size; Resized signals a change (SIGWINCH).
	Size    func() (rows, cols uint16)
	Resized <-chan struct{}
	// Display and XAuthority offer this X display to screen sessions (`share --screen`);
	// CheckDisplay must accept them.
	Display, XAuthority string
}

// Share is `ibcm-client share`: the user's shell on a PTY, shown on their terminal and
// mirrored to the agent for a session; the last row is the status line (who is
// connected, in which mode, questions, chat). Ctrl-] then y/n answers a question, v drops
// the helper to view, e ends the session, c types a chat line, Ctrl-] sends Ctrl-].
func Share(ctx context.Context, o ShareOptions) error {
	rows, cols := o.Size()
	prows := rows
	if rows > 2 {
		prows = rows - 1
	}
	var display []string
	if o.Display != "" {
		if err := CheckDisplay(o.Display, o.XAuthority); err != nil {
			return err
		}
		display = []string{o.Display, o.XAuthority}
	}
	c, err := dialShare(ctx, o.Socket, KindShare, prows, cols, display...)
	if err != nil {
		return err
	}
	defer c.Close()
	shell := o.Shell
	if shell == "" {
		if a, err := LookupUID(os.Getuid()); err == nil {
			shell = a.Shell
		} else {
			shell = "/bin/sh"
		}
	}
	cmd := exec.Command(shell, o.Args...)
	cmd.Env = append(os.Environ(), "IBCM_SHARED=1")
	ptmx, err := pty.StartWithSize(cmd, &pty.Winsize{Rows: prows, Cols: cols})
	if err != nil {
		return fmt.Errorf("starting %s: %w", shell, err)
	}
	defer ptmx.Close()
	ui := &shareUI{c: c, pty: ptmx, out: o.Out, rows: rows, cols: cols, status: "ibcm: sharing this terminal; no remote session"}
	ui.setRegion()
	defer ui.restore()
	done := make(chan error, 3)
	go func() { done <- cmd.Wait() }()
	go func() { // the shell's output
		buf := make([]byte, frame.MaxData)
		for {
			n, err := ptmx.Read(buf)
			if n > 0 {
				ui.shellOutput(buf[:n])
			}
			if err != nil {
				return
			}
		}
	}()
	go func() { // the user's keys
		buf := make([]byte, 1024)
		for {
			n, err := o.In.Read(buf)
			if n > 0 {
				ui.keys(buf[:n])
			}
			if err != nil {
				return
			}
		}
	}()
	go func() { done <- ui.agent() }()
	for {
		select {
		case <-ctx.Done():
			_ = cmd.Process.Kill()
			return nil
		case <-o.Resized:
			r, cl := o.Size()
			ui.resize(r, cl)
		case err := <-done:
			_ = cmd.Process.Kill()
			var ee *exec.ExitError
			if errors.As(err, &ee) {
				return nil // the shell's own status is the user's business
			}
			return err
		}
	}
}

// shareUI is the share client's terminal: the shell's output and the status line.
type shareUI struct {
	c   net.Conn
	pty *os.File
	wmu sync.Mutex // writes to c

	mu       sync.Mutex // the rest, and writes to out
	out      io.Writer
	rows     uint16
	cols     uint16
	status   string
	prompt   *frame.ConsentPrompt
	escape   bool
	chatting bool
	chat     []byte
	elevated bool
	last     string // the last chat or event shown
}

func (u *shareUI) send(t frame.Type, v any) {
	u.wmu.Lock()
	defer u.wmu.Unlock()
	if b, ok := v.([]byte); ok {
		_ = frame.Write(u.c, t, b)
	} else {
		_ = frame.WriteJSON(u.c, t, v)
	}
}

func (u *shareUI) setRegion() {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.rows > 2 {
		fmt.Fprintf(u.out, "\x1b[1;%dr\x1b[H\x1b[2J", u.rows-1)
	}
	u.drawLocked()
}

func (u *shareUI) restore() {
	u.mu.Lock()
	defer u.mu.Unlock()
	fmt.Fprintf(u.out, "\x1b[r\x1b[%d;1H\x1b[2K\r\n", u.rows)
}

// drawLocked draws the status line on the last row, keeping the cursor where it was.
func (u *shareUI) drawLocked() {
	text := u.status
	switch {
	case u.chatting:
		text = "chat> " + string(u.chat)
	case u.prompt != nil:
		text = promptLine(*u.prompt)
	case u.last != "": // the newest message first, for the same reason
		text = u.last + " | " + text
	}
	text = frame.Printable(text)
	if w := int(u.cols); w > 0 && utf8.RuneCountInString(text) > w {
		text = string([]rune(text)[:w])
	}
	if u.rows > 2 {
		fmt.Fprintf(u.out, "\x1b7\x1b[%d;1H\x1b[2K\x1b[7m%s\x1b[0m\x1b8", u.rows, text)
	}
}

func (u *shareUI) shellOutput(p []byte) {
	u.send(frame.Data, append([]byte(nil), p...))
	u.mu.Lock()
	defer u.mu.Unlock()
	if !u.elevated {
		_, _ = u.out.Write(p)
	}
}

func (u *shareUI) resize(rows, cols uint16) {
	u.mu.Lock()
	u.rows, u.cols = rows, cols
	prows := rows
	if rows > 2 {
		prows = rows - 1
	}
	u.mu.Unlock()
	_ = pty.Setsize(u.pty, &pty.Winsize{Rows: prows, Cols: cols})
	u.send(frame.Resize, frame.ResizePayload(max(prows, 1), max(cols, 1)))
	u.setRegion()
}

func (u *shareUI) keys(p []byte) {
	var pass []byte
	for i := 0; i < len(p); i++ {
		b := p[i]
		u.mu.Lock()
		switch {
		case u.chatting:
			switch b {
			case '\r', '\n':
				if len(u.chat) > 0 && utf8.Valid(u.chat) {
					line := append([]byte(nil), u.chat...)
					u.last = "you: " + string(line)
					u.mu.Unlock()
					u.send(frame.Chat, line)
					u.mu.Lock()
				}
				u.chatting, u.chat = false, nil
			case 0x1b, 0x03:
				u.chatting, u.chat = false, nil
			case 0x7f, 0x08:
				if len(u.chat) > 0 {
					_, n := utf8.DecodeLastRune(u.chat)
					u.chat = u.chat[:len(u.chat)-n]
				}
			default:
				if b >= 0x20 && len(u.chat) < frame.MaxChat {
					u.chat = append(u.chat, b)
				}
			}
			u.drawLocked()
			u.mu.Unlock()
			continue
		case u.escape:
			u.escape = false
			var act func()
			switch b {
			case 'y', 'Y', 'n', 'N':
				if pr := u.prompt; pr != nil {
					u.prompt = nil
					accept := b == 'y' || b == 'Y'
					act = func() { u.send(frame.Answer, frame.ConsentAnswer{ID: pr.ID, Accept: accept}) }
				}
			case 'v', 'V':
				act = func() { u.send(frame.Mode, frame.ModeChange{Mode: "view"}) }
			case 'e', 'E':
				act = func() { u.send(frame.End, frame.Ending{Outcome: "completed", Message: "ended by the sharer"}) }
			case 'c', 'C':
				u.chatting = true
			case EscapeKey:
				pass = append(pass, EscapeKey)
			}
			u.drawLocked()
			u.mu.Unlock()
			if act != nil {
				act()
			}
			continue
		case b == EscapeKey:
			u.escape = true
			u.mu.Unlock()
			continue
		}
		u.mu.Unlock()
		pass = append(pass, b)
	}
	if len(pass) > 0 {
		_, _ = u.pty.Write(pass)
	}
}

// agent reads the agent's frames until the connection ends.
func (u *shareUI) agent() error {
	r := frame.NewReader(u.c)
	for {
		f, err := r.Next()
		if err != nil {
			if errors.Is(err, io.EOF) {
				return errors.New("the agent closed the share socket")
			}
			return err
		}
		switch f.Type {
		case frame.Data:
			u.mu.Lock()
			elevated := u.elevated
			if elevated {
				_, _ = u.out.Write(f.Payload)
			}
			u.mu.Unlock()
			if !elevated {
				_, _ = u.pty.Write(f.Payload) // the helper's keys, in control
			}
		case frame.Prompt:
			var p frame.ConsentPrompt
			if frame.DecodeJSON(f, &p) == nil {
				u.mu.Lock()
				u.prompt = &p
				fmt.Fprint(u.out, "\a")
				u.drawLocked()
				u.mu.Unlock()
			}
		case frame.Status:
			var p frame.Presence
			if frame.DecodeJSON(f, &p) != nil {
				continue
			}
			u.mu.Lock()
			if p.Message == BellMessage {
				fmt.Fprint(u.out, "\a")
			} else {
				u.status = PresenceText(p)
				u.prompt = nil
				u.elevated = p.Mode == "elevated"
				u.drawLocked()
			}
			u.mu.Unlock()
		case frame.Chat:
			u.mu.Lock()
			u.last = "helper: " + string(f.Payload)
			u.drawLocked()
			u.mu.Unlock()
		case frame.End:
			var e frame.Ending
			_ = frame.DecodeJSON(f, &e)
			u.mu.Lock()
			u.status, u.prompt, u.elevated = "ibcm: session ended ("+e.Outcome+"); still sharing this terminal", nil, false
			u.drawLocked()
			u.mu.Unlock()
		}
	}
}
