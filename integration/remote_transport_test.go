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
// detects the intranet and its MP for real.
func intranetSite(t *testing.T) (s *testSite, resolv string) {
	t.Helper()
	corp := bindtest.Start(t, "corp.test.")
	s = initSite(t, "sqlite")
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
	// 1. Direct.
	if d := session(helen, wire.TransportDirect); d.DirectError != "" {
		t.Errorf("a direct session with a direct error: %+v", d)
	}

	// 2. The session port closed: nothing listens where the helper dials (a socket holds the
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

	// 3. A listener that takes the connection and never answers.
	release = holdSilent(t, directAddr)
	d = session(helen, wire.TransportRelay)
	release()
	if d.DirectError != wire.DirectTimeout {
		t.Errorf("relay after a silent session port: direct_error %q, want timeout", d.DirectError)
	}
	if out := s.showSession(t, d.ID); !strings.Contains(out, "relay (direct: timeout)") {
		t.Errorf("ibcm remote show:\n%s", out)
	}

	// 4. A helper disabled during a direct session: the MP pushes session-ended, the agent
	// ends the direct session, the helper's command ends, the audit says why.
	dan := addHelper(t, s, "dan", "Help Desk Operator", "Dan Desk", s.mpIntranet)
	tm.open("dan", dan.env, bin.ibcm+" remote start pc-d1 --mode control")
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

var _ = bytes.Contains
