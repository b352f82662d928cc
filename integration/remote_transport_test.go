package integration

import (
	"bytes"
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ibcm-project/ibcm/internal/bindtest"
	"github.com/ibcm-project/ibcm/internal/wire"
	"github.com/ibcm-project/ibcm/remote/device"
)

// The transports of remote control with real binaries: direct on the intranet and its
// fallback to the relay (audited with why), a disabled helper's direct session ended, the
// relay forwarding only ciphertext, a session across two MPs on PostgreSQL, an MP killed
// mid-session, and the recording played back.

// intranetSite runs a site whose MP publishes its SRV record to a real BIND (as
// TestAgentLocation does) and returns a resolv.conf naming that BIND: an agent using it
// detects the intranet and its MP for real. extra are more flags of `site init`.
func intranetSite(t *testing.T, extra ...string) (s *testSite, resolv string) {
	t.Helper()
	corp := bindtest.Start(t, "corp.test.")
	s = initSite(t, "sqlite", extra...)
	if err := os.WriteFile(s.path("dns.key"), []byte(corp.Secret), 0o600); err != nil {
		t.Fatal(err)
	}
	editConfig(t, s.path("site.yaml"), s.path("site.yaml"), func(mp map[string]any) {
		mp["dns"] = map[string]any{"server": corp.Addr, "zone": "corp.test", "key_name": corp.KeyName, "secret_file": "dns.key", "ttl": "60s"}
	})
	s.start(t, "site", "up", "--dir", s.dir)
	corp.NSUpdate(t, "update add ibcm.corp.test. 60 A 127.0.0.1")
	waitFor(t, 15*time.Second, "the MP's SRV record", func() bool { return len(corp.Dig(t, "SRV", "_ibcm-mp._tcp.corp.test")) == 1 })
	resolv = filepath.Join(t.TempDir(), "resolv.conf")
	writeResolv(t, resolv, corp.Addr)
	return s, resolv
}

// holdClosed takes addr with a TCP socket that is bound but never listens: the agent cannot
// open its session port there (address in use) and a dial is refused, as at a closed port.
func holdClosed(t *testing.T, addr string) (release func()) {
	t.Helper()
	ap, err := net.ResolveTCPAddr("tcp4", addr)
	if err != nil {
		t.Fatal(err)
	}
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	sa := &syscall.SockaddrInet4{Port: ap.Port}
	copy(sa.Addr[:], ap.IP.To4())
	if err := syscall.Bind(fd, sa); err != nil {
		syscall.Close(fd)
		t.Fatalf("binding %s: %v", addr, err)
	}
	done := false
	release = func() {
		if !done {
			done = true
			syscall.Close(fd)
		}
	}
	t.Cleanup(release)
	return release
}

// holdSilent listens on addr, accepts every connection and never says a word (nor closes
// it): a session port that takes the TCP connection and never answers the TLS handshake.
func holdSilent(t *testing.T, addr string) (release func()) {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	conns := make(chan net.Conn, 100)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			conns <- c
		}
	}()
	done := false
	release = func() {
		if done {
			return
		}
		done = true
		ln.Close()
		for {
			select {
			case c := <-conns:
				c.Close()
			default:
				return
			}
		}
	}
	t.Cleanup(release)
	return release
}

// sessionIDOn reads the session id `ibcm remote start` printed on its terminal.
func sessionIDOn(t *testing.T, screen string) string {
	t.Helper()
	m := regexp.MustCompile(`session ([0-9a-f]{32}) \(`).FindStringSubmatch(screen)
	if m == nil {
		t.Fatalf("no session id on the helper's screen:\n%s", screen)
	}
	return m[1]
}

// showSession is `ibcm remote show ID` as the site's admin.
func (s *testSite) showSession(t *testing.T, id string) string {
	t.Helper()
	return s.ibcm(t, "remote", "show", id)
}

// deviceLog is the agent's local session log.
func deviceLog(t *testing.T, dev string) []device.LogEntry {
	t.Helper()
	var out []device.LogEntry
	for _, line := range strings.Split(strings.TrimSpace(must(t, bin.client, "sessions", "--dir", dev, "--json")), "\n") {
		if line == "" {
			continue
		}
		var e device.LogEntry
		if err := json.Unmarshal([]byte(line), &e); err != nil {
			t.Fatalf("ibcm-client sessions --json: %v\n%s", err, line)
		}
		out = append(out, e)
	}
	return out
}

// TestRemoteDirect: an agent on the intranet (found by the real detection through BIND)
// and a helper on the intranet MP: the session goes direct, end to end encrypted. When the
// device's session port is closed, or takes the connection and never answers, the session
// falls back to the relay and the audit says which. A helper disabled during a direct
// session: their `ibcm remote start` ends, the device ends the session, the audit says so.
func TestRemoteDirect(t *testing.T) {
	s, resolv := intranetSite(t)
	dev := enrollDevice(t, s, "pc-d1")
	const ip = "127.0.0.41" // the device's one intranet address
	sock, _ := startSharingAgent(t, dev, resolv, "--direct-addr", ip)
	waitFor(t, 15*time.Second, "the agent on the intranet MP with its channel open", func() bool {
		st := statusOf(t, dev)
		return st.Location == wire.Intranet && st.Notify && st.LastCheckin != nil
	})
	id := deviceIDOf(t, dev)
	directPort := port(freeAddr(t))
	directAddr := net.JoinHostPort(ip, directPort)
	s.setRemotePolicy(t, func(rc map[string]any) {
		rc["prompt_user"] = false
		rc["allow_direct"] = true
		rc["direct_port"], _ = strconv.Atoi(directPort)
	})
	waitFor(t, 10*time.Second, "the agent's policy with the session port", func() bool { return statusOf(t, dev).PolicyVersion >= 2 })
	helen := addHelper(t, s, "helen", "Help Desk Operator", "Helen Desk", s.mpIntranet)

	tm := newTerminals(t)
	tm.open("sharer", nil, bin.client+" share --share-socket "+sock+" --shell /bin/sh")
	tm.waitFor("sharer", "ibcm: connected to the ibcm agent", 10*time.Second)

	// session runs one control session of helen: markers both ways, then the helper ends it
	// and the audit record is returned.
	n := 0
	session := func(who helperUser, wantTransport string) wire.Session {
		t.Helper()
		n++
		name := "helper" + strconv.Itoa(n)
		tm.open(name, who.env, bin.ibcm+" remote start pc-d1 --mode control")
		tm.waitFor(name, "connected over "+wantTransport, 15*time.Second)
		mark := "MARK" + strconv.Itoa(n)
		tm.text("sharer", "echo "+mark+"$((6*7))")
		tm.keys("sharer", "Enter")
		tm.waitFor(name, mark+"42", 10*time.Second)
		tm.text(name, "echo BACK"+mark+"$((6*8))")
		tm.keys(name, "Enter")
		tm.waitFor("sharer", "BACK"+mark+"48", 10*time.Second)
		tm.keys(name, "C-]", "q")
		if code := tm.exited(name, 15*time.Second); code != 0 {
			t.Fatalf("ibcm remote start exited %d:\n%s", code, tm.screen(name))
		}
		t.Logf("helper %d: %s", n, strings.SplitN(tm.screen(name)[strings.Index(tm.screen(name), "connected over"):], "\n", 2)[0])
		sid := sessionIDOn(t, tm.screen(name))
		tm.close(name)
		done := s.session(t, id, "the session completed", func(x wire.Session) bool { return x.ID == sid && x.State == wire.SessionEnded })
		if done.Outcome != wire.OutcomeCompleted || done.Transport != wantTransport || !done.E2E || done.Location != wire.Intranet {
			t.Errorf("session %d: %+v", n, done)
		}
		return done
	}
	// 1. The session port closed: nothing listens where the helper dials (a socket holds the
	// address, so the agent cannot listen there either).
	release := holdClosed(t, directAddr)
	d := session(helen, wire.TransportRelay)
	release()
	if d.DirectError != wire.DirectClosed {
		t.Errorf("relay after a closed session port: direct_error %q, want closed", d.DirectError)
	}
	if out := s.showSession(t, d.ID); !strings.Contains(out, "relay (direct: closed)") {
		t.Errorf("ibcm remote show:\n%s", out)
	}

	// 2. A listener that takes the connection and never answers.
	release = holdSilent(t, directAddr)
	d = session(helen, wire.TransportRelay)
	release()
	if d.DirectError != wire.DirectTimeout {
		t.Errorf("relay after a silent session port: direct_error %q, want timeout", d.DirectError)
	}
	if out := s.showSession(t, d.ID); !strings.Contains(out, "relay (direct: timeout)") {
		t.Errorf("ibcm remote show:\n%s", out)
	}

	// 3. Direct, once the session port is free (a port held without SO_REUSEADDR, as in 1,
	// cannot be bound while the direct connection's TIME_WAIT is there: hence this order).
	if d := session(helen, wire.TransportDirect); d.DirectError != "" {
		t.Errorf("a direct session with a direct error: %+v", d)
	}

	// 4. With the sharer's consent asked first (the helper's relay leg is already waiting at
	// the MP when the device opens its port), the session still goes direct.
	s.setRemotePolicy(t, func(rc map[string]any) { rc["prompt_user"] = true })
	waitFor(t, 10*time.Second, "the agent's policy with the consent prompt", func() bool { return statusOf(t, dev).PolicyVersion >= 3 })
	tm.open("helper-consent", helen.env, bin.ibcm+" remote start pc-d1 --mode control")
	tm.waitFor("sharer", "allow control access for", 10*time.Second)
	pending := sessionIDOn(t, tm.screen("helper-consent"))
	s.session(t, id, "the helper's relay leg waiting (it said the port was closed)", func(x wire.Session) bool {
		return x.ID == pending && x.DirectError == wire.DirectClosed
	})
	tm.keys("sharer", "C-]", "y")
	tm.waitFor("helper-consent", "connected over direct", 15*time.Second)
	if x := s.session(t, id, "the consented session direct", func(x wire.Session) bool { return x.ID == pending && x.State == wire.SessionActive }); x.Transport != wire.TransportDirect || x.DirectError != "" {
		t.Errorf("the consented session: %+v", x)
	}
	tm.keys("helper-consent", "C-]", "q")
	if code := tm.exited("helper-consent", 15*time.Second); code != 0 {
		t.Fatalf("ibcm remote start exited %d:\n%s", code, tm.screen("helper-consent"))
	}
	tm.close("helper-consent")

	// 5. A helper disabled during a direct session: the MP pushes session-ended, the agent
	// ends the direct session, the helper's command ends, the audit says why.
	dan := addHelper(t, s, "dan", "Help Desk Operator", "Dan Desk", s.mpIntranet)
	tm.open("dan", dan.env, bin.ibcm+" remote start pc-d1 --mode control")
	tm.waitFor("sharer", "allow control access for", 10*time.Second)
	tm.keys("sharer", "C-]", "y")
	tm.waitFor("dan", "connected over direct", 15*time.Second)
	tm.text("sharer", "echo DAN$((5*5))")
	tm.keys("sharer", "Enter")
	tm.waitFor("dan", "DAN25", 10*time.Second)
	live := s.session(t, id, "dan's session active", func(x wire.Session) bool {
		return x.ID == sessionIDOn(t, tm.screen("dan")) && x.State == wire.SessionActive && x.Transport == wire.TransportDirect
	})
	s.ibcm(t, "user", "disable", "dan")
	if code := tm.exited("dan", 15*time.Second); code == 0 || !strings.Contains(tm.screen("dan"), "helper_revoked") {
		t.Errorf("ibcm remote start of a disabled helper exited 0:\n%s", tm.screen("dan"))
	}
	ended := s.session(t, id, "dan's session ended", func(x wire.Session) bool { return x.ID == live.ID && x.State == wire.SessionEnded })
	if ended.Outcome != wire.OutcomeFailed || ended.Error != "helper_revoked" || ended.Transport != wire.TransportDirect {
		t.Errorf("audit of the disabled helper's session: %+v", ended)
	}
	waitFor(t, 10*time.Second, "the device's log of dan's session", func() bool {
		for _, e := range deviceLog(t, dev) {
			if e.Session == live.ID && !e.Ended.IsZero() {
				return e.Transport == wire.TransportDirect && e.Outcome == wire.OutcomeFailed
			}
		}
		return false
	})
	// The sharer's own shell goes on, the helper's input no longer reaches it.
	tm.text("sharer", "echo AFTER$((9*9))")
	tm.keys("sharer", "Enter")
	tm.waitFor("sharer", "AFTER81", 10*time.Second)
	if sc := tm.screen("dan"); strings.Contains(sc, "AFTER81") {
		t.Errorf("the disabled helper still sees the shell:\n%s", sc)
	}
	tm.close("sharer")
}

// TestRemoteRelayEndToEnd: a device on the internet, the session over the relay of an MP
// whose operator set IBCM_RELAY_CAPTURE_DIR. A marker the helper types reaches the sharer's
// shell but is nowhere in the bytes the relay forwarded (both directions, though the shell
// echoed it back): they are the end-to-end TLS. The recording (policy record_terminal) is
// given to a ReadAudit user decrypted and plays with asciinema; a helper without ReadAudit
// is refused it. Then the site is killed (SIGKILL) mid-session: restarted, its audit says
// interrupted.
func TestRemoteRelayEndToEnd(t *testing.T) {
	needTool(t, "asciinema")
	needTool(t, "script")
	capture := t.TempDir()
	t.Setenv("IBCM_RELAY_CAPTURE_DIR", capture) // for the site's processes, started below
	s := initSite(t, "sqlite")
	site := s.start(t, "site", "up", "--dir", s.dir)
	dev := enrollDevice(t, s, "pc-e2e")
	resolv := filepath.Join(t.TempDir(), "resolv.conf")
	writeResolv(t, resolv, blackHole(t)) // no intranet: the internet MP and its relay
	sock, _ := startSharingAgent(t, dev, resolv)
	waitFor(t, 15*time.Second, "the agent's notification channel", func() bool { return statusOf(t, dev).Notify })
	id := deviceIDOf(t, dev)
	s.setRemotePolicy(t, func(rc map[string]any) {
		rc["prompt_user"] = false
		rc["record_terminal"] = true
	})
	waitFor(t, 10*time.Second, "the agent's policy with recording", func() bool { return statusOf(t, dev).PolicyVersion >= 2 })
	helen := addHelper(t, s, "helen", "Help Desk Operator", "Helen Desk", s.mpInternet)
	ana := addHelper(t, s, "ana", "Read-only Analyst", "Ana Lyst", s.mpInternet) // ReadAudit

	tm := newTerminals(t)
	tm.open("sharer", nil, bin.client+" share --share-socket "+sock+" --shell /bin/sh")
	tm.waitFor("sharer", "ibcm: connected to the ibcm agent", 10*time.Second)
	tm.open("helper", helen.env, bin.ibcm+" remote start pc-e2e --mode control --reason 'e2e check'")
	tm.waitFor("helper", "connected over relay", 15*time.Second)
	sid := sessionIDOn(t, tm.screen("helper"))

	// The marker, typed by the helper: it runs in the sharer's shell (the screen shows the
	// command and what it printed), and the relay never saw it in clear.
	const marker = "ZQXJ-E2E-MARKER-7731"
	tm.text("helper", "echo "+marker+" printed $((7*6))")
	tm.keys("helper", "Enter")
	tm.waitFor("sharer", marker+" printed 42", 10*time.Second)
	tm.waitFor("helper", marker+" printed 42", 10*time.Second)
	tm.text("sharer", "echo RECORDED$((11*11))")
	tm.keys("sharer", "Enter")
	tm.waitFor("helper", "RECORDED121", 10*time.Second)
	tm.keys("helper", "C-]", "q")
	if code := tm.exited("helper", 15*time.Second); code != 0 {
		t.Fatalf("ibcm remote start exited %d:\n%s", code, tm.screen("helper"))
	}
	tm.close("helper")
	done := s.session(t, id, "the session completed and its recording uploaded", func(x wire.Session) bool {
		return x.ID == sid && x.State == wire.SessionEnded && x.Recorded
	})
	if done.Outcome != wire.OutcomeCompleted || done.Transport != wire.TransportRelay || !done.E2E || done.BytesIn == 0 || done.BytesOut == 0 {
		t.Errorf("audit: %+v", done)
	}
	files, _ := filepath.Glob(filepath.Join(capture, sid+"-*.bin"))
	if len(files) != 2 {
		t.Fatalf("relay capture files of the session: %v", files)
	}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		fi, _ := os.Stat(f)
		t.Logf("%s: %d bytes forwarded, mode %v", filepath.Base(f), len(b), fi.Mode().Perm())
		if fi.Mode().Perm() != 0o600 || len(b) < 100 {
			t.Errorf("%s: mode %v, %d bytes", f, fi.Mode().Perm(), len(b))
		}
		for _, clear := range []string{marker, "E2E-MARKER", "RECORDED121", "printed 42"} {
			if bytes.Contains(b, []byte(clear)) {
				t.Errorf("the relay forwarded %q in clear (%s)", clear, filepath.Base(f))
			}
		}
		if b[0] != 0x16 || b[1] != 0x03 { // a TLS handshake record opens each direction
			t.Errorf("%s does not start with a TLS record: % x", filepath.Base(f), b[:8])
		}
	}

	// The recording: decrypted for a ReadAudit user, it plays and shows the session.
	r := ana.as(t, "remote", "recording", sid)
	if r.code != 0 {
		t.Fatalf("ibcm remote recording as a ReadAudit user: exit %d\n%s", r.code, r.stderr)
	}
	cast := filepath.Join(t.TempDir(), "s.cast")
	if err := os.WriteFile(cast, []byte(r.stdout), 0o600); err != nil {
		t.Fatal(err)
	}
	played := run(t, "script", "-qec", "asciinema cat "+cast, "/dev/null")
	if played.code != 0 || !strings.Contains(played.stdout, "RECORDED121") || !strings.Contains(played.stdout, marker+" printed 42") {
		t.Errorf("asciinema cat: exit %d\n%s%s", played.code, played.stdout, played.stderr)
	}
	if r := helen.as(t, "remote", "recording", sid); r.code == 0 || !strings.Contains(r.stderr, "forbidden") || r.stdout != "" {
		t.Errorf("ibcm remote recording without ReadAudit: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}

	// The site is killed mid-session; restarted, it marks the session interrupted.
	tm.open("helper2", helen.env, bin.ibcm+" remote start pc-e2e --mode control")
	tm.waitFor("helper2", "connected over relay", 15*time.Second)
	sid = sessionIDOn(t, tm.screen("helper2"))
	s.session(t, id, "the second session active", func(x wire.Session) bool { return x.ID == sid && x.State == wire.SessionActive })
	site.kill()
	if code := tm.exited("helper2", 15*time.Second); code == 0 {
		t.Errorf("ibcm remote start exited 0 when its MP died:\n%s", tm.screen("helper2"))
	}
	s.start(t, "site", "up", "--dir", s.dir)
	out := s.showSession(t, sid)
	if !regexp.MustCompile(`(?m)^outcome\s+interrupted$`).MatchString(out) {
		t.Errorf("ibcm remote show after the MP was killed:\n%s", out)
	}
	tm.close("sharer")
}

// TestRemoteCrossMP: two MPs of one PostgreSQL site; the device's channel is on the first,
// the helper's commands go to the second: the second forwards the helper's leg to the
// first, the session carries bytes both ways and is audited completed.
func TestRemoteCrossMP(t *testing.T) {
	s := startSite(t, "postgres")
	_, mp2Out, _ := addMP(t, s, "mp2")
	dev := enrollDevice(t, s, "pc-x1")
	resolv := filepath.Join(t.TempDir(), "resolv.conf")
	writeResolv(t, resolv) // no nameservers: the internet MP of the site, MP 1
	sock, _ := startSharingAgent(t, dev, resolv)
	waitFor(t, 15*time.Second, "the agent's channel on MP 1", func() bool { st := statusOf(t, dev); return st.Notify && st.MP == s.mpInternet })
	id := deviceIDOf(t, dev)
	s.setRemotePolicy(t, func(rc map[string]any) { rc["prompt_user"] = false })
	waitFor(t, 10*time.Second, "the agent's policy", func() bool { return statusOf(t, dev).PolicyVersion >= 2 })
	helen := addHelper(t, s, "helen", "Help Desk Operator", "Helen Desk", "https://"+mp2Out)

	tm := newTerminals(t)
	tm.open("sharer", nil, bin.client+" share --share-socket "+sock+" --shell /bin/sh")
	tm.waitFor("sharer", "ibcm: connected to the ibcm agent", 10*time.Second)
	tm.open("helper", helen.env, bin.ibcm+" remote start pc-x1 --mode control")
	tm.waitFor("helper", "connected over relay", 15*time.Second)
	sid := sessionIDOn(t, tm.screen("helper"))
	tm.text("sharer", "echo FROMDEVICE$((3*3))")
	tm.keys("sharer", "Enter")
	tm.waitFor("helper", "FROMDEVICE9", 10*time.Second)
	tm.text("helper", "echo FROMHELPER$((4*4))")
	tm.keys("helper", "Enter")
	tm.waitFor("sharer", "FROMHELPER16", 10*time.Second)
	tm.keys("helper", "C-]", "q")
	if code := tm.exited("helper", 15*time.Second); code != 0 {
		t.Fatalf("ibcm remote start exited %d:\n%s", code, tm.screen("helper"))
	}
	done := s.session(t, id, "the session completed", func(x wire.Session) bool { return x.ID == sid && x.State == wire.SessionEnded })
	if done.Outcome != wire.OutcomeCompleted || done.MP != "mp2" || done.Transport != wire.TransportRelay || !done.E2E || done.BytesIn == 0 || done.BytesOut == 0 {
		t.Errorf("audit of the session across MPs: %+v", done)
	}
	tm.close("sharer")
}
