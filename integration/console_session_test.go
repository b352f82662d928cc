package integration

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"encoding/csv"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"gopkg.in/yaml.v3"

	"github.com/ibcm-project/ibcm/internal/wire"
	"github.com/ibcm-project/ibcm/remote/rfb"
)

// consoleListen is the console listener's address of the site (mp.console_listen of its
// site.yaml). On helper B's branch alone the site has none (the listener is helper A's
// core): the test is skipped there; once both are merged it always runs, and the lead
// deletes the skip.
func consoleListen(t *testing.T, s *testSite) string {
	t.Helper()
	b, err := os.ReadFile(s.path("site.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var cfg struct {
		MP struct {
			ConsoleListen string `yaml:"console_listen"`
		} `yaml:"mp"`
	}
	if err := yaml.Unmarshal(b, &cfg); err != nil {
		t.Fatal(err)
	}
	if cfg.MP.ConsoleListen == "" {
		t.Fatal("site.yaml has no mp.console_listen: site init should have made one")
	}
	return cfg.MP.ConsoleListen
}

// consoleClient is a browser without a browser: the console's cookie in a jar, the
// console's name resolved to its loopback listener, the site's root trusted.
type consoleClient struct {
	t      *testing.T
	base   string // the console URL (https://ibcm.corp.test:PORT)
	origin string
	http   *http.Client
	csrf   string
}

// loginConsole opens the one-time URL that `ibcm console login` printed for u.
func loginConsole(t *testing.T, s *testSite, u helperUser, listen string) *consoleClient {
	t.Helper()
	r := u.as(t, "console", "login")
	if r.code != 0 {
		t.Fatalf("ibcm console login: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	link := strings.TrimSpace(r.stdout)
	lu, err := url.Parse(link)
	if err != nil || lu.Scheme != "https" {
		t.Fatalf("login link %q", link)
	}
	pem, err := os.ReadFile(s.path("ca/root.crt"))
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(pem)
	jar, _ := cookiejar.New(nil)
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots},
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, network, listen)
		}}
	c := &consoleClient{t: t, base: lu.Scheme + "://" + lu.Host, origin: lu.Scheme + "://" + lu.Host,
		http: &http.Client{Transport: tr, Jar: jar, Timeout: time.Minute}}
	resp, err := c.http.Get(link)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.Request.URL.Path != "/devices" {
		t.Fatalf("login: %s at %s", resp.Status, resp.Request.URL)
	}
	var me struct {
		User, CSRF string
	}
	if status := c.do("GET", "/api/me", nil, &me); status != 200 || me.User != u.name || me.CSRF == "" {
		t.Fatalf("/api/me: %d %+v", status, me)
	}
	c.csrf = me.CSRF
	return c
}

// do calls the console's API (JSON both ways, CSRF and Origin on state changes).
func (c *consoleClient) do(method, path string, in, out any) int {
	c.t.Helper()
	var body io.Reader
	if in != nil {
		b, _ := json.Marshal(in)
		body = strings.NewReader(string(b))
	}
	req, _ := http.NewRequest(method, c.base+path, body)
	if method != "GET" {
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("X-CSRF-Token", c.csrf)
		req.Header.Set("Origin", c.origin)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		c.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if out != nil && resp.StatusCode < 300 {
		if err := json.Unmarshal(b, out); err != nil {
			c.t.Fatalf("%s %s: %v in %q", method, path, err, b)
		}
	} else if resp.StatusCode >= 300 {
		c.t.Logf("%s %s: %d %s", method, path, resp.StatusCode, b)
	}
	return resp.StatusCode
}

// start starts a session through the console and opens its control WebSocket.
func (c *consoleClient) start(ctx context.Context, device, mode string) (wire.SessionStart, *websocket.Conn) {
	c.t.Helper()
	var out wire.SessionStart
	if status := c.do("POST", "/api/v1/admin/sessions", map[string]string{"device": device, "mode": mode}, &out); status != http.StatusCreated {
		c.t.Fatalf("start through the console: %d", status)
	}
	q := url.Values{"ticket": {out.TicketID}, "csrf": {c.csrf}, "rows": {"24"}, "cols": {"100"}}
	u := "wss" + strings.TrimPrefix(c.base, "https") + "/ws/sessions/" + out.Session.ID + "?" + q.Encode()
	ws, resp, err := websocket.Dial(ctx, u, &websocket.DialOptions{HTTPClient: c.http, HTTPHeader: http.Header{"Origin": {c.origin}}})
	if err != nil {
		c.t.Fatalf("the control WebSocket: %v %v", err, resp)
	}
	ws.SetReadLimit(1 << 20)
	return out, ws
}

// wsNext reads the control WebSocket until a JSON message of type typ; terminal output
// (binary) is appended to out.
func wsNext(t *testing.T, ctx context.Context, ws *websocket.Conn, typ string, out *[]byte) map[string]any {
	t.Helper()
	for {
		mt, b, err := ws.Read(ctx)
		if err != nil {
			t.Fatalf("waiting for %s: %v (output so far %q)", typ, err, *out)
		}
		if mt == websocket.MessageBinary {
			*out = append(*out, b...)
			continue
		}
		var m map[string]any
		if err := json.Unmarshal(b, &m); err != nil {
			t.Fatalf("not JSON: %q", b)
		}
		if m["type"] == typ {
			return m
		}
		if m["type"] == "end" {
			t.Fatalf("the session ended waiting for %s: %v", typ, m)
		}
	}
}

// TestConsoleTerminalSession: a helper logged into the web console (one-time link, cookie,
// CSRF) starts a terminal session on a real agent whose user shares a real terminal; the
// sharer's prompt says the web console; the helper types a command over the WebSocket and
// reads its output; the audit says console, not end to end. An agent run with
// --console-sessions=false refuses the console's session (console_forbidden, audited) while
// a session from the command line still works on it.
func TestConsoleTerminalSession(t *testing.T) {
	s := startSite(t, "sqlite") // the harness gives every site a console listener on a free port
	consoleAddr := consoleListen(t, s)
	waitFor(t, 15*time.Second, "the console listener", func() bool {
		c, err := net.Dial("tcp", consoleAddr)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
	resolv := t.TempDir() + "/resolv.conf"
	writeResolv(t, resolv, blackHole(t)) // the internet MP and the relay
	dev := enrollDevice(t, s, "pc-web")
	sock, _ := startSharingAgent(t, dev, resolv)
	devNo := enrollDevice(t, s, "pc-noweb")
	sockNo, _ := startSharingAgent(t, devNo, resolv, "--console-sessions=false")
	waitFor(t, 15*time.Second, "the agents' notification channels", func() bool { return statusOf(t, dev).Notify && statusOf(t, devNo).Notify })
	id, idNo := deviceIDOf(t, dev), deviceIDOf(t, devNo)
	helen := addHelper(t, s, "helen", "Help Desk Operator", "Helen Desk", s.mpInternet)
	c := loginConsole(t, s, helen, consoleAddr)

	tm := newTerminals(t)
	tm.open("sharer", nil, bin.client+" share --share-socket "+sock+" --shell /bin/bash") // $RANDOM
	tm.waitFor("sharer", "ibcm: connected to the ibcm agent", 10*time.Second)

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	start, ws := c.start(ctx, "pc-web", "control")
	defer ws.CloseNow()
	if !start.Session.Console {
		t.Errorf("the start's session does not say console: %+v", start.Session)
	}
	tm.waitFor("sharer", "Helen Desk (helen), Service Desk, Contoso IT, via the web console?", 15*time.Second)
	tm.keys("sharer", "C-]", "y")
	var out []byte
	card := wsNext(t, ctx, ws, "card", &out)
	if card["kind"] != "terminal" || card["mode"] != "control" {
		t.Errorf("card %v", card)
	}
	s.session(t, id, "the console session active", func(x wire.Session) bool {
		return x.ID == start.Session.ID && x.State == wire.SessionActive && x.Console && !x.E2E && x.Transport == wire.TransportRelay
	})
	if err := ws.Write(ctx, websocket.MessageBinary, []byte("echo hi-$RANDOM\r")); err != nil {
		t.Fatal(err)
	}
	hi := regexp.MustCompile(`hi-[0-9]+`)
	for !hi.Match(out) {
		mt, b, err := ws.Read(ctx)
		if err != nil {
			t.Fatalf("no output: %v (so far %q)", err, out)
		}
		if mt == websocket.MessageBinary {
			out = append(out, b...)
		}
	}
	tm.waitFor("sharer", string(hi.Find(out)), 10*time.Second) // the sharer saw it run too
	// Chat from the console reaches the sharer.
	if err := ws.Write(ctx, websocket.MessageText, []byte(`{"type":"chat","text":"hello from the console"}`)); err != nil {
		t.Fatal(err)
	}
	tm.waitFor("sharer", "hello from the console", 10*time.Second)
	if err := ws.Write(ctx, websocket.MessageText, []byte(`{"type":"end"}`)); err != nil {
		t.Fatal(err)
	}
	if m := wsNext(t, ctx, ws, "end", &out); m["reason"] != "ended by you" {
		t.Errorf("end %v", m)
	}
	done := s.session(t, id, "the console session ended", func(x wire.Session) bool { return x.ID == start.Session.ID && x.State == wire.SessionEnded })
	if !done.Console || done.E2E || done.Outcome != wire.OutcomeCompleted || done.Helper != "helen" || done.BytesOut == 0 || done.Sharer == "" {
		t.Errorf("audit of the console session: %+v", done)
	}
	if show := s.ibcm(t, "remote", "show", start.Session.ID); !strings.Contains(show, "web console") {
		t.Errorf("ibcm remote show:\n%s", show)
	}
	list := s.ibcm(t, "remote", "sessions", "--csv", "--device", id)
	rows, err := csv.NewReader(strings.NewReader(list)).ReadAll()
	if err != nil || len(rows) < 2 {
		t.Fatalf("ibcm remote sessions --csv: %v\n%s", err, list)
	}
	col := map[string]int{}
	for i, name := range rows[0] {
		col[name] = i
	}
	found := false
	for _, r := range rows[1:] {
		found = found || r[col["id"]] == start.Session.ID && r[col["console"]] == "true" && r[col["e2e"]] == "false"
	}
	if !found {
		t.Errorf("ibcm remote sessions --csv has no row of the console session (console true, e2e false):\n%s", list)
	}

	// The agent that forbids console sessions.
	start2, ws2 := c.start(ctx, "pc-noweb", "control")
	defer ws2.CloseNow()
	if m := wsNext(t, ctx, ws2, "end", &out); !strings.Contains(fmt.Sprint(m["reason"]), "console_forbidden") {
		t.Errorf("the refusal's end: %v", m)
	}
	refusedS := s.session(t, idNo, "the console session refused", func(x wire.Session) bool { return x.ID == start2.Session.ID && x.State == wire.SessionEnded })
	if refusedS.Outcome != wire.OutcomeRefused || refusedS.Error != "console_forbidden" || !refusedS.Console || refusedS.E2E {
		t.Errorf("audit of the refusal: %+v", refusedS)
	}
	// …while the command line's session to it still works.
	tm.open("sharer2", nil, bin.client+" share --share-socket "+sockNo+" --shell /bin/sh")
	tm.waitFor("sharer2", "ibcm: connected to the ibcm agent", 10*time.Second)
	tm.open("helper", helen.env, bin.ibcm+" remote start pc-noweb --mode control")
	tm.waitFor("sharer2", "allow control access for Helen Desk", 15*time.Second)
	if strings.Contains(tm.screen("sharer2"), "web console") {
		t.Errorf("the command line's prompt says the web console:\n%s", tm.screen("sharer2"))
	}
	tm.keys("sharer2", "C-]", "y")
	tm.waitFor("helper", "control", 10*time.Second)
	tm.text("helper", "echo CLI$((40+2))")
	tm.keys("helper", "Enter")
	tm.waitFor("helper", "CLI42", 10*time.Second)
	tm.keys("helper", "C-]", "q")
	if code := tm.exited("helper", 15*time.Second); code != 0 {
		t.Fatalf("ibcm remote start exited %d:\n%s", code, tm.screen("helper"))
	}
	cli := s.session(t, idNo, "the command line's session completed", func(x wire.Session) bool {
		return x.ID != start2.Session.ID && x.State == wire.SessionEnded
	})
	if cli.Console || !cli.E2E || cli.Outcome != wire.OutcomeCompleted {
		t.Errorf("audit of the command line's session: %+v", cli)
	}
}

// TestConsoleScreenSession: a screen session from the web console, as noVNC runs it: the
// control WebSocket gives the card, the screen WebSocket of the same cookie session speaks
// RFB with security None, and the frame it takes is the sharer's display (Xvfb, x11vnc
// started by the agent); the audit says console, not end to end.
func TestConsoleScreenSession(t *testing.T) {
	for _, tool := range []string{"Xvfb", "x11vnc", "xsetroot"} {
		needTool(t, tool)
	}
	display := startXvfb(t)
	if out, err := exec.Command("xsetroot", "-display", display, "-solid", "#20c040").CombinedOutput(); err != nil {
		t.Fatalf("xsetroot: %v %s", err, out)
	}
	s := startSite(t, "sqlite") // the harness gives every site a console listener on a free port
	consoleAddr := consoleListen(t, s)
	resolv := t.TempDir() + "/resolv.conf"
	writeResolv(t, resolv, blackHole(t))
	dev := enrollDevice(t, s, "pc-webscr")
	sock, _ := startSharingAgent(t, dev, resolv)
	waitFor(t, 15*time.Second, "the agent's notification channel", func() bool { return statusOf(t, dev).Notify })
	id := deviceIDOf(t, dev)
	helen := addHelper(t, s, "helen", "Help Desk Operator", "Helen Desk", s.mpInternet)
	c := loginConsole(t, s, helen, consoleAddr)

	tm := newTerminals(t)
	tm.open("sharer", []string{"DISPLAY=" + display}, bin.client+" share --screen --share-socket "+sock+" --shell /bin/sh")
	tm.waitFor("sharer", "ibcm: connected to the ibcm agent", 10*time.Second)

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var start wire.SessionStart
	if status := c.do("POST", "/api/v1/admin/sessions", map[string]string{"device": "pc-webscr", "mode": "view", "kind": "screen"}, &start); status != http.StatusCreated {
		t.Fatalf("start: %d", status)
	}
	q := url.Values{"ticket": {start.TicketID}, "csrf": {c.csrf}}
	base := "wss" + strings.TrimPrefix(c.base, "https") + "/ws/sessions/" + start.Session.ID
	opts := &websocket.DialOptions{HTTPClient: c.http, HTTPHeader: http.Header{"Origin": {c.origin}}, Subprotocols: []string{"binary"}}
	ws, _, err := websocket.Dial(ctx, base+"?"+q.Encode(), opts)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.CloseNow()
	tm.waitFor("sharer", "allow screen view access for Helen Desk (helen), Service Desk, Contoso IT, via the web console?", 15*time.Second)
	tm.keys("sharer", "C-]", "y")
	var out []byte
	if card := wsNext(t, ctx, ws, "card", &out); card["kind"] != "screen" || card["mode"] != "view" {
		t.Fatalf("card %v", card)
	}
	sws, _, err := websocket.Dial(ctx, base+"/screen?"+q.Encode(), opts)
	if err != nil {
		t.Fatal(err)
	}
	defer sws.CloseNow()
	nc := websocket.NetConn(ctx, sws, websocket.MessageBinary)
	si, err := rfb.Dial(nc, "")
	if err != nil {
		t.Fatalf("noVNC's handshake: %v", err)
	}
	if w, h := si.Size(); w != 640 || h != 480 {
		t.Fatalf("the screen is %dx%d, want the display's 640x480", w, h)
	}
	green := rawFrame(t, nc, si)
	if green < 640*480-400 { // all but the pointer's arrow
		t.Fatalf("%d pixels of the display's colour in %d", green, 640*480)
	}
	s.session(t, id, "the console screen session active", func(x wire.Session) bool {
		return x.ID == start.Session.ID && x.State == wire.SessionActive && x.Console && !x.E2E
	})
	if err := ws.Write(ctx, websocket.MessageText, []byte(`{"type":"end"}`)); err != nil {
		t.Fatal(err)
	}
	wsNext(t, ctx, ws, "end", &out)
	done := s.session(t, id, "the console screen session ended", func(x wire.Session) bool { return x.ID == start.Session.ID && x.State == wire.SessionEnded })
	if !done.Console || done.E2E || done.Outcome != wire.OutcomeCompleted || done.BytesOut == 0 {
		t.Errorf("audit: %+v", done)
	}
}

// rawFrame asks for one full frame in the Raw encoding and counts the pixels of #20c040.
func rawFrame(t *testing.T, rw io.ReadWriter, si rfb.ServerInit) int {
	t.Helper()
	pf := si[4:20]
	bpp, bigEndian := int(pf[0])/8, pf[2] != 0
	rmax, gmax, bmax := binary.BigEndian.Uint16(pf[4:]), binary.BigEndian.Uint16(pf[6:]), binary.BigEndian.Uint16(pf[8:])
	rs, gs, bs := pf[10], pf[11], pf[12]
	if bpp != 4 || pf[3] == 0 {
		t.Fatalf("pixel format %v: want 32 bpp true colour", pf)
	}
	w, h := si.Size()
	msg := []byte{2, 0, 0, 1, 0, 0, 0, 0} // SetEncodings: Raw
	msg = append(msg, 3, 0, 0, 0, 0, 0)   // FramebufferUpdateRequest, full
	msg = binary.BigEndian.AppendUint16(msg, w)
	msg = binary.BigEndian.AppendUint16(msg, h)
	if _, err := rw.Write(msg); err != nil {
		t.Fatal(err)
	}
	green, covered := 0, 0
	for covered < int(w)*int(h) {
		var hdr [4]byte
		if _, err := io.ReadFull(rw, hdr[:]); err != nil {
			t.Fatal(err)
		}
		if hdr[0] != 0 {
			t.Fatalf("server message %d, want a FramebufferUpdate", hdr[0])
		}
		for n := binary.BigEndian.Uint16(hdr[2:]); n > 0; n-- {
			var r [12]byte
			if _, err := io.ReadFull(rw, r[:]); err != nil {
				t.Fatal(err)
			}
			rw_, rh := int(binary.BigEndian.Uint16(r[4:])), int(binary.BigEndian.Uint16(r[6:]))
			if enc := int32(binary.BigEndian.Uint32(r[8:])); enc != 0 {
				t.Fatalf("encoding %d, want Raw", enc)
			}
			px := make([]byte, rw_*rh*bpp)
			if _, err := io.ReadFull(rw, px); err != nil {
				t.Fatal(err)
			}
			for i := 0; i < len(px); i += 4 {
				v := binary.LittleEndian.Uint32(px[i:])
				if bigEndian {
					v = binary.BigEndian.Uint32(px[i:])
				}
				r8, g8, b8 := (v>>rs)&uint32(rmax), (v>>gs)&uint32(gmax), (v>>bs)&uint32(bmax)
				if r8*255/uint32(rmax) == 0x20 && g8*255/uint32(gmax) == 0xc0 && b8*255/uint32(bmax) == 0x40 {
					green++
				}
			}
			covered += rw_ * rh
		}
	}
	return green
}
