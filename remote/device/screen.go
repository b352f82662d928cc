package device

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/ibcm-project/ibcm/internal/wire"
	"github.com/ibcm-project/ibcm/remote/frame"
	"github.com/ibcm-project/ibcm/remote/rfb"
	"github.com/ibcm-project/ibcm/remote/ticket"
)

// Screen sessions: the agent starts the device's VNC server itself, x11vnc, for this one
// session, listening only on a Unix socket in a private directory (0700, owned by the
// user x11vnc runs as): no TCP port (-rfbport 0 -rfbportv6 -1; a test checks), and a random password of the session
// besides (-passwdfile, read and removed by x11vnc at start), so nobody but the agent
// reaches the server even through that directory. x11vnc runs -shared: a joined viewer's
// leg gets a connection of its own (Screen.Dial, viewer.go). Without -forever it exits
// when the agent's connections are gone, and Close kills it anyway.
//
// Attended, x11vnc runs as the sharer on the display their `ibcm-client share --screen`
// named (DISPLAY and XAUTHORITY of its environment): running as them, it can reach no
// display they could not. Unattended (nobody present), the agent starts Xvfb on a fresh
// display (-displayfd tells which, once it is ready) and x11vnc on it, both as a uid of
// the session's own when the agent is root (DynamicScreenUID: a free uid of systemd's
// DynamicUser range that no account and no process has), as systemd's DynamicUser does:
// a VNC server parses what the helper's viewer sends, and should a flaw in it be reached
// it owns nothing and shares its uid with nobody — not with nobody (an attacker review
// found that running them as nobody let every other nobody process read the session's
// cookie and password, open its display and ptrace its servers). Its files are the
// session directory's, removed with it.

// Binaries of screen sessions, looked up in PATH when relative.
var (
	X11VNCBinary = "x11vnc"
	XvfbBinary   = "Xvfb"
)

// nogroupGID is the group x11vnc runs as for a sharer whose primary group is unknown.
const nogroupGID = 65534

// The uids an unattended screen may take: systemd's range for DynamicUser= services
// (61184–65519), which no account of a Debian system is given.
const (
	dynamicUIDFirst = 61184
	dynamicUIDLast  = 65519
)

// systemdDynamicUIDDir is where systemd records the uids its DynamicUser services hold.
const systemdDynamicUIDDir = "/run/systemd/dynamic-uid"

var dynamicUIDs struct {
	sync.Mutex
	taken map[int]bool // by a screen of this agent
}

// DynamicScreenUID picks a uid for one unattended screen: in the dynamic range, with no
// passwd entry and no process running as it, not taken by another screen of this agent.
// release gives it back once the session's processes are gone.
func DynamicScreenUID() (uid int, release func(), err error) {
	dynamicUIDs.Lock()
	defer dynamicUIDs.Unlock()
	if dynamicUIDs.taken == nil {
		dynamicUIDs.taken = map[int]bool{}
	}
	running, err := processUIDs()
	if err != nil {
		return 0, nil, err
	}
	n := dynamicUIDLast - dynamicUIDFirst + 1
	start := int(binary.BigEndian.Uint32(randomBytes(4)) % uint32(n))
	for i := range n {
		u := dynamicUIDFirst + (start+i)%n
		if dynamicUIDs.taken[u] || running[u] {
			continue
		}
		if _, err := user.LookupId(strconv.Itoa(u)); err == nil {
			continue // an account has it
		}
		if _, err := os.Lstat(filepath.Join(systemdDynamicUIDDir, strconv.Itoa(u))); err == nil {
			continue // a systemd DynamicUser service holds it
		}
		dynamicUIDs.taken[u] = true
		return u, func() {
			dynamicUIDs.Lock()
			delete(dynamicUIDs.taken, u)
			dynamicUIDs.Unlock()
		}, nil
	}
	return 0, nil, errors.New("no free uid for the screen session in 61184–65519")
}

// processUIDs returns the real, effective, saved and filesystem uids of every process.
func processUIDs() (map[int]bool, error) {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil, err
	}
	out := map[int]bool{}
	for _, e := range ents {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/status")
		if err != nil {
			continue // gone meanwhile
		}
		for _, line := range strings.Split(string(b), "\n") {
			if f, ok := strings.CutPrefix(line, "Uid:"); ok {
				for _, v := range strings.Fields(f) {
					if u, err := strconv.Atoi(v); err == nil {
						out[u] = true
					}
				}
			}
		}
	}
	return out, nil
}

func randomBytes(n int) []byte {
	b := make([]byte, n)
	_, _ = rand.Read(b) // crypto/rand does not fail
	return b
}

// ScreenGeometry is the size of an unattended session's Xvfb display.
var ScreenGeometry = "1280x800x24"

// KindClipboard is the Kind of a ConsentPrompt about the helper's clipboard text.
const KindClipboard = "clipboard"

// ErrNoDisplay is the error of a screen session whose sharer shares no display.
var ErrNoDisplay = errors.New("no display to share: the sharer must run `ibcm-client share --screen` in their X session")

// CodeNoDisplay is the refusal code of ErrNoDisplay.
const CodeNoDisplay = "screen_no_display"

var displayRE = regexp.MustCompile(`^:[0-9]{1,4}(\.[0-9]{1,2})?$`)

// CheckDisplay validates a display a share client names: a local X display only (":0",
// ":1.0"), and an absolute XAUTHORITY path when one is given.
func CheckDisplay(display, xauthority string) error {
	if !displayRE.MatchString(display) {
		return fmt.Errorf("display %q: want a local display such as :0", display)
	}
	if xauthority != "" && (!filepath.IsAbs(xauthority) || len(xauthority) > 4096 || strings.ContainsRune(xauthority, 0)) {
		return fmt.Errorf("xauthority %q: want an absolute path", xauthority)
	}
	return nil
}

// ScreenSpec is the display a screen session shares.
type ScreenSpec struct {
	Display    string // ":0"; empty starts Xvfb on a fresh display
	XAuthority string
	// As is the account x11vnc runs as when the agent is root and it is not root (the
	// sharer); nil runs it as the agent.
	As *Account
	// Dir is where the private directory is made (os.TempDir when empty).
	Dir string
	// Log receives x11vnc's and Xvfb's output (discarded when nil).
	Log io.Writer
	// Systemd, when set, starts an attended session's x11vnc as a transient service named
	// Unit (systemd-run), outside the agent unit's sandbox: ProtectHome and PrivateTmp would
	// hide the sharer's XAUTHORITY and X socket from a child of the agent. Dir must then be
	// visible outside the sandbox too (the agent's runtime directory).
	Systemd *SystemdShells
	Unit    string
}

// Screen is a running VNC server of one session, and the agent's connection to it.
type Screen struct {
	Conn    net.Conn
	Init    rfb.ServerInit
	Display string
	dir     string
	// sock, password and serverUID reach x11vnc again (Dial): it runs -shared, and the
	// password stays in the agent's memory only (x11vnc removed its file at start).
	sock      string
	password  string
	serverUID int
	procs     []*exec.Cmd
	waits     []chan struct{}
	closers   []io.Closer
	stop      func() // stops x11vnc's transient unit
	uid       int    // an unattended screen's own uid (DynamicScreenUID), given back by release
	release   func()
}

// StartScreen starts x11vnc (and Xvfb when spec has no display), connects to it and runs
// the RFB handshake. ctx bounds the start only.
func StartScreen(ctx context.Context, spec ScreenSpec) (_ *Screen, err error) {
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	s := &Screen{Display: spec.Display}
	defer func() {
		if err != nil {
			s.Close()
		}
	}()
	s.dir, err = os.MkdirTemp(spec.Dir, "ibcm-screen-")
	if err != nil {
		return nil, fmt.Errorf("screen session directory: %w", err)
	}
	if spec.Display == "" && spec.As == nil && os.Geteuid() == 0 {
		// Xvfb and x11vnc of an unattended screen: a uid of their own (see the package doc).
		uid, release, err := DynamicScreenUID()
		if err != nil {
			return nil, fmt.Errorf("the uid of an unattended screen: %w", err)
		}
		s.uid, s.release = uid, release
		spec.As = &Account{UID: uid, GID: uid, Name: fmt.Sprintf("ibcm-screen-%d", uid), Home: s.dir}
	}
	if spec.As != nil && spec.As.UID != 0 && spec.As.GID == 0 {
		// A sharer the session found no passwd entry for has GID 0: not x11vnc's group.
		a := *spec.As
		a.GID = nogroupGID
		spec.As = &a
	}
	// x11vnc's socket must be served by this account: its directory is the sharer's, who
	// could put a symlink to another process's socket there.
	s.serverUID = os.Geteuid()
	if spec.As != nil && s.serverUID == 0 {
		s.serverUID = spec.As.UID
	}
	var cred *syscall.Credential
	if spec.As != nil && os.Geteuid() == 0 && spec.As.UID != 0 {
		// The sharer's own groups (credential), not the agent's: NoSetGroups would leave
		// x11vnc, which the sharer may ptrace, with root's supplementary groups.
		cred = credential(*spec.As)
		if err := os.Lchown(s.dir, spec.As.UID, spec.As.GID); err != nil {
			return nil, err
		}
	}
	logw := spec.Log
	if logw == nil {
		logw = io.Discard
	}
	if s.Display == "" {
		// A fresh display that only the holder of its cookie may open.
		spec.XAuthority = filepath.Join(s.dir, "Xauthority")
		if err := writeSecret(spec.XAuthority, xauthority(), cred); err != nil {
			return nil, err
		}
		if s.Display, err = s.startXvfb(ctx, spec.XAuthority, cred, logw); err != nil {
			return nil, err
		}
	}
	if s.password, err = rfb.NewPassword(nil); err != nil {
		return nil, err
	}
	pwFile := filepath.Join(s.dir, "passwd")
	if err := writeSecret(pwFile, []byte(s.password+"\n"), cred); err != nil {
		return nil, err
	}
	s.sock = filepath.Join(s.dir, "vnc.sock")
	sock := s.sock
	// -rfbport 0 alone still leaves libvncserver's IPv6 listener on 5900: -rfbportv6 -1.
	// (-localhost cannot be added: it refuses the Unix socket's clients too.)
	// -seldir recv: the device's selections are never sent to the viewer.
	args := []string{"-display", s.Display, "-unixsock", sock, "-rfbport", "0", "-rfbportv6", "-1", "-seldir", "recv",
		"-passwdfile", "rm:" + pwFile, "-shared", "-nossl", "-noipv6", "-norc", "-nocmds", "-noremote", "-quiet"}
	env := []string{"PATH=/usr/local/bin:/usr/bin:/bin", "HOME=" + s.dir}
	if spec.XAuthority != "" {
		env = append(env, "XAUTHORITY="+spec.XAuthority)
	}
	var cmd *exec.Cmd
	if spec.Systemd != nil && spec.Display != "" && spec.Unit != "" {
		cmd = s.systemdCommand(spec, args, env)
	} else {
		cmd = exec.Command(X11VNCBinary, args...)
		cmd.Env = env
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Pdeathsig: syscall.SIGKILL, Credential: cred}
	}
	cmd.Stdout, cmd.Stderr = logw, logw
	exited, err := s.start(cmd)
	if err != nil {
		return nil, fmt.Errorf("starting x11vnc: %w", err)
	}
	// Readiness: the socket accepts. x11vnc tells nothing else when it listens on no port.
	var d net.Dialer
	tick := time.NewTicker(25 * time.Millisecond)
	defer tick.Stop()
	for {
		c, err := d.DialContext(ctx, "unix", sock)
		if err == nil {
			s.Conn = c
			break
		}
		select {
		case <-exited:
			return nil, fmt.Errorf("x11vnc on display %s exited: %v", s.Display, cmd.ProcessState)
		case <-ctx.Done():
			return nil, fmt.Errorf("x11vnc on display %s: no socket: %w", s.Display, ctx.Err())
		case <-tick.C:
		}
	}
	if s.Init, err = s.handshake(ctx, s.Conn); err != nil {
		return nil, err
	}
	return s, nil
}

// handshake checks that x11vnc's account serves the socket c reached, and runs the RFB
// handshake (VNC Authentication with the session's password, a shared session), within
// ctx's deadline.
func (s *Screen) handshake(ctx context.Context, c net.Conn) (rfb.ServerInit, error) {
	if uid, _, err := peerCred(c); err != nil || uid != s.serverUID {
		return nil, fmt.Errorf("x11vnc's socket is served by uid %d, not %d (%v)", uid, s.serverUID, err)
	}
	if dl, ok := ctx.Deadline(); ok {
		_ = c.SetDeadline(dl)
	}
	init, err := rfb.Dial(c, s.password)
	if err != nil {
		return nil, fmt.Errorf("the RFB handshake with x11vnc: %w", err)
	}
	_ = c.SetDeadline(time.Time{})
	return init, nil
}

// Dial opens another connection to the session's x11vnc (it runs -shared), with its own
// RFB handshake: a joined viewer's. ctx bounds the handshake only.
func (s *Screen) Dial(ctx context.Context) (net.Conn, rfb.ServerInit, error) {
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", s.sock)
	if err != nil {
		return nil, nil, fmt.Errorf("reaching x11vnc: %w", err)
	}
	init, err := s.handshake(ctx, c)
	if err != nil {
		c.Close()
		return nil, nil, err
	}
	return c, init, nil
}

// systemdCommand is systemd-run starting x11vnc as the transient service spec.Unit, as
// spec.As; Close stops the unit.
func (s *Screen) systemdCommand(spec ScreenSpec, args, env []string) *exec.Cmd {
	run, ctl := spec.Systemd.Run, spec.Systemd.Ctl
	if run == "" {
		run = "systemd-run"
	}
	if ctl == "" {
		ctl = "systemctl"
	}
	bin := X11VNCBinary
	if p, err := exec.LookPath(bin); err == nil {
		bin = p
	}
	unit := spec.Unit + ".service"
	sargs := []string{"--unit", unit, "--quiet", "--collect", "--wait", "--service-type=exec", "-p", "KillMode=control-group"}
	if spec.As != nil {
		sargs = append(sargs, "--uid", strconv.Itoa(spec.As.UID), "--gid", strconv.Itoa(spec.As.GID))
	}
	for _, e := range env {
		sargs = append(sargs, "-E", e)
	}
	sargs = append(append(sargs, "--", bin), args...)
	s.stop = func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = exec.CommandContext(ctx, ctl, "stop", unit).Run()
	}
	cmd := exec.Command(run, sargs...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	return cmd
}

// start starts cmd and returns a channel closed when it has exited.
func (s *Screen) start(cmd *exec.Cmd) (chan struct{}, error) {
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	s.procs = append(s.procs, cmd)
	s.waits = append(s.waits, done)
	return done, nil
}

func (s *Screen) startXvfb(ctx context.Context, xauth string, cred *syscall.Credential, logw io.Writer) (string, error) {
	r, w, err := os.Pipe()
	if err != nil {
		return "", err
	}
	s.closers = append(s.closers, r) // open while Xvfb runs: it fails on a closed pipe
	cmd := exec.Command(XvfbBinary, "-displayfd", "3", "-screen", "0", ScreenGeometry, "-nolisten", "tcp", "-noreset", "-auth", xauth)
	cmd.ExtraFiles = []*os.File{w}
	cmd.Stdout, cmd.Stderr = logw, logw
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Pdeathsig: syscall.SIGKILL, Credential: cred}
	exited, err := s.start(cmd)
	w.Close()
	if err != nil {
		return "", fmt.Errorf("starting Xvfb: %w", err)
	}
	got := make(chan string, 1)
	go func() {
		d, err := readDisplayFD(r)
		if err != nil {
			d = ""
		}
		got <- d
	}()
	select {
	case d := <-got:
		if d == "" {
			return "", errors.New("Xvfb did not start")
		}
		return ":" + d, nil
	case <-exited:
		return "", errors.New("Xvfb exited at start")
	case <-ctx.Done():
		return "", fmt.Errorf("Xvfb: %w", ctx.Err())
	}
}

// Close closes the connection, stops x11vnc and Xvfb, and removes the directory.
func (s *Screen) Close() error {
	if s.Conn != nil {
		s.Conn.Close()
	}
	if s.stop != nil {
		s.stop()
	}
	for i := len(s.procs) - 1; i >= 0; i-- {
		_ = s.procs[i].Process.Signal(syscall.SIGTERM)
		select {
		case <-s.waits[i]:
		case <-time.After(3 * time.Second):
			_ = s.procs[i].Process.Kill()
			<-s.waits[i]
		}
	}
	for _, c := range s.closers {
		c.Close()
	}
	if s.release != nil {
		killUID(s.uid) // whatever else ran as the session's uid (Xvfb's xkbcomp, …)
		s.release()
		s.release = nil
	}
	if s.dir != "" {
		return os.RemoveAll(s.dir)
	}
	return nil
}

// killUID kills every process whose real or effective uid is uid.
func killUID(uid int) {
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/status")
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n") {
			if f, ok := strings.CutPrefix(line, "Uid:"); ok {
				if v := strings.Fields(f); len(v) >= 2 && (v[0] == strconv.Itoa(uid) || v[1] == strconv.Itoa(uid)) {
					_ = syscall.Kill(pid, syscall.SIGKILL)
				}
			}
		}
	}
}

// writeSecret writes a 0600 file for the account of cred (the agent's when nil).
// The directory may belong to that account already: the file must be new (O_EXCL) and not
// a symlink (O_NOFOLLOW), and is chowned by its descriptor, so a name the account planted
// there makes the root agent neither write nor chown anything else.
func writeSecret(path string, data []byte, cred *syscall.Credential) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		return err
	}
	if cred != nil {
		if err := f.Chown(int(cred.Uid), int(cred.Gid)); err != nil {
			f.Close()
			return err
		}
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// xauthority is an Xauthority file's content with one random MIT-MAGIC-COOKIE-1 for any
// display (family FamilyWild), for the Xvfb of an unattended session and its x11vnc.
func xauthority() []byte {
	cookie := make([]byte, 16)
	_, _ = rand.Read(cookie) // crypto/rand does not fail
	var b []byte
	field := func(p []byte) { b = binary.BigEndian.AppendUint16(b, uint16(len(p))); b = append(b, p...) }
	b = binary.BigEndian.AppendUint16(b, 0xffff) // FamilyWild
	field(nil)                                   // address
	field(nil)                                   // display number: any
	field([]byte("MIT-MAGIC-COOKIE-1"))
	field(cookie)
	return b
}

// startScreen starts the session's VNC server and bridges it: its ServerInit and then
// everything it sends go to the helper in Data frames; the helper's Data frames go
// through the filter (rfb.Filter, by the mode in force) to the server.
func (s *session) startScreen() error {
	spec := ScreenSpec{Dir: s.h.c.ScreenDir, Log: s.log.With().Str("component", "x11vnc").Logger(),
		Systemd: s.h.c.ScreenSystemd, Unit: "ibcm-" + s.t.Session[:12] + "-screen"}
	if s.sharerUID >= 0 {
		s.detach = s.h.hub.attach(s.sharerUID, func(from *shareClient, f frame.Frame) {
			s.post(event{src: fromSharer, f: f, client: from})
		})
	}
	if s.t.Mode != ticket.ModeUnattended {
		owner := s.h.hub.displayOf(s.sharerUID)
		if owner == nil {
			return ErrNoDisplay
		}
		spec.Display, spec.XAuthority = owner.display, owner.xauthority
		s.screenOwner = owner
		a := s.sharer
		spec.As = &a
	}
	sc, err := StartScreen(s.ctx, spec)
	if err != nil {
		return fmt.Errorf("starting the screen: %w", err)
	}
	s.screen = sc
	s.log.Info().Str("display", sc.Display).Msg("screen session: x11vnc started")
	s.bytesOut.Add(int64(len(sc.Init)))
	s.sendHelper(frame.Data, sc.Init)
	s.screenIn = &rfb.Filter{Dst: sc.Conn, Mode: func() rfb.Mode { // called in the loop
		if s.mode == ticket.ModeView {
			return rfb.View
		}
		return rfb.Control
	}, Clipboard: s.clipboard}
	go func() {
		buf := make([]byte, frame.MaxData)
		for {
			n, err := sc.Conn.Read(buf)
			if n > 0 {
				s.bytesOut.Add(int64(n))
				s.sendHelper(frame.Data, buf[:n])
			}
			if err != nil {
				s.post(event{src: fromScreen, err: io.EOF})
				return
			}
		}
	}()
	return nil
}

// screenEnded ends a screen session: the filter refused the helper's message, the server's
// connection failed or closed.
func (s *session) screenEnded(err error) {
	if errors.Is(err, rfb.ErrForbidden) || errors.Is(err, rfb.ErrTooLarge) {
		s.log.Warn().Err(err).Msg("the helper's viewer sent a message the screen filter refuses")
		s.end(wire.OutcomeFailed, err.Error())
		return
	}
	s.end(wire.OutcomeCompleted, "the screen's VNC server closed")
}

// readDisplayFD reads the display number an X server writes to its -displayfd, up to its
// newline.
func readDisplayFD(r io.Reader) (string, error) {
	var b []byte
	one := make([]byte, 1)
	for len(b) < 8 {
		if _, err := r.Read(one); err != nil {
			return "", fmt.Errorf("reading the display number: %w", err)
		}
		if one[0] == '\n' {
			break
		}
		b = append(b, one[0])
	}
	if _, err := strconv.Atoi(string(b)); err != nil {
		return "", fmt.Errorf("display number %q", b)
	}
	return string(b), nil
}

// clipboard decides, in the loop, whether the helper's clipboard text (control mode) goes
// to the device now: yes without prompt_clipboard; otherwise the sharer is asked (one
// question at a time) and the text goes once they accept, if control is still in force.
func (s *session) clipboard(text []byte) bool {
	if !s.p.RC.PromptClipboard {
		return true
	}
	if s.sharerUID < 0 || s.asking {
		s.sendHelperJSON(frame.Status, frame.Presence{Session: s.t.Session, Mode: s.mode, Message: "clipboard text dropped: nobody at the device can accept it now"})
		return false
	}
	s.asking = true
	text = append([]byte(nil), text...)
	cp := frame.ConsentPrompt{Session: s.t.Session, Helper: s.peer(s.mode), Mode: s.mode, Kind: KindClipboard,
		Reason: fmt.Sprintf("%d bytes of text", len(text)), Timeout: int(s.consentTimeout() / time.Second)}
	go func() {
		ctx, cancel := context.WithTimeout(s.ctx, s.consentTimeout())
		defer cancel()
		ans := s.h.hub.ask(ctx, s.sharerUID, cp)
		s.post(event{src: fromConsent, mode: KindClipboard, answer: ans, clip: text})
	}()
	return false
}

// clipboardAnswer is the sharer's answer about clipboard text: accepted, it goes to the
// server as a ClientCutText, while control is in force.
func (s *session) clipboardAnswer(e event) {
	s.asking = false
	if e.answer != "accepted" || s.screen == nil || s.mode == ticket.ModeView {
		s.sendHelperJSON(frame.Status, frame.Presence{Session: s.t.Session, Mode: s.mode, Message: "clipboard text not accepted (" + e.answer + ")"})
		return
	}
	m := binary.BigEndian.AppendUint32([]byte{rfb.MsgClientCutText, 0, 0, 0}, uint32(len(e.clip)))
	if _, err := s.screen.Conn.Write(append(m, e.clip...)); err != nil {
		s.screenEnded(err)
	}
}
