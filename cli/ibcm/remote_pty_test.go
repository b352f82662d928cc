package main

import (
	"context"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ibcm-project/ibcm/internal/cliapp"
	"github.com/ibcm-project/ibcm/internal/peertest"
)

// openPTY opens a pseudo-terminal: the master (the test's side) and the slave (the
// command's terminal).
func openPTY(t *testing.T) (master, slave *os.File) {
	t.Helper()
	m, err := os.OpenFile("/dev/ptmx", os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		peertest.Missing(t, "no pseudo-terminal: "+err.Error())
	}
	if err := unix.IoctlSetPointerInt(int(m.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		t.Fatal(err)
	}
	n, err := unix.IoctlGetInt(int(m.Fd()), unix.TIOCGPTN)
	if err != nil {
		t.Fatal(err)
	}
	s, err := os.OpenFile("/dev/pts/"+strconv.Itoa(n), os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close(); m.Close() })
	return m, s
}

// screen collects what the command writes on its terminal.
type screen struct {
	mu      sync.Mutex
	buf     strings.Builder
	changed chan struct{}
}

func (s *screen) copy(f *os.File) {
	b := make([]byte, 4096)
	for {
		n, err := f.Read(b)
		s.mu.Lock()
		s.buf.Write(b[:n])
		s.mu.Unlock()
		select {
		case s.changed <- struct{}{}:
		default:
		}
		if err != nil {
			return
		}
	}
}

// wait returns once the screen shows want after mark (an offset of an earlier wait).
func (s *screen) wait(t *testing.T, mark int, want string) int {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		s.mu.Lock()
		text := s.buf.String()
		s.mu.Unlock()
		if i := strings.Index(text[mark:], want); i >= 0 {
			return mark + i + len(want)
		}
		select {
		case <-s.changed:
		case <-deadline:
			t.Fatalf("the terminal never showed %q; it shows:\n%q", want, text[mark:])
		}
	}
}

// TestRemoteStartOnATerminal drives `ibcm remote start` on a real pseudo-terminal: raw
// mode (keystrokes go out unbuffered), the Ctrl-] menu (chat in Chinese and Arabic, a mode
// request, a literal Ctrl-], the end), and a window resize followed by a Resize frame.
func TestRemoteStartOnATerminal(t *testing.T) {
	site := newRemoteSite(t)
	master, slave := openPTY(t)
	if err := unix.IoctlSetWinsize(int(slave.Fd()), unix.TIOCSWINSZ, &unix.Winsize{Row: 30, Col: 100}); err != nil {
		t.Fatal(err)
	}
	scr := &screen{changed: make(chan struct{}, 1)}
	go scr.copy(master)

	app := newApp()
	app.Reader, app.Writer, app.ErrWriter = slave, slave, slave
	done := make(chan error, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	go func() {
		done <- cliapp.Run(ctx, app, append([]string{"ibcm", "remote", "start", "kiosk", "--mode", "control"}, site.flags...))
	}()
	type_ := func(s string) {
		if _, err := master.WriteString(s); err != nil {
			t.Fatal(err)
		}
	}
	at := scr.wait(t, 0, "Ctrl-] for the menu")
	type_("ls -l")
	at = scr.wait(t, at, "ls -l") // echoed by the device, without waiting for Enter: raw mode
	type_("\x1d")
	at = scr.wait(t, at, "menu:")
	type_("t你好，世界 مرحبا بالعالمx\x7f")
	at = scr.wait(t, at, "chat> 你好，世界 مرحبا بالعالم")
	type_("\r")
	at = scr.wait(t, at, "chat: 你好，世界 مرحبا بالعالم\r\n")
	type_("\x1dc")
	at = scr.wait(t, at, "mode is now control")
	type_("\x1de")
	at = scr.wait(t, at, "elevated refused: denied")
	type_("\x1d\x1d")
	at = scr.wait(t, at, "\x1d")
	if err := unix.IoctlSetWinsize(int(slave.Fd()), unix.TIOCSWINSZ, &unix.Winsize{Row: 50, Col: 132}); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(os.Getpid(), syscall.SIGWINCH); err != nil {
		t.Fatal(err)
	}
	at = scr.wait(t, at, "resize 50x132")
	at = scr.wait(t, at, "the shared terminal is now 90x40 (this one is 132x50)")
	type_("\x1dq")
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("remote start: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the session did not end after Ctrl-] q")
	}
	scr.wait(t, at, "session ended")
	// The terminal is back in its cooked mode.
	st, err := unix.IoctlGetTermios(int(slave.Fd()), unix.TCGETS)
	if err != nil || st.Lflag&unix.ICANON == 0 || st.Lflag&unix.ECHO == 0 {
		t.Errorf("the terminal was not restored: %+v %v", st, err)
	}
}
