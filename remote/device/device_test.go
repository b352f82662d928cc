package device

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"io"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ibcm-project/ibcm/internal/peertest"
	"github.com/ibcm-project/ibcm/internal/wire"
	"github.com/ibcm-project/ibcm/remote/e2e"
	"github.com/ibcm-project/ibcm/remote/frame"
	"github.com/ibcm-project/ibcm/remote/recording"
	"github.com/ibcm-project/ibcm/remote/ticket"
)

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func waitFor(t *testing.T, what string, f func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		if f() {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("timed out waiting for %s", what)
}

func waitText(t *testing.T, b *syncBuffer, want string) {
	t.Helper()
	waitFor(t, strconv.Quote(want), func() bool { return strings.Contains(b.String(), want) })
}

// An unattended session: a new root shell; control passes the helper's keys, view drops
// them; the end is reported with its bytes, logged locally, and the recording sealed to
// the audit key and uploaded.
func TestUnattendedViewDropsInputControlPasses(t *testing.T) {
	rc := defaultRC()
	rc.AllowUnattended, rc.PromptUser, rc.RecordTerminal = true, false, true
	e := newEnv(t, rc)
	priv, pub, err := recording.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	e.policy.AuditKey = pub
	signed, tk := e.ticketFor(ticket.ModeUnattended, ticket.ModeView, ticket.ModeControl, ticket.ModeElevated, ticket.ModeUnattended)
	if err := e.host.Request(context.Background(), signed); err != nil {
		t.Fatal(err)
	}
	h, err := e.connect(e.alice)
	if err != nil {
		t.Fatal(err)
	}
	if st := e.rep.wait(t, wire.ReportStarted); st.Transport != wire.TransportRelay {
		t.Errorf("started %+v", st)
	}
	if h.g.Terminal != TerminalNewShell || h.g.Mode != ticket.ModeUnattended {
		t.Errorf("greeting %+v", h.g)
	}
	h.send(frame.Data, []byte("echo CTL$((1+1))\r"))
	h.waitOutput("CTL2")
	if mc := h.mode(ticket.ModeView); !mc.Granted || mc.Mode != ticket.ModeView {
		t.Fatalf("view: %+v", mc)
	}
	h.send(frame.Data, []byte("echo MARKER$((2+3))\r"))
	if mc := h.mode(ticket.ModeControl); !mc.Granted {
		t.Fatalf("control: %+v", mc)
	}
	h.send(frame.Data, []byte("echo DONE$((3+4))\r"))
	h.waitOutput("DONE7")
	if strings.Contains(h.output(), "MARKER") {
		t.Errorf("a key typed in view mode reached the shell: %q", h.output())
	}
	h.sendJSON(frame.Chat, nil)
	h.send(frame.Chat, []byte("chat marker ✓"))
	h.sendJSON(frame.End, frame.Ending{Outcome: wire.OutcomeCompleted})
	end := e.rep.wait(t, wire.ReportEnded)
	if end.Outcome != wire.OutcomeCompleted || end.BytesIn == 0 || end.BytesOut == 0 {
		t.Errorf("ended %+v", end)
	}
	var sealed []byte
	select {
	case sealed = <-e.uploads:
	case <-time.After(10 * time.Second):
		t.Fatal("no recording uploaded")
	}
	cast, err := recording.Open(priv, tk.Session, sealed)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(cast, []byte(`{"env"`)) && !bytes.Contains(cast[:bytes.IndexByte(cast, '\n')], []byte(`"version":2`)) {
		t.Errorf("not asciicast v2: %.200s", cast)
	}
	if !bytes.Contains(cast, []byte("DONE7")) || !bytes.Contains(cast, []byte(`"m","alice: chat marker ✓"`)) {
		t.Errorf("recording lacks the output or the chat marker: %s", cast)
	}
	entries, err := ReadLog(e.dir)
	if err != nil || len(entries) != 1 || entries[0].Outcome != wire.OutcomeCompleted || entries[0].Session != tk.Session || entries[0].BytesOut == 0 {
		t.Fatalf("session log %+v %v", entries, err)
	}
	if fi, _ := os.Stat(filepath.Join(e.dir, SessionLogFile)); fi.Mode().Perm() != 0o600 {
		t.Errorf("session log mode %v", fi.Mode())
	}
	waitFor(t, "the uploaded recording to leave the spool", func() bool {
		_, err := os.Stat(filepath.Join(e.dir, RecordingsDir, tk.Session+".sealed"))
		return errors.Is(err, os.ErrNotExist)
	})
}

// The sharer's `ibcm-client share` on a real PTY: consent through its status line, view
// drops the helper's keys, the sharer's shell is mirrored, each escalation asks again,
// the elevated shell shows on the sharer's terminal and every process of it ends with
// the session.
func TestSharedTerminal(t *testing.T) {
	e := newEnv(t, defaultRC())
	inR, inW := io.Pipe()
	defer inW.Close()
	out := &syncBuffer{}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	shareDone := make(chan error, 1)
	go func() {
		shareDone <- Share(ctx, ShareOptions{Socket: e.sock, Shell: "/bin/sh", In: inR, Out: out, Size: func() (uint16, uint16) { return 24, 80 }})
	}()
	waitText(t, out, "connected to the ibcm agent")
	signed, _ := e.ticketFor(ticket.ModeView, ticket.ModeView, ticket.ModeControl, ticket.ModeElevated)
	if err := e.host.Request(context.Background(), signed); err != nil {
		t.Fatal(err)
	}
	e.rep.wait(t, wire.ReportConsentAsked)
	waitText(t, out, "allow view access for")
	inW.Write([]byte{EscapeKey, 'y'})
	e.rep.wait(t, wire.ReportAccepted)
	h, err := e.connect(e.alice)
	if err != nil {
		t.Fatal(err)
	}
	if h.g.Terminal != TerminalShared || h.g.Sharer != "root" || h.g.SharerName != "Rosa Root" {
		t.Errorf("greeting %+v", h.g)
	}
	waitText(t, out, "Alice Helper (alice), Help desk, Corp [view]")
	h.send(frame.Data, []byte("echo MARKER$((2+3))\r"))
	inW.Write([]byte("echo SHARER$((3+4))\r"))
	h.waitOutput("SHARER7")

	h.sendJSON(frame.Mode, frame.ModeChange{Mode: ticket.ModeControl})
	e.rep.wait(t, wire.ReportConsentAsked)
	waitText(t, out, "allow control access for")
	inW.Write([]byte{EscapeKey, 'y'})
	var mc frame.ModeChange
	_ = frame.DecodeJSON(h.next(frame.Mode), &mc)
	if !mc.Granted || mc.Mode != ticket.ModeControl {
		t.Fatalf("control: %+v", mc)
	}
	h.send(frame.Data, []byte("echo CTL$((4+5))\r"))
	h.waitOutput("CTL9")
	if strings.Contains(h.output(), "MARKER") || strings.Contains(out.String(), "MARKER") {
		t.Errorf("a key typed in view mode reached the shell")
	}

	// The sharer chats from the status line, and drops the helper to view.
	inW.Write([]byte{EscapeKey, 'c'})
	inW.Write([]byte("héllo 你好\r"))
	if f := h.next(frame.Chat); string(f.Payload) != "héllo 你好" {
		t.Errorf("the sharer's chat arrived as %q", f.Payload)
	}
	inW.Write([]byte{EscapeKey, 'v'})
	_ = frame.DecodeJSON(h.next(frame.Mode), &mc)
	if !mc.Granted || mc.Mode != ticket.ModeView {
		t.Fatalf("the sharer's drop to view: %+v", mc)
	}

	h.sendJSON(frame.Mode, frame.ModeChange{Mode: ticket.ModeElevated})
	waitText(t, out, "allow elevated access for")
	inW.Write([]byte{EscapeKey, 'y'})
	_ = frame.DecodeJSON(h.next(frame.Mode), &mc)
	if !mc.Granted || mc.Mode != ticket.ModeElevated {
		t.Fatalf("elevated: %+v", mc)
	}
	h.send(frame.Data, []byte("sleep 1000 & echo P1=$!; (setsid sleep 1001 & echo P2=$!; sleep 1002 & echo P3=$!)\r"))
	h.waitOutput(`P3=\d+`)
	waitFor(t, "the sharer to see the elevated shell", func() bool { return regexp.MustCompile(`P3=\d+`).MatchString(out.String()) })
	var pids []int
	for _, m := range regexp.MustCompile(`P\d=(\d+)`).FindAllStringSubmatch(h.output(), -1) {
		n, _ := strconv.Atoi(m[1])
		pids = append(pids, n)
	}
	if len(pids) != 3 {
		t.Fatalf("pids %v in %q", pids, h.output())
	}
	for _, p := range pids {
		if !alive(p) {
			t.Fatalf("pid %d is not running", p)
		}
	}
	inW.Write([]byte{EscapeKey, 'e'}) // the sharer ends it
	if end := e.rep.wait(t, wire.ReportEnded); end.Outcome != wire.OutcomeCompleted || !strings.Contains(end.Message, "sharer") {
		t.Errorf("ended %+v", end)
	}
	waitFor(t, "every process of the elevated shell to end", func() bool {
		for _, p := range pids {
			if alive(p) {
				return false
			}
		}
		return true
	})
	h.next(frame.End)
}

// alive: the process exists and is not a zombie.
func alive(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	i := bytes.LastIndexByte(b, ')')
	return i > 0 && len(b) > i+2 && b[i+2] != 'Z'
}

// A watcher (consent --watch) who denies; then nobody answers in time.
func TestConsentDenyAndTimeout(t *testing.T) {
	rc := defaultRC()
	rc.ConsentTimeout = "400ms"
	e := newEnv(t, rc)
	inW, out, _ := e.watch(t)
	signed, _ := e.ticketFor(ticket.ModeControl, ticket.ModeView, ticket.ModeControl)
	if err := e.host.Request(context.Background(), signed); err != nil {
		t.Fatal(err)
	}
	waitText(t, out, "Alice Helper (alice), Help desk, Corp asks for a remote control session")
	inW.Write([]byte("n\n"))
	if r := e.rep.wait(t, wire.ReportDenied); r.Outcome != wire.OutcomeDenied || r.Sharer != "root" {
		t.Errorf("denied %+v", r)
	}
	signed, _ = e.ticketFor(ticket.ModeControl, ticket.ModeView, ticket.ModeControl)
	if err := e.host.Request(context.Background(), signed); err != nil {
		t.Fatal(err)
	}
	if r := e.rep.wait(t, wire.ReportConsentTimeout); r.Outcome != wire.OutcomeConsentTimeout {
		t.Errorf("timeout %+v", r)
	}
	select {
	case id := <-e.relayed:
		t.Errorf("a relay leg was dialled (%s) for a session not consented", id)
	default:
	}
	waitFor(t, "the session log", func() bool { en, _ := ReadLog(e.dir); return len(en) == 2 })
	entries, _ := ReadLog(e.dir)
	if len(entries) != 2 || entries[0].Outcome != wire.OutcomeDenied || entries[1].Outcome != wire.OutcomeConsentTimeout {
		t.Errorf("session log %+v", entries)
	}
}

// Nobody present: the logged-in terminals are told, a watcher who starts then answers,
// the session runs a shell as the watcher, and chat in Chinese and Arabic arrives intact
// both ways.
func TestNobodyPresentThenWatcherAndChat(t *testing.T) {
	rc := defaultRC()
	rc.ConsentTimeout = "20s"
	e := newEnv(t, rc)
	signed, _ := e.ticketFor(ticket.ModeControl, ticket.ModeView, ticket.ModeControl)
	if err := e.host.Request(context.Background(), signed); err != nil {
		t.Fatal(err)
	}
	select {
	case n := <-e.notices:
		if !strings.Contains(n, "ibcm-client share") {
			t.Errorf("notice %q", n)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no notice to the logged-in terminals")
	}
	inW, out, _ := e.watch(t) // present only now
	waitText(t, out, "asks for a remote control session")
	inW.Write([]byte("y\n"))
	h, err := e.connect(e.alice)
	if err != nil {
		t.Fatal(err)
	}
	if h.g.Terminal != TerminalNewShell || h.g.Sharer != "root" {
		t.Errorf("greeting %+v", h.g)
	}
	const zh, ar = "你好，世界！请检查打印机。", "مرحبا بالعالم، هل يمكنك المساعدة؟"
	h.send(frame.Chat, []byte(zh+" "+ar))
	waitText(t, out, "chat: "+zh+" "+ar)
	inW.Write([]byte("/chat " + ar + " " + zh + "\n"))
	if f := h.next(frame.Chat); string(f.Payload) != ar+" "+zh {
		t.Errorf("chat arrived as %q", f.Payload)
	}
	e.host.End(h.g.Session, wire.OutcomeFailed, "the helper was disabled") // session-ended
	if f := h.next(frame.End); !bytes.Contains(f.Payload, []byte("disabled")) || !bytes.Contains(f.Payload, []byte(`"outcome":"failed"`)) {
		t.Errorf("end %s", f.Payload)
	}
	e.rep.wait(t, wire.ReportEnded)
}

// Another local user cannot answer the sharer's question: the consent client runs under
// uid 65534 and is refused with its own code, logged and audited.
func TestAnotherUsersAnswerRefused(t *testing.T) {
	if os.Getuid() != 0 {
		peertest.Missing(t, "needs root to run a client as another uid")
	}
	e := newEnv(t, defaultRC())
	_, out, _ := e.watch(t)
	signed, tk := e.ticketFor(ticket.ModeControl, ticket.ModeView, ticket.ModeControl)
	if err := e.host.Request(context.Background(), signed); err != nil {
		t.Fatal(err)
	}
	waitText(t, out, "asks for a remote control session")

	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(filepath.Dir(e.sock), "device.test")
	b, err := os.ReadFile(self)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, b, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin)
	cmd.Env = []string{"IBCM_TEST_ANSWER=" + e.sock + ";" + tk.Session}
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	got, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%v: %s", err, got)
	}
	if !strings.Contains(string(got), "code="+CodeWrongUser) {
		t.Fatalf("the other user's answer: %s", got)
	}
	if !strings.Contains(e.auditText(), CodeWrongUser) {
		t.Errorf("not audited: %s", e.auditText())
	}
	// The sharer's own answer still counts.
	if code, err := Answer(context.Background(), e.sock, tk.Session, true); err != nil || code != "accepted" {
		t.Fatalf("the sharer's answer: %s %v", code, err)
	}
	e.rep.wait(t, wire.ReportAccepted)
}

// Tickets the agent refuses, each with its own code, reported and logged: replayed (also
// after a restart), expired, for another device, signed by something that is not an MP of
// this site.
func TestTicketsRefused(t *testing.T) {
	rc := defaultRC()
	rc.ConsentTimeout = "100ms"
	e := newEnv(t, rc)
	ctx := context.Background()
	signed, _ := e.ticketFor(ticket.ModeView, ticket.ModeView)
	if err := e.host.Request(ctx, signed); err != nil {
		t.Fatal(err)
	}
	check := func(name, signed, code string, h *Host) {
		t.Helper()
		err := h.Request(ctx, signed)
		if err == nil || ticket.Code(err) != code {
			t.Errorf("%s: %v, want %s", name, err, code)
			return
		}
		r := e.rep.wait(t, wire.ReportRefused)
		if r.Code != code || r.Outcome != wire.OutcomeRefused {
			t.Errorf("%s: reported %+v", name, r)
		}
	}
	check("replay", signed, "ticket_replayed", e.host)
	again, err := New(e.host.c) // a restarted agent on the same state directory
	if err != nil {
		t.Fatal(err)
	}
	check("replay after a restart", signed, "ticket_replayed", again)

	_, tk := e.ticketFor(ticket.ModeView, ticket.ModeView)
	tk.ID, tk.IssuedAt, tk.ExpiresAt = ticket.NewID(), time.Now().Add(-20*time.Minute), time.Now().Add(-10*time.Minute)
	check("expired", e.sign(tk, e.mp), "ticket_expired", e.host)
	_, tk = e.ticketFor(ticket.ModeView, ticket.ModeView)
	tk.Device = "dev-2"
	check("other device", e.sign(tk, e.mp), "ticket_other_device", e.host)
	_, tk = e.ticketFor(ticket.ModeView, ticket.ModeView)
	check("signed by a device", e.sign(tk, e.dev), "ticket_signer", e.host)
	check("signed by a user", e.sign(tk, e.alice), "ticket_signer", e.host)
	other := newPKI(t, "another root")
	otherMP, _ := other.leaf(t, "urn:ibcm:site:"+site+":role:mp", x509.ExtKeyUsageServerAuth)
	check("signed by another CA's MP", e.sign(tk, otherMP), "ticket_signer", e.host)
	if err := e.host.Request(ctx, "v1.garbage"); ticket.Code(err) != "ticket_malformed" {
		t.Errorf("garbage: %v", err)
	}
	entries, _ := ReadLog(e.dir)
	codes := map[string]bool{}
	for _, en := range entries {
		codes[en.Code] = true
	}
	for _, c := range []string{"ticket_replayed", "ticket_expired", "ticket_other_device", "ticket_signer", "ticket_malformed"} {
		if !codes[c] {
			t.Errorf("session log lacks %s: %+v", c, entries)
		}
		if !strings.Contains(e.auditText(), c) {
			t.Errorf("audit lacks %s", c)
		}
	}
}

// The device's policy is enforced again on the device.
func TestPolicyRefusals(t *testing.T) {
	rc := defaultRC()
	rc.AccessLevel = "view"
	e := newEnv(t, rc)
	signed, _ := e.ticketFor(ticket.ModeControl, ticket.ModeView, ticket.ModeControl)
	if err := e.host.Request(context.Background(), signed); err == nil {
		t.Fatal("control accepted with access level view")
	}
	if r := e.rep.wait(t, wire.ReportRefused); r.Code != CodePolicyMode {
		t.Errorf("%+v", r)
	}
	signed, _ = e.ticketFor(ticket.ModeUnattended, ticket.ModeUnattended)
	_ = e.host.Request(context.Background(), signed)
	if r := e.rep.wait(t, wire.ReportRefused); r.Code != CodeNoUnattended {
		t.Errorf("%+v", r)
	}
	e.policy.RC.RecordTerminal = true // and no audit key
	signed, _ = e.ticketFor(ticket.ModeView, ticket.ModeView)
	_ = e.host.Request(context.Background(), signed)
	if r := e.rep.wait(t, wire.ReportRefused); r.Code != CodeNoAuditKey {
		t.Errorf("%+v", r)
	}
	e.policy.RC.Enabled = false
	signed, _ = e.ticketFor(ticket.ModeView, ticket.ModeView)
	_ = e.host.Request(context.Background(), signed)
	if r := e.rep.wait(t, wire.ReportRefused); r.Code != CodePolicyDisabled {
		t.Errorf("%+v", r)
	}
}

// A helper who presents another key than the one the session was started with, or a
// revoked certificate, is refused by the end-to-end TLS.
func TestHelperWithAnotherKeyOrRevokedRefused(t *testing.T) {
	rc := defaultRC()
	rc.AllowUnattended, rc.PromptUser = true, false
	e := newEnv(t, rc)
	signed, _ := e.ticketFor(ticket.ModeUnattended, ticket.ModeUnattended)
	if err := e.host.Request(context.Background(), signed); err != nil {
		t.Fatal(err)
	}
	otherKey, _ := e.pki.leaf(t, "urn:ibcm:user:alice", x509.ExtKeyUsageClientAuth)
	if _, err := e.connect(otherKey); err == nil {
		// TLS 1.3: the client may finish before the server refuses; the session must not start.
		t.Log("the helper's handshake finished; the device refuses after it")
	}
	if r := e.rep.wait(t, wire.ReportRefused); r.Code != CodeE2E || !strings.Contains(r.Message, "another key") {
		t.Errorf("%+v", r)
	}

	// The CRL: alice's certificate revoked.
	crl := e2e.NewCRL(e.pki.root, filepath.Join(e.dir, CRLFile))
	der, err := x509.CreateRevocationList(rand.Reader, &x509.RevocationList{Number: big.NewInt(2), ThisUpdate: time.Now().Add(-time.Minute), NextUpdate: time.Now().Add(time.Hour),
		RevokedCertificateEntries: []x509.RevocationListEntry{{SerialNumber: e.alice.Leaf.SerialNumber, RevocationTime: time.Now()}}}, e.pki.root, e.pki.key)
	if err != nil {
		t.Fatal(err)
	}
	if err := crl.Update(der); err != nil {
		t.Fatal(err)
	}
	if !crl.Revoked(e.alice.Leaf) || crl.Revoked(e.dev.Leaf) {
		t.Fatal("CRL lookup wrong")
	}
	if err := e2e.NewCRL(e.pki.root, filepath.Join(e.dir, CRLFile)); !err.Revoked(e.alice.Leaf) {
		t.Error("the kept CRL was not loaded")
	}
	other := newPKI(t, "other")
	bad, _ := x509.CreateRevocationList(rand.Reader, &x509.RevocationList{Number: big.NewInt(3), ThisUpdate: time.Now(), NextUpdate: time.Now().Add(time.Hour)}, other.root, other.key)
	if err := crl.Update(bad); err == nil {
		t.Error("a CRL of another CA was accepted")
	}
	e.host.c.Revoked = crl.Revoked
	signed, _ = e.ticketFor(ticket.ModeUnattended, ticket.ModeUnattended)
	if err := e.host.Request(context.Background(), signed); err != nil {
		t.Fatal(err)
	}
	_, _ = e.connect(e.alice)
	if r := e.rep.wait(t, wire.ReportRefused); r.Code != CodeE2E || !strings.Contains(r.Message, "revoked") {
		t.Errorf("%+v", r)
	}
}

// share and consent trust the socket only when root owns it and its directory.
func TestCheckSocket(t *testing.T) {
	if os.Getuid() != 0 {
		peertest.Missing(t, "needs root to chown")
	}
	dir, err := os.MkdirTemp("", "ibcm-sock-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	_ = os.Chmod(dir, 0o755)
	path := filepath.Join(dir, "share.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if err := CheckSocket(path); err != nil {
		t.Fatalf("root's socket: %v", err)
	}
	if err := os.Chown(path, 65534, 65534); err != nil {
		t.Fatal(err)
	}
	if err := CheckSocket(path); !errors.Is(err, ErrSocketOwner) {
		t.Errorf("another user's socket: %v", err)
	}
	_ = os.Chown(path, 0, 0)
	_ = os.Chmod(dir, 0o777)
	if err := CheckSocket(path); !errors.Is(err, ErrSocketOwner) {
		t.Errorf("a world-writable directory: %v", err)
	}
	_ = os.Chmod(dir, 0o755)
	f := filepath.Join(dir, "file")
	_ = os.WriteFile(f, nil, 0o644)
	if err := CheckSocket(f); !errors.Is(err, ErrSocketOwner) {
		t.Errorf("a plain file: %v", err)
	}
}

// A bad hello on the share socket is answered with an End and the connection closed.
func TestShareSocketBadInput(t *testing.T) {
	e := newEnv(t, defaultRC())
	for _, in := range [][]byte{
		frame.Append(nil, frame.Hello, []byte(`{"terminal":"root-please"}`)),
		frame.Append(nil, frame.Data, []byte("x")),
		{0xff, 0, 0, 0, 0},
	} {
		c, err := net.Dial("unix", e.sock)
		if err != nil {
			t.Fatal(err)
		}
		c.Write(in)
		f, err := frame.NewReader(c).Next()
		if err != nil || f.Type != frame.End {
			t.Errorf("%x: %v %v", in, f.Type, err)
		}
		c.Close()
	}
	if code, err := Answer(context.Background(), e.sock, "", true); code != CodeNoPrompt || err == nil {
		t.Errorf("an answer to nothing: %s %v", code, err)
	}
}

// A second helper joins as a viewer with a ticket of their own: they see the output,
// nothing they type reaches the shell, and they may not change the mode.
func TestViewerJoins(t *testing.T) {
	rc := defaultRC()
	rc.AllowUnattended, rc.PromptUser = true, false
	e := newEnv(t, rc)
	signed, tk := e.ticketFor(ticket.ModeUnattended, ticket.ModeView, ticket.ModeControl, ticket.ModeUnattended)
	if err := e.host.Request(context.Background(), signed); err != nil {
		t.Fatal(err)
	}
	h, err := e.connect(e.alice)
	if err != nil {
		t.Fatal(err)
	}
	e.rep.wait(t, wire.ReportStarted)
	bob, _ := e.pki.leaf(t, "urn:ibcm:user:bob", x509.ExtKeyUsageClientAuth)
	now := time.Now()
	vt := ticket.Ticket{ID: ticket.NewID(), Session: tk.Session, Device: deviceID, Helper: "bob", HelperKey: wire.PublicKeyHash(bob.Leaf),
		Card: ticket.Card{User: "bob", DisplayName: "Bob"}, Role: ticket.RoleViewer, Mode: ticket.ModeView, Modes: []string{ticket.ModeView}, MP: "mp1", IssuedAt: now, ExpiresAt: now.Add(time.Minute)}
	if err := e.host.Request(context.Background(), e.sign(vt, e.mp)); err != nil {
		t.Fatal(err)
	}
	v, err := e.connect(bob)
	if err != nil {
		t.Fatal(err)
	}
	if st := e.rep.wait(t, wire.ReportStarted); st.Ticket != vt.ID {
		t.Errorf("started %+v", st)
	}
	if v.g.Mode != ticket.ModeView {
		t.Errorf("viewer greeting %+v", v.g)
	}
	v.send(frame.Data, []byte("echo VIEWERKEYS\r"))
	if mc := v.mode(ticket.ModeControl); mc.Granted {
		t.Errorf("a viewer got control: %+v", mc)
	}
	h.send(frame.Data, []byte("echo SEEN$((6*7))\r"))
	v.waitOutput("SEEN42")
	h.waitOutput("SEEN42")
	if strings.Contains(h.output(), "VIEWERKEYS") {
		t.Error("a viewer's keys reached the shell")
	}
	v.sendJSON(frame.End, frame.Ending{Outcome: wire.OutcomeCompleted})
	if end := e.rep.wait(t, wire.ReportEnded); end.Ticket != vt.ID {
		t.Errorf("the viewer's end %+v", end)
	}
	// A viewer's ticket for a session that is not here is refused.
	vt.ID, vt.Session = ticket.NewID(), ticket.NewID()
	if err := e.host.Request(context.Background(), e.sign(vt, e.mp)); err == nil {
		t.Error("a viewer ticket for no session was accepted")
	}
	if r := e.rep.wait(t, wire.ReportRefused); r.Code != CodeNoSession {
		t.Errorf("%+v", r)
	}
}
