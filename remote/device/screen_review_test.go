package device

import (
	"bytes"
	"context"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/ibcm-project/ibcm/remote/frame"
	"github.com/ibcm-project/ibcm/remote/rfb"
	"github.com/ibcm-project/ibcm/remote/ticket"
)

// The sharer owns the screen session's directory (x11vnc runs as them and removes the
// password file), so a name in it may already be their symlink when the root agent writes
// the password there: the write must neither follow it (clobbering, say, /etc/shadow) nor
// chown its target to the sharer.
func TestWriteSecretRefusesAPlantedSymlink(t *testing.T) {
	dir := t.TempDir()
	victim := filepath.Join(dir, "victim")
	if err := os.WriteFile(victim, []byte("keep"), 0o600); err != nil {
		t.Fatal(err)
	}
	pw := filepath.Join(dir, "passwd")
	if err := os.Symlink(victim, pw); err != nil {
		t.Fatal(err)
	}
	if err := writeSecret(pw, []byte("secret\n"), &syscall.Credential{Uid: 65534, Gid: 65534}); err == nil {
		t.Error("the password was written through the sharer's symlink")
	}
	if b, _ := os.ReadFile(victim); string(b) != "keep" {
		t.Errorf("the symlink's target now holds %q", b)
	}
	fi, err := os.Stat(victim)
	if err != nil {
		t.Fatal(err)
	}
	if st := fi.Sys().(*syscall.Stat_t); int(st.Uid) != os.Geteuid() {
		t.Errorf("the symlink's target now belongs to uid %d", st.Uid)
	}
}

// x11vnc run as the sharer by a root agent keeps none of root's supplementary groups (the
// sharer could ptrace it and use them).
func TestStartScreenDropsTheAgentsGroups(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to run x11vnc as another user")
	}
	// The agent as a systemd service has root's groups; here the test process gets them.
	groups, err := syscall.Getgroups()
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Setgroups([]int{0}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = syscall.Setgroups(groups) })
	standIn(t, "#!/bin/sh\necho groups: $(id -G) >&2\nexit 3\n")
	var log bytes.Buffer
	_, err = StartScreen(context.Background(), ScreenSpec{Display: ":99", As: &Account{UID: 65534, GID: 65534}, Log: &log})
	if err == nil {
		t.Fatal("the stand-in started")
	}
	line := log.String()
	if !strings.Contains(line, "groups:") {
		t.Fatalf("the stand-in said %q (%v)", line, err)
	}
	for _, g := range strings.Fields(strings.TrimPrefix(strings.TrimSpace(line), "groups:")) {
		if g == "0" {
			t.Errorf("x11vnc as uid 65534 has root's group: %s", line)
		}
	}
}

// A sharer missing from /etc/passwd (a directory user) gets Account{GID: 0} from the
// session: x11vnc must not run with group root then either.
func TestStartScreenNeverRunsAsGroupRoot(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to run x11vnc as another user")
	}
	standIn(t, "#!/bin/sh\necho groups: $(id -G) >&2\nexit 3\n")
	var log bytes.Buffer
	_, err := StartScreen(context.Background(), ScreenSpec{Display: ":99", As: &Account{UID: 65534}, Log: &log})
	if err == nil {
		t.Fatal("the stand-in started")
	}
	line := log.String()
	if !strings.Contains(line, "groups:") {
		t.Fatalf("the stand-in said %q (%v)", line, err)
	}
	for _, g := range strings.Fields(strings.TrimPrefix(strings.TrimSpace(line), "groups:")) {
		if g == "0" {
			t.Errorf("x11vnc as uid 65534 has group root: %s", line)
		}
	}
}

// standIn installs script as X11VNCBinary, in a directory other users can read.
func standIn(t *testing.T, script string) string {
	dir, err := os.MkdirTemp("", "ibcm-standin-") // t.TempDir's parent is root's only
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	stand := filepath.Join(dir, "x11vnc")
	if err := os.WriteFile(stand, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	old := X11VNCBinary
	X11VNCBinary = stand
	t.Cleanup(func() { X11VNCBinary = old })
	return dir
}

// The socket's directory is the sharer's: in place of x11vnc's socket they can put a
// symlink to any socket, which the root agent would connect to and feed the helper's
// input. The agent checks that the server it reached runs as the account it started
// x11vnc as.
func TestStartScreenChecksTheSocketsOwner(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to run x11vnc as another user")
	}
	// A root process's socket that speaks RFB (and takes any password).
	other := filepath.Join(t.TempDir(), "root.sock")
	ln, err := net.Listen("unix", other)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	reached := make(chan struct{}, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		reached <- struct{}{}
		buf := make([]byte, 16)
		io.WriteString(c, "RFB 003.008\n")
		io.ReadFull(c, buf[:12])
		c.Write([]byte{1, rfb.SecVNCAuth})
		io.ReadFull(c, buf[:1])
		c.Write(buf[:16])
		io.ReadFull(c, buf[:16])
		c.Write([]byte{0, 0, 0, 0})
		io.ReadFull(c, buf[:1])
		c.Write(append(make([]byte, 20), 0, 0, 0, 0)) // ServerInit, empty name
		io.Copy(io.Discard, c)
	}()
	standIn(t, `#!/bin/sh
while [ $# -gt 0 ]; do
	if [ "$1" = -unixsock ]; then ln -s `+other+` "$2"; fi
	shift
done
exec sleep 30
`)
	sc, err := StartScreen(context.Background(), ScreenSpec{Display: ":99", As: &Account{UID: 65534, GID: 65534}})
	if err == nil {
		sc.Close()
		t.Fatal("the agent took a root process's socket, planted by the sharer, for x11vnc's")
	}
	t.Log(err)
}

// A screen session's request for control asks the sharer about their screen, not about a
// terminal: the prompt carries the session's kind.
func TestScreenControlPromptNamesTheScreen(t *testing.T) {
	display := startX(t)
	rc := defaultRC()
	rc.PromptUser = true
	e := newEnv(t, rc)
	c := offerDisplayConn(t, e, display)
	prompts := make(chan frame.ConsentPrompt, 4)
	go func() { // the sharer accepts everything
		r := frame.NewReader(c)
		for {
			f, err := r.Next()
			if err != nil {
				return
			}
			var p frame.ConsentPrompt
			if f.Type != frame.Prompt || frame.DecodeJSON(f, &p) != nil {
				continue
			}
			prompts <- p
			_ = frame.WriteJSON(c, frame.Answer, frame.ConsentAnswer{ID: p.ID, Accept: true})
		}
	}()
	ss := startScreen(t, e, ticket.ModeView, ticket.ModeView, ticket.ModeControl)
	if p := <-prompts; p.Kind != ticket.KindScreen {
		t.Fatalf("first prompt %+v", p)
	}
	if err := ss.s.RequestMode(ticket.ModeControl); err != nil {
		t.Fatal(err)
	}
	p := <-prompts
	if p.Mode != ticket.ModeControl || p.Kind != ticket.KindScreen {
		t.Errorf("the request for control asks %q (%+v)", PromptText(p), p)
	}
}
