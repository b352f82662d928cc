package mp

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/ibcm-project/ibcm/ca"
	"github.com/ibcm-project/ibcm/internal/access"
	"github.com/ibcm-project/ibcm/internal/sitedb"
	"github.com/ibcm-project/ibcm/internal/sitedb/sitedbtest"
	"github.com/ibcm-project/ibcm/internal/trust"
	"github.com/ibcm-project/ibcm/internal/wire"
	"github.com/ibcm-project/ibcm/remote/recording"
	"github.com/ibcm-project/ibcm/remote/ticket"
)

// online registers a device and opens its notification channel on the MP at base.
func online(t testing.TB, f *fixture, m *MP, base string, name string) (tls.Certificate, *websocket.Conn) {
	t.Helper()
	pc := f.device(t, name)
	if status, _ := call(t, f.client(&pc), "GET", base+"/v1/whoami", nil, nil); status != 200 {
		t.Fatal("whoami")
	}
	ws := dialNotifyAt(t, base, f.client(&pc))
	waitConnected(t, m, deviceID(pc), 1)
	return pc, ws
}

func startSession(t testing.TB, f *fixture, base string, helper tls.Certificate, device, mode string) (int, wire.SessionStart, wire.Error) {
	t.Helper()
	var out wire.SessionStart
	status, e := call(t, f.client(&helper), "POST", base+"/v1/admin/sessions", wire.SessionStartRequest{Device: device, Mode: mode}, &out)
	return status, out, e
}

// ticketEvent reads the next session-requested event of a channel and verifies its ticket
// as the agent does.
func ticketEvent(t testing.TB, f *fixture, ws *websocket.Conn, device string) *ticket.Ticket {
	t.Helper()
	ev := nextSessionEvent(t, ws)
	if ev.Type != wire.EventSessionRequested {
		t.Fatalf("event %+v, want session-requested", ev)
	}
	s, err := ticket.Parse(ev.Data[wire.EventDataTicket])
	if err != nil {
		t.Fatal(err)
	}
	tk, err := s.Verify(ticket.VerifyOptions{Roots: f.roots, SiteCode: "TST", Device: device, Now: time.Now()})
	if err != nil {
		t.Fatalf("the ticket does not verify: %v", err)
	}
	return tk
}

// nextSessionEvent is the next event of a channel about a session (policy changes skipped).
func nextSessionEvent(t testing.TB, ws *websocket.Conn) wire.Event {
	t.Helper()
	for {
		if ev := nextEvent(t, ws); ev.Type != wire.EventPolicyChanged {
			return ev
		}
	}
}

func report(t testing.TB, f *fixture, base string, device tls.Certificate, session string, rep wire.SessionReport) (int, wire.Error) {
	t.Helper()
	return call(t, f.client(&device), "POST", base+"/v1/sessions/"+session+"/report", rep, nil)
}

func (f *fixture) setRemoteControl(t testing.TB, edit func(*wire.RemoteControlSettings)) {
	t.Helper()
	p, err := f.mp.Policy(context.Background(), DefaultPolicyName)
	if err != nil {
		t.Fatal(err)
	}
	edit(&p.RemoteControl)
	if _, err := f.mp.SetPolicy(context.Background(), p, "test"); err != nil {
		t.Fatal(err)
	}
	f.mp.policies.clear(DefaultPolicyName) // the event does it too; the test does not wait for it
}

func auditOf(t testing.TB, f *fixture, device string) []wire.Session {
	t.Helper()
	ss, err := f.mp.sessions(context.Background(), sessionFilter{Device: device})
	if err != nil {
		t.Fatal(err)
	}
	return ss
}

// A helper starts a session: the answer has the device's card and the ticket's id, the
// device gets a ticket that verifies against the site's roots, and the audit says requested.
func TestSessionStartSignsTicket(t *testing.T) {
	f := newFixture(t, sqliteDB(t), Options{})
	pc, ws := online(t, f, f.mp, f.intranet, "pc-1")
	ctx := context.Background()
	if err := f.ca.Access().AddUser(ctx, access.User{Name: "hd", DisplayName: "Hélène D", Title: "Support", Org: "IT"}, "test"); err != nil {
		t.Fatal(err)
	}
	helper := f.user(t, "hd", access.HelpDeskOperator)
	status, out, e := startSession(t, f, f.intranet, helper, "pc-1", ticket.ModeControl)
	if status != http.StatusCreated {
		t.Fatalf("start: %d %+v", status, e)
	}
	if out.Device.Name != "pc-1" || out.Role != ticket.RoleHelper || out.Session.State != wire.SessionRequested || len(out.Modes) != 3 {
		t.Errorf("answer %+v", out) // no unattended: the default policy does not allow it
	}
	tk := ticketEvent(t, f, ws, deviceID(pc))
	if tk.ID != out.TicketID || tk.Session != out.Session.ID || tk.HelperKey != trust.PublicKeyHash(helper.Leaf) || tk.Card.DisplayName != "Hélène D" ||
		tk.Card.Organization != "IT" || tk.Mode != ticket.ModeControl || tk.MP != "mp-test" {
		t.Errorf("ticket %+v", tk)
	}
	if tk.Direct || out.Direct != nil { // the device never told its addresses
		t.Errorf("direct: %v %v", tk.Direct, out.Direct)
	}
	var s wire.Session
	if status, _ := call(t, f.client(&helper), "GET", f.intranet+"/v1/admin/sessions/"+out.Session.ID, nil, &s); status != 200 || s.Helper != "hd" || s.MP != "mp-test" {
		t.Errorf("show: %d %+v", status, s)
	}
	// By prefix, and ambiguous by name.
	if status, _, e := startSession(t, f, f.intranet, helper, deviceID(pc)[:6], ticket.ModeView); status != http.StatusCreated {
		t.Errorf("by prefix: %d %+v", status, e)
	}
	_ = f.device(t, "pc-1") // a second device called pc-1
	pc2 := f.device(t, "pc-1")
	call(t, f.client(&pc2), "GET", f.intranet+"/v1/whoami", nil, nil)
	if status, _, e := startSession(t, f, f.intranet, helper, "pc-1", ticket.ModeView); status != http.StatusConflict || e.Error.Code != "ambiguous_device" {
		t.Errorf("ambiguous name: %d %+v", status, e)
	}
}

// Every refusal has its own code and is audited; an unknown or out-of-scope device is 404.
func TestSessionStartRefusals(t *testing.T) {
	f := newFixture(t, sqliteDB(t), Options{})
	pc, _ := online(t, f, f.mp, f.intranet, "pc-1")
	id := deviceID(pc)
	ctx := context.Background()
	hd := f.user(t, "hd", access.HelpDeskOperator)
	analyst := f.user(t, "ana", access.ReadOnlyAnalyst)
	if status, _, e := startSession(t, f, f.intranet, analyst, id, ticket.ModeView); status != http.StatusForbidden || e.Error.Code != "forbidden" {
		t.Errorf("Read-only Analyst: %d %+v", status, e)
	}
	// Scoped to a group the device is not in.
	if err := f.mp.CreateGroup(ctx, wire.Group{Name: "other"}); err != nil {
		t.Fatal(err)
	}
	if err := f.ca.Access().AddUser(ctx, access.User{Name: "scoped"}, "test"); err != nil {
		t.Fatal(err)
	}
	if err := f.ca.Access().Assign(ctx, "scoped", access.HelpDeskOperator, []string{"other"}, "test"); err != nil {
		t.Fatal(err)
	}
	scoped := f.issue(t, caAdmin("scoped"))
	if status, _, e := startSession(t, f, f.intranet, scoped, id, ticket.ModeView); status != http.StatusNotFound || e.Error.Code != "not_found" {
		t.Errorf("out of scope: %d %+v", status, e)
	}
	// In scope through the group: the mode's permission holds on the device.
	if err := f.mp.SetMember(ctx, "other", id, true); err != nil {
		t.Fatal(err)
	}
	if status, out, e := startSession(t, f, f.intranet, scoped, "pc-1", ticket.ModeControl); status != http.StatusCreated || len(out.Modes) != 3 {
		t.Errorf("in scope through a group: %d %+v %v", status, e, out.Modes)
	}
	// Elevation without Unattended.
	if err := f.ca.Access().CreateRole(ctx, access.Role{Name: "Elevators", Permissions: access.SetOf(access.Elevation)}); err != nil {
		t.Fatal(err)
	}
	elev := f.user(t, "elev", "Elevators")
	f.setRemoteControl(t, func(rc *wire.RemoteControlSettings) { rc.AllowUnattended = true })
	if status, _, e := startSession(t, f, f.intranet, elev, id, ticket.ModeUnattended); status != http.StatusForbidden || e.Error.Code != "forbidden" {
		t.Errorf("unattended without the permission: %d %+v", status, e)
	}
	if status, _, e := startSession(t, f, f.intranet, hd, id, ticket.ModeUnattended); status != http.StatusCreated {
		t.Errorf("unattended with both: %d %+v", status, e)
	}
	cases := []struct {
		edit       func(*wire.RemoteControlSettings)
		user       tls.Certificate
		mode, code string
	}{
		{func(rc *wire.RemoteControlSettings) { rc.AllowUnattended = false }, hd, ticket.ModeUnattended, "unattended_not_allowed"},
		{func(rc *wire.RemoteControlSettings) { rc.AccessLevel = "view" }, hd, ticket.ModeControl, "access_level"},
		{func(rc *wire.RemoteControlSettings) { rc.AccessLevel = "view" }, hd, ticket.ModeView, ""},
		{func(rc *wire.RemoteControlSettings) { rc.AccessLevel = "none" }, hd, ticket.ModeView, "access_level"},
		{func(rc *wire.RemoteControlSettings) { rc.AccessLevel, rc.PermittedViewers = "full", []string{"bob"} }, hd, ticket.ModeView, "not_permitted_viewer"},
		{func(rc *wire.RemoteControlSettings) {
			rc.PermittedViewers = []string{"role:" + access.HelpDeskOperator}
		}, hd, ticket.ModeView, ""},
		{func(rc *wire.RemoteControlSettings) { rc.PermittedViewers = []string{"hd"} }, hd, ticket.ModeControl, ""},
		{func(rc *wire.RemoteControlSettings) { rc.Enabled = false }, hd, ticket.ModeView, "remote_control_disabled"},
	}
	for i, c := range cases {
		f.setRemoteControl(t, c.edit)
		status, out, e := startSession(t, f, f.intranet, c.user, id, c.mode)
		switch {
		case c.code == "" && status != http.StatusCreated:
			t.Errorf("case %d: %d %+v", i, status, e)
		case c.code != "" && (status != http.StatusForbidden || e.Error.Code != c.code):
			t.Errorf("case %d: %d %+v, want 403 %s", i, status, e, c.code)
		case c.code == "" && i == 2 && (len(out.Modes) != 1 || out.Modes[0] != ticket.ModeView):
			t.Errorf("access level view: modes %v", out.Modes)
		}
	}
	refused := map[string]int{}
	for _, s := range auditOf(t, f, id) {
		if s.Outcome == wire.OutcomeRefused {
			refused[s.Error]++
		}
	}
	for _, code := range []string{"forbidden", "unattended_not_allowed", "access_level", "not_permitted_viewer", "remote_control_disabled"} {
		if refused[code] == 0 {
			t.Errorf("no audit row for %s: %v", code, refused)
		}
	}
	// Offline: audited as such.
	f.setRemoteControl(t, func(rc *wire.RemoteControlSettings) { rc.Enabled = true })
	off := f.device(t, "pc-off")
	call(t, f.client(&off), "GET", f.intranet+"/v1/whoami", nil, nil)
	if status, _, e := startSession(t, f, f.intranet, hd, "pc-off", ticket.ModeView); status != http.StatusConflict || e.Error.Code != "device_offline" {
		t.Errorf("offline: %d %+v", status, e)
	}
	if ss := auditOf(t, f, deviceID(off)); len(ss) != 1 || ss[0].Outcome != wire.OutcomeOffline || ss[0].State != wire.SessionEnded {
		t.Errorf("offline audit: %+v", ss)
	}
}

// relayLeg dials a relay leg and returns its connection once answered (resp.StatusCode
// 101) or the error answer.
type legResult struct {
	conn   *tls.Conn
	br     *bufio.Reader
	status int
	err    wire.Error
}

func dialLeg(t testing.TB, f *fixture, base string, cert tls.Certificate, path string) <-chan legResult {
	t.Helper()
	out := make(chan legResult, 1)
	go func() {
		host := strings.TrimPrefix(base, "https://")
		c, err := tls.Dial("tcp", host, &tls.Config{RootCAs: f.roots, Certificates: []tls.Certificate{cert}, NextProtos: []string{"http/1.1"}})
		if err != nil {
			out <- legResult{status: -1}
			return
		}
		t.Cleanup(func() { c.Close() })
		_, _ = io.WriteString(c, "GET "+path+" HTTP/1.1\r\nHost: "+host+"\r\nConnection: Upgrade\r\nUpgrade: ibcm-relay\r\n\r\n")
		br := bufio.NewReader(c)
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			out <- legResult{status: -2}
			return
		}
		r := legResult{conn: c, br: br, status: resp.StatusCode}
		if resp.StatusCode != http.StatusSwitchingProtocols {
			_ = json.NewDecoder(resp.Body).Decode(&r.err)
		}
		out <- r
	}()
	return out
}

func waitLeg(t testing.TB, ch <-chan legResult) legResult {
	t.Helper()
	select {
	case r := <-ch:
		return r
	case <-time.After(10 * time.Second):
		t.Fatal("the relay leg got no answer")
		return legResult{}
	}
}

// waitPairs waits until m holds n relay pairs (a leg is waiting there).
func waitPairs(t testing.TB, m *MP, n int) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); m.relays.count() != n; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d relay pairs, want %d", m.relays.count(), n)
		}
	}
}

// exchange checks that bytes go both ways between two spliced legs.
func exchange(t testing.TB, a, b legResult) {
	t.Helper()
	for _, dir := range [][2]legResult{{a, b}, {b, a}} {
		msg := []byte("hello through the relay " + time.Now().String())
		if _, err := dir[0].conn.Write(msg); err != nil {
			t.Fatal(err)
		}
		got := make([]byte, len(msg))
		_ = dir[1].conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.ReadFull(dir[1].br, got); err != nil || string(got) != string(msg) {
			t.Fatalf("relayed %q, %v", got, err)
		}
	}
}

// closed reports whether the leg's connection ends (EOF or reset) within a few seconds.
func closed(l legResult) bool {
	_ = l.conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err := l.br.ReadByte()
	return err != nil && !isTimeout(err)
}

func isTimeout(err error) bool {
	ne, ok := err.(interface{ Timeout() bool })
	return ok && ne.Timeout()
}

// The two legs of a ticket are spliced and carry bytes both ways; a device cannot open a
// leg of another device's session, a helper cannot use a ticket with another key; ending
// the session closes both legs and tells the device.
func TestRelaySpliceAndEnd(t *testing.T) {
	f := newFixture(t, sqliteDB(t), Options{})
	pc, ws := online(t, f, f.mp, f.intranet, "pc-1")
	other, _ := online(t, f, f.mp, f.internet, "pc-2")
	helper := f.user(t, "hd", access.HelpDeskOperator)
	_, out, _ := startSession(t, f, f.intranet, helper, deviceID(pc), ticket.ModeControl)
	ticketEvent(t, f, ws, deviceID(pc))
	path := "/v1/sessions/" + out.Session.ID + "/relay?ticket=" + out.TicketID
	adminPath := "/v1/admin/sessions/" + out.Session.ID + "/relay?ticket=" + out.TicketID
	if r := waitLeg(t, dialLeg(t, f, f.internet, other, path)); r.status != http.StatusForbidden || r.err.Error.Code != "not_your_session" {
		t.Errorf("another device's leg: %d %+v", r.status, r.err)
	}
	helper2 := f.issue(t, caAdmin("hd")) // the same user, another key
	if r := waitLeg(t, dialLeg(t, f, f.intranet, helper2, adminPath)); r.status != http.StatusForbidden || r.err.Error.Code != "not_your_ticket" {
		t.Errorf("another key: %d %+v", r.status, r.err)
	}
	if status, e := call(t, f.client(&helper), "GET", f.intranet+adminPath, nil, nil); status != http.StatusUpgradeRequired {
		t.Errorf("a leg without Upgrade: %d %+v", status, e)
	}
	dev := dialLeg(t, f, f.internet, pc, path)
	waitPairs(t, f.mp, 1)
	h := waitLeg(t, dialLeg(t, f, f.intranet, helper, adminPath))
	d := waitLeg(t, dev)
	if h.status != http.StatusSwitchingProtocols || d.status != http.StatusSwitchingProtocols {
		t.Fatalf("legs answered %d %+v and %d %+v", h.status, h.err, d.status, d.err)
	}
	exchange(t, h, d)
	if status, e := report(t, f, f.internet, pc, out.Session.ID, wire.SessionReport{Ticket: out.TicketID, Event: wire.ReportStarted, Transport: wire.TransportRelay, Sharer: "alice"}); status != http.StatusNoContent {
		t.Fatalf("started: %d %+v", status, e)
	}
	var s wire.Session
	if status, e := call(t, f.client(&helper), "POST", f.intranet+"/v1/admin/sessions/"+out.Session.ID+"/end", nil, &s); status != 200 || s.State != wire.SessionEnded {
		t.Fatalf("end: %d %+v %+v", status, e, s)
	}
	if !closed(h) || !closed(d) {
		t.Error("a leg is still open after the end")
	}
	if ev := nextSessionEvent(t, ws); ev.Type != wire.EventSessionEnded || ev.Data[wire.EventDataSession] != out.Session.ID {
		t.Errorf("device told %+v", ev)
	}
	// The relay records its byte counts once both copies have ended.
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		if s, _ = f.mp.viewSession(context.Background(), out.Session.ID); s.BytesIn > 0 && s.BytesOut > 0 {
			break
		}
	}
	if s.Outcome != wire.OutcomeCompleted || !s.E2E || s.Transport != wire.TransportRelay || s.Sharer != "alice" || s.BytesIn == 0 || s.BytesOut == 0 {
		t.Errorf("audit %+v", s)
	}
}

// A helper's leg waiting for the device wakes with the outcome when the device reports a
// denial; a leg of an ended session is refused at once.
func TestRelayLegWokenByDenial(t *testing.T) {
	f := newFixture(t, sqliteDB(t), Options{})
	pc, _ := online(t, f, f.mp, f.intranet, "pc-1")
	helper := f.user(t, "hd", access.HelpDeskOperator)
	_, out, _ := startSession(t, f, f.intranet, helper, deviceID(pc), ticket.ModeControl)
	adminPath := "/v1/admin/sessions/" + out.Session.ID + "/relay?ticket=" + out.TicketID
	leg := dialLeg(t, f, f.intranet, helper, adminPath)
	waitPairs(t, f.mp, 1)
	for _, ev := range []string{wire.ReportConsentAsked, wire.ReportDenied} {
		if status, e := report(t, f, f.intranet, pc, out.Session.ID, wire.SessionReport{Ticket: out.TicketID, Event: ev}); status != http.StatusNoContent {
			t.Fatalf("%s: %d %+v", ev, status, e)
		}
	}
	if r := waitLeg(t, leg); r.status != http.StatusForbidden || r.err.Error.Code != "denied" {
		t.Errorf("waiting leg: %d %+v", r.status, r.err)
	}
	if r := waitLeg(t, dialLeg(t, f, f.intranet, pc, "/v1/sessions/"+out.Session.ID+"/relay?ticket="+out.TicketID)); r.status != http.StatusForbidden || r.err.Error.Code != "denied" {
		t.Errorf("leg after the end: %d %+v", r.status, r.err)
	}
}

// The helper on one MP, the device on another: the helper's MP forwards the leg to the
// device's MP, which splices; a denial reported at the device's MP reaches a leg waiting on
// the helper's.
func TestRelayAcrossMPs(t *testing.T) {
	f := newFixture(t, sqliteDB(t), Options{ID: "mp-d"})
	b := f.startMP(t, Options{ID: "mp-h"})
	testRelayAcrossMPs(t, f, b.intranet)
}

// The same on PostgreSQL, each MP with its own connections: the events between them go
// through LISTEN/NOTIFY.
func TestRelayAcrossMPsPostgres(t *testing.T) {
	dsn := sitedbtest.NewDSN(t, sitedb.Postgres)
	f := newFixture(t, sitedbtest.Open(t, sitedb.Postgres, dsn), Options{ID: "mp-d"})
	b := newFixture(t, sitedbtest.Open(t, sitedb.Postgres, dsn), Options{ID: "mp-h"})
	testRelayAcrossMPs(t, f, b.intranet)
}

func testRelayAcrossMPs(t *testing.T, f *fixture, bURL string) {
	pc, ws := online(t, f, f.mp, f.internet, "pc-1")
	b := struct{ intranet string }{bURL}
	helper := f.user(t, "hd", access.HelpDeskOperator)
	status, out, e := startSession(t, f, b.intranet, helper, deviceID(pc), ticket.ModeControl)
	if status != http.StatusCreated {
		t.Fatalf("start at the helper's MP: %d %+v", status, e)
	}
	if tk := ticketEvent(t, f, ws, deviceID(pc)); tk.MP != "mp-h" {
		t.Errorf("ticket signed by %s", tk.MP)
	}
	h := dialLeg(t, f, b.intranet, helper, "/v1/admin/sessions/"+out.Session.ID+"/relay?ticket="+out.TicketID)
	waitPairs(t, f.mp, 1) // the forwarded leg waits at the device's MP
	d := waitLeg(t, dialLeg(t, f, f.internet, pc, "/v1/sessions/"+out.Session.ID+"/relay?ticket="+out.TicketID))
	hr := waitLeg(t, h)
	if hr.status != http.StatusSwitchingProtocols || d.status != http.StatusSwitchingProtocols {
		t.Fatalf("legs answered %d %+v and %d %+v", hr.status, hr.err, d.status, d.err)
	}
	exchange(t, hr, d)
	// A second session, denied at the device's MP while the helper's leg waits on the other.
	_, out2, _ := startSession(t, f, b.intranet, helper, deviceID(pc), ticket.ModeView)
	h2 := dialLeg(t, f, b.intranet, helper, "/v1/admin/sessions/"+out2.Session.ID+"/relay?ticket="+out2.TicketID)
	waitPairs(t, f.mp, 2)
	if status, e := report(t, f, f.internet, pc, out2.Session.ID, wire.SessionReport{Ticket: out2.TicketID, Event: wire.ReportDenied}); status != http.StatusNoContent {
		t.Fatalf("denied: %d %+v", status, e)
	}
	if r := waitLeg(t, h2); r.status != http.StatusForbidden || r.err.Error.Code != "denied" {
		t.Errorf("the helper's leg on the other MP: %d %+v", r.status, r.err)
	}
	// The device's leg at the helper's MP (the device moved since the start) is forwarded
	// to the device's MP too.
	_, out3, _ := startSession(t, f, b.intranet, helper, deviceID(pc), ticket.ModeView)
	d3 := dialLeg(t, f, b.intranet, pc, "/v1/sessions/"+out3.Session.ID+"/relay?ticket="+out3.TicketID)
	waitPairs(t, f.mp, 2) // the first session's, and the forwarded device leg
	h3 := waitLeg(t, dialLeg(t, f, f.intranet, helper, "/v1/admin/sessions/"+out3.Session.ID+"/relay?ticket="+out3.TicketID))
	if dr := waitLeg(t, d3); dr.status != http.StatusSwitchingProtocols || h3.status != http.StatusSwitchingProtocols {
		t.Fatalf("legs answered %d %+v and %d %+v", h3.status, h3.err, dr.status, dr.err)
	} else {
		exchange(t, h3, dr)
	}
	// An MP-to-MP leg needs an MP certificate.
	if r := waitLeg(t, dialLeg(t, f, f.intranet, helper, "/v1/relay/"+out.Session.ID+"?ticket="+out.TicketID)); r.status != http.StatusForbidden || r.err.Error.Code != "not_an_mp" {
		t.Errorf("a user on the MP-to-MP route: %d %+v", r.status, r.err)
	}
}

// Sessions an MP brokered are interrupted when it starts again.
func TestSessionsInterruptedAtRestart(t *testing.T) {
	f := newFixture(t, sqliteDB(t), Options{})
	pc, _ := online(t, f, f.mp, f.intranet, "pc-1")
	b := f.startMP(t, Options{ID: "mp-b"})
	helper := f.user(t, "hd", access.HelpDeskOperator)
	_, out, _ := startSession(t, f, b.intranet, helper, deviceID(pc), ticket.ModeView)
	b.stop()
	f.startMP(t, Options{ID: "mp-b"})
	s, err := f.mp.viewSession(context.Background(), out.Session.ID)
	if err != nil || s.State != wire.SessionEnded || s.Outcome != wire.OutcomeInterrupted {
		t.Errorf("after the restart: %+v %v", s, err)
	}
}

// Reports move a session through its states; impossible ones are 409, bad bodies 400 or 413,
// another device's session 403.
func TestSessionReports(t *testing.T) {
	f := newFixture(t, sqliteDB(t), Options{})
	pc, _ := online(t, f, f.mp, f.intranet, "pc-1")
	other, _ := online(t, f, f.mp, f.intranet, "pc-2")
	helper := f.user(t, "hd", access.HelpDeskOperator)
	_, out, _ := startSession(t, f, f.intranet, helper, deviceID(pc), ticket.ModeView)
	id, tid := out.Session.ID, out.TicketID
	rep := func(ev string) wire.SessionReport { return wire.SessionReport{Ticket: tid, Event: ev} }
	steps := []struct {
		cert   tls.Certificate
		body   any
		status int
		state  string
	}{
		{other, rep(wire.ReportConsentAsked), 403, wire.SessionRequested},
		{pc, `{"ticket":"` + tid + `","event":"started","extra":1}`, 400, wire.SessionRequested},
		{pc, `{"ticket":"` + tid + `","event":"exploded"}`, 400, wire.SessionRequested},
		{pc, `{"ticket":"` + tid + `","event":"started"} {}`, 400, wire.SessionRequested},
		{pc, `{"ticket":"` + strings.Repeat("a", wire.MaxBody) + `"}`, 413, wire.SessionRequested},
		{pc, wire.SessionReport{Ticket: strings.Repeat("0", 32), Event: wire.ReportStarted}, 403, wire.SessionRequested},
		{pc, rep(wire.ReportMode), 400, wire.SessionRequested},
		{pc, wire.SessionReport{Ticket: tid, Event: wire.ReportDenied, Outcome: wire.OutcomeCompleted}, 400, wire.SessionRequested},
		{pc, wire.SessionReport{Ticket: tid, Event: wire.ReportEnded, Outcome: wire.OutcomeDenied}, 400, wire.SessionRequested},
		{pc, rep(wire.ReportConsentAsked), 204, wire.SessionWaiting},
		{pc, rep(wire.ReportAccepted), 204, wire.SessionWaiting},
		{pc, wire.SessionReport{Ticket: tid, Event: wire.ReportStarted, Transport: wire.TransportDirect}, 204, wire.SessionActive},
		{pc, rep(wire.ReportStarted), 409, wire.SessionActive},
		{pc, wire.SessionReport{Ticket: tid, Event: wire.ReportMode, Mode: ticket.ModeControl}, 204, wire.SessionActive},
		{pc, wire.SessionReport{Ticket: tid, Event: wire.ReportEnded, BytesIn: 10, BytesOut: 20}, 204, wire.SessionEnded},
		{pc, rep(wire.ReportEnded), 409, wire.SessionEnded},
	}
	for i, st := range steps {
		status, e := call(t, f.client(&st.cert), "POST", f.intranet+"/v1/sessions/"+id+"/report", st.body, nil)
		s, _ := f.mp.viewSession(context.Background(), id)
		if status != st.status || s.State != st.state {
			t.Errorf("step %d: %d %+v, state %s; want %d, %s", i, status, e, s.State, st.status, st.state)
		}
	}
	s, _ := f.mp.viewSession(context.Background(), id)
	if len(s.Modes) != 2 || s.Mode != ticket.ModeControl || s.Transport != wire.TransportDirect || s.BytesIn != 10 || s.BytesOut != 20 || s.Outcome != wire.OutcomeCompleted {
		t.Errorf("audit %+v", s)
	}
	// A refusal by the agent ends the session with its code.
	_, out, _ = startSession(t, f, f.intranet, helper, deviceID(pc), ticket.ModeView)
	if status, _ := report(t, f, f.intranet, pc, out.Session.ID, wire.SessionReport{Ticket: out.TicketID, Event: wire.ReportRefused, Code: "ticket_expired"}); status != 204 {
		t.Fatal(status)
	}
	if s, _ := f.mp.viewSession(context.Background(), out.Session.ID); s.Outcome != wire.OutcomeRefused || s.Error != "ticket_expired" {
		t.Errorf("refused: %+v", s)
	}
	// The agent names the outcome of a consent timeout, as it does (it once got 400).
	_, out, _ = startSession(t, f, f.intranet, helper, deviceID(pc), ticket.ModeView)
	if status, e := report(t, f, f.intranet, pc, out.Session.ID, wire.SessionReport{Ticket: out.TicketID, Event: wire.ReportConsentTimeout, Outcome: wire.OutcomeConsentTimeout}); status != 204 {
		t.Fatalf("consent-timeout report: %d %+v", status, e)
	}
	if s, _ := f.mp.viewSession(context.Background(), out.Session.ID); s.Outcome != wire.OutcomeConsentTimeout {
		t.Errorf("consent timeout: %+v", s)
	}
}

func FuzzSessionReport(f *testing.F) {
	f.Add([]byte(`{"ticket":"0123456789abcdef0123456789abcdef","event":"started","transport":"relay"}`))
	f.Add([]byte(`{"ticket":"x","event":"mode"}`))
	f.Add([]byte(`{"ticket":"0123456789abcdef0123456789abcdef","event":"ended","bytes_in":-1}`))
	f.Add([]byte(`[]`))
	f.Fuzz(func(t *testing.T, b []byte) {
		rep, err := decodeReport(b)
		if err != nil {
			return
		}
		if !ticket.ValidID(rep.Ticket) || rep.BytesIn < 0 || rep.BytesOut < 0 || (rep.Mode != "" && !ticket.ValidMode(rep.Mode)) {
			t.Fatalf("accepted %+v", rep)
		}
	})
}

// The device uploads the sealed recording; a ReadAudit user gets it decrypted, others not.
func TestSessionRecording(t *testing.T) {
	f := newFixture(t, sqliteDB(t), Options{})
	pc, _ := online(t, f, f.mp, f.intranet, "pc-1")
	other, _ := online(t, f, f.mp, f.intranet, "pc-2")
	helper := f.user(t, "hd", access.HelpDeskOperator)
	analyst := f.user(t, "ana", access.ReadOnlyAnalyst)
	var pol wire.Policy
	if status, _ := call(t, f.client(&pc), "GET", f.intranet+"/v1/policy", nil, &pol); status != 200 || pol.AuditKey == "" {
		t.Fatalf("policy %d without the audit key", status)
	}
	_, out, _ := startSession(t, f, f.intranet, helper, deviceID(pc), ticket.ModeView)
	cast := `{"version":2,"width":80,"height":24}` + "\n" + `[0.1,"o","hello"]` + "\n"
	sealed, err := recording.Seal(pol.AuditKey, out.Session.ID, []byte(cast))
	if err != nil {
		t.Fatal(err)
	}
	put := func(cert tls.Certificate) int {
		req, _ := http.NewRequest("POST", f.intranet+"/v1/sessions/"+out.Session.ID+"/recording", strings.NewReader(string(sealed)))
		resp, err := f.client(&cert).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if status := put(other); status != http.StatusForbidden {
		t.Errorf("another device's upload: %d", status)
	}
	if status := put(pc); status != http.StatusNoContent {
		t.Fatalf("upload: %d", status)
	}
	if status := put(pc); status != http.StatusConflict {
		t.Errorf("second upload: %d", status)
	}
	get := func(cert tls.Certificate) (int, string) {
		resp, err := f.client(&cert).Get(f.intranet + "/v1/admin/sessions/" + out.Session.ID + "/recording")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if status, body := get(analyst); status != 200 || body != cast {
		t.Errorf("ReadAudit: %d %q", status, body)
	}
	if status, _ := get(helper); status != http.StatusForbidden {
		t.Errorf("without ReadAudit: %d", status)
	}
	if s, _ := f.mp.viewSession(context.Background(), out.Session.ID); !s.Recorded {
		t.Error("not marked recorded")
	}
}

// Revoking the helper's certificate ends their session: legs closed, device told.
func TestRevocationEndsSessions(t *testing.T) {
	f := newFixture(t, sqliteDB(t), Options{})
	pc, ws := online(t, f, f.mp, f.intranet, "pc-1")
	helper := f.user(t, "hd", access.HelpDeskOperator)
	_, out, _ := startSession(t, f, f.intranet, helper, deviceID(pc), ticket.ModeView)
	ticketEvent(t, f, ws, deviceID(pc))
	if err := f.ca.Revoke(context.Background(), helper.Leaf.SerialNumber.String(), "keyCompromise"); err != nil {
		t.Fatal(err)
	}
	if ev := nextSessionEvent(t, ws); ev.Type != wire.EventSessionEnded || ev.Data[wire.EventDataSession] != out.Session.ID ||
		ev.Data[wire.EventDataOutcome] != wire.OutcomeFailed || ev.Data[wire.EventDataReason] != "helper_revoked" {
		t.Errorf("device told %+v", ev)
	}
	if s, _ := f.mp.viewSession(context.Background(), out.Session.ID); s.State != wire.SessionEnded || s.Error != "helper_revoked" {
		t.Errorf("after the revocation: %+v", s)
	}
}

// caAdmin is the issue spec of a user certificate for name (who must exist).
func caAdmin(name string) ca.IssueSpec { return ca.IssueSpec{Profile: ca.Admin, Subject: name} }

// A helper and a device both on the intranet, policy allowing it: the answer lists the
// device's session port on its addresses, and the ticket says direct; from the internet
// listener, neither.
func TestSessionDirect(t *testing.T) {
	f := newFixture(t, sqliteDB(t), Options{})
	pc, ws := online(t, f, f.mp, f.intranet, "pc-1")
	if status, e := call(t, f.client(&pc), "POST", f.intranet+"/v1/hello", wire.Hello{Addresses: []string{"10.1.2.3/24", "fd00::5"}}, nil); status != 200 {
		t.Fatalf("hello: %d %+v", status, e)
	}
	f.setRemoteControl(t, func(rc *wire.RemoteControlSettings) { rc.DirectPort = 2800 })
	helper := f.user(t, "hd", access.HelpDeskOperator)
	_, out, _ := startSession(t, f, f.intranet, helper, "pc-1", ticket.ModeView)
	if strings.Join(out.Direct, " ") != "10.1.2.3:2800 [fd00::5]:2800" || out.RelayAfterMS != relayAfterMS {
		t.Errorf("direct %v after %d ms", out.Direct, out.RelayAfterMS)
	}
	if tk := ticketEvent(t, f, ws, deviceID(pc)); !tk.Direct {
		t.Error("the ticket does not say direct")
	}
	_, out, _ = startSession(t, f, f.internet, helper, "pc-1", ticket.ModeView)
	if out.Direct != nil {
		t.Errorf("a helper on the internet got %v", out.Direct)
	}
	if tk := ticketEvent(t, f, ws, deviceID(pc)); tk.Direct {
		t.Error("a helper on the internet got a direct ticket")
	}
	f.setRemoteControl(t, func(rc *wire.RemoteControlSettings) { rc.AllowDirect = false })
	if _, out, _ = startSession(t, f, f.intranet, helper, "pc-1", ticket.ModeView); out.Direct != nil {
		t.Errorf("direct not allowed, got %v", out.Direct)
	}
	if out.ComplianceWarning != "" {
		t.Errorf("warning for a device of unknown compliance: %q", out.ComplianceWarning)
	}
	// A noncompliant device: a warning, never a block.
	if _, err := f.db.Exec(context.Background(), `UPDATE devices SET compliance = 'noncompliant' WHERE id = ?`, deviceID(pc)); err != nil {
		t.Fatal(err)
	}
	if status, out, _ := startSession(t, f, f.intranet, helper, "pc-1", ticket.ModeView); status != http.StatusCreated || out.ComplianceWarning == "" || out.Device.Compliance != "noncompliant" {
		t.Errorf("noncompliant: %d %q %+v", status, out.ComplianceWarning, out.Device)
	}
}

// A second helper joins an active session as viewer: a ticket of its own (view only) goes
// to the device; a session not active cannot be joined; the list shows each user their own
// sessions and a ReadAudit user all; only the helper or ManageDevices may end it.
func TestSessionJoinListEnd(t *testing.T) {
	f := newFixture(t, sqliteDB(t), Options{})
	pc, ws := online(t, f, f.mp, f.intranet, "pc-1")
	hd := f.user(t, "hd", access.HelpDeskOperator)
	hd2 := f.user(t, "hd2", access.HelpDeskOperator)
	analyst := f.user(t, "ana", access.ReadOnlyAnalyst)
	admin := f.user(t, "root", access.FullAdministrator)
	_, out, _ := startSession(t, f, f.intranet, hd, "pc-1", ticket.ModeControl)
	ticketEvent(t, f, ws, deviceID(pc))
	join := f.intranet + "/v1/admin/sessions/" + out.Session.ID + "/join"
	if status, e := call(t, f.client(&hd2), "POST", join, nil, nil); status != http.StatusConflict || e.Error.Code != "session_not_active" {
		t.Errorf("join before it started: %d %+v", status, e)
	}
	report(t, f, f.intranet, pc, out.Session.ID, wire.SessionReport{Ticket: out.TicketID, Event: wire.ReportStarted})
	var v wire.SessionStart
	if status, e := call(t, f.client(&hd2), "POST", join, nil, &v); status != http.StatusCreated || v.Role != ticket.RoleViewer || len(v.Modes) != 1 || v.TicketID == out.TicketID {
		t.Fatalf("join: %d %+v %+v", status, e, v)
	}
	if tk := ticketEvent(t, f, ws, deviceID(pc)); tk.Role != ticket.RoleViewer || tk.Helper != "hd2" || tk.ID != v.TicketID || tk.Mode != ticket.ModeView {
		t.Errorf("viewer ticket %+v", tk)
	}
	if status, _ := call(t, f.client(&analyst), "POST", join, nil, nil); status != http.StatusForbidden {
		t.Errorf("an analyst joined: %d", status)
	}
	// A join the device's policy refuses is audited as the viewer's refused session.
	f.setRemoteControl(t, func(rc *wire.RemoteControlSettings) { rc.PermittedViewers = []string{"hd"} })
	if status, e := call(t, f.client(&hd2), "POST", join, nil, nil); status != http.StatusForbidden || e.Error.Code != "not_permitted_viewer" {
		t.Errorf("a join outside permitted_viewers: %d %+v", status, e)
	}
	audited := false
	for _, x := range auditOf(t, f, deviceID(pc)) {
		audited = audited || (x.Helper == "hd2" && x.Outcome == wire.OutcomeRefused && x.Error == "not_permitted_viewer" && x.Reason == "join "+out.Session.ID)
	}
	if !audited {
		t.Errorf("no audit row for the refused join: %+v", auditOf(t, f, deviceID(pc)))
	}
	f.setRemoteControl(t, func(rc *wire.RemoteControlSettings) { rc.PermittedViewers = nil })
	var list []wire.Session
	for _, c := range []struct {
		cert tls.Certificate
		q    string
		n    int
	}{{hd, "", 1}, {hd2, "", 1}, {analyst, "", 2}, {analyst, "?active=1&helper=hd&since=2000-01-01T00:00:00Z", 1}, {analyst, "?device=nope", 0}} { // hd2 and the analyst see the refused join
		if status, e := call(t, f.client(&c.cert), "GET", f.intranet+"/v1/admin/sessions"+c.q, nil, &list); status != 200 || len(list) != c.n {
			t.Errorf("list %s: %d %+v %d sessions, want %d", c.q, status, e, len(list), c.n)
		}
	}
	if status, _ := call(t, f.client(&analyst), "GET", f.intranet+"/v1/admin/sessions?since=yesterday", nil, nil); status != 400 {
		t.Errorf("bad since: %d", status)
	}
	var s wire.Session
	if status, _ := call(t, f.client(&hd2), "GET", f.intranet+"/v1/admin/sessions/"+out.Session.ID, nil, &s); status != 200 || len(s.Viewers) != 1 {
		t.Errorf("the viewer's show: %d %+v", status, s)
	}
	end := f.intranet + "/v1/admin/sessions/" + out.Session.ID + "/end"
	if status, e := call(t, f.client(&hd2), "POST", end, nil, nil); status != http.StatusForbidden || e.Error.Code != "forbidden" {
		t.Errorf("another helper ended it: %d %+v", status, e)
	}
	if status, e := call(t, f.client(&admin), "POST", end, nil, &s); status != 200 || s.Error != "ended_by_admin" {
		t.Errorf("ManageDevices: %d %+v %+v", status, e, s)
	}
	if status, _ := call(t, f.client(&hd), "POST", end, nil, nil); status != http.StatusConflict {
		t.Errorf("ended twice: %d", status)
	}
}

// Sessions of an MP that stopped heartbeating are interrupted by the others; ended sessions
// older than the retention are purged with their tickets.
func TestDeadMPInterruptedAndRetention(t *testing.T) {
	f := newFixture(t, sqliteDB(t), Options{})
	pc, _ := online(t, f, f.mp, f.intranet, "pc-1")
	helper := f.user(t, "hd", access.HelpDeskOperator)
	_, out, _ := startSession(t, f, f.intranet, helper, "pc-1", ticket.ModeView)
	ctx := context.Background()
	if _, err := f.db.Exec(ctx, `UPDATE sessions SET mp_id = 'mp-gone' WHERE id = ?`, out.Session.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := f.db.Exec(ctx, `INSERT INTO management_points (id, mode, intranet_url, internet_url, last_seen) VALUES ('mp-gone', 'both', '', '', 1)`); err != nil {
		t.Fatal(err)
	}
	dead := `SELECT id FROM management_points WHERE last_seen < ?`
	if n, err := f.mp.interruptSessions(ctx, `mp_id IN (`+dead+`) OR device_mp IN (`+dead+`)`, f.mp.aliveSince(), f.mp.aliveSince()); err != nil || n != 1 {
		t.Fatalf("interrupted %d, %v", n, err)
	}
	if s, _ := f.mp.viewSession(ctx, out.Session.ID); s.Outcome != wire.OutcomeInterrupted {
		t.Errorf("%+v", s)
	}
	_ = pc
	if n, err := f.mp.purgeSessions(ctx, time.Now().Add(-time.Hour)); err != nil || n != 0 {
		t.Errorf("purged %d recent sessions, %v", n, err)
	}
	if n, err := f.mp.purgeSessions(ctx, time.Now().Add(time.Hour)); err != nil || n != 1 {
		t.Errorf("purged %d, %v", n, err)
	}
	if tk, err := f.mp.ticket(ctx, out.TicketID); tk != nil || err != nil {
		t.Errorf("ticket kept: %+v %v", tk, err)
	}
}

// GET /v1/crl answers the issuing CA's CRL to any site certificate.
func TestCRLRoute(t *testing.T) {
	f := newFixture(t, sqliteDB(t), Options{})
	pc := f.device(t, "pc-1")
	resp, err := f.client(&pc).Get(f.intranet + "/v1/crl")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	switch resp.StatusCode {
	case http.StatusOK:
		if _, err := x509.ParseRevocationList(b); err != nil {
			t.Errorf("not a CRL: %v", err)
		}
	default:
		t.Errorf("GET /v1/crl: %d %s", resp.StatusCode, b)
	}
}

// The new remote-control fields are validated, naming the key; stored documents without
// them read with the defaults.
func TestRemoteControlPolicyFields(t *testing.T) {
	base := DefaultPolicy(testBootstrap)
	for _, c := range []struct {
		edit func(*wire.RemoteControlSettings)
		key  string
	}{
		{func(rc *wire.RemoteControlSettings) { rc.ConsentTimeout = "1s" }, "remote_control.consent_timeout"},
		{func(rc *wire.RemoteControlSettings) { rc.ConsentTimeout = "soon" }, "remote_control.consent_timeout"},
		{func(rc *wire.RemoteControlSettings) { rc.DirectPort = 70000 }, "remote_control.direct_port"},
		{func(rc *wire.RemoteControlSettings) { rc.MaxDuration = "30s" }, "remote_control.max_duration"},
		{func(rc *wire.RemoteControlSettings) { rc.IdleTimeout = "forever" }, "remote_control.idle_timeout"},
	} {
		p := base
		c.edit(&p.RemoteControl)
		if err := ValidatePolicy(p); err == nil || !strings.Contains(err.Error(), c.key) {
			t.Errorf("%s: %v", c.key, err)
		}
	}
	p := base
	p.RemoteControl.MaxDuration, p.RemoteControl.IdleTimeout = "2h", "0"
	if err := ValidatePolicy(p); err != nil {
		t.Error(err)
	}
	f := newFixture(t, sqliteDB(t), Options{})
	ctx := context.Background()
	if _, err := f.db.Exec(ctx, `INSERT INTO policies (name, version, document, updated_at, updated_by) VALUES ('old', 1, ?, 0, 'test')`,
		`{"name":"old","version":1,"remote_control":{"enabled":true,"access_level":"full"}}`); err != nil {
		t.Fatal(err)
	}
	got, err := f.mp.Policy(ctx, "old")
	if err != nil || got.RemoteControl.ConsentTimeout != "30s" || got.RemoteControl.DirectPort != 2701 {
		t.Errorf("old document read as %+v, %v", got.RemoteControl, err)
	}
}

// Blocking a device ends its sessions and closes their relay legs.
func TestBlockEndsSessions(t *testing.T) {
	f := newFixture(t, sqliteDB(t), Options{})
	pc, _ := online(t, f, f.mp, f.intranet, "pc-1")
	helper := f.user(t, "hd", access.HelpDeskOperator)
	_, out, _ := startSession(t, f, f.intranet, helper, "pc-1", ticket.ModeView)
	h := dialLeg(t, f, f.intranet, helper, "/v1/admin/sessions/"+out.Session.ID+"/relay?ticket="+out.TicketID)
	waitPairs(t, f.mp, 1)
	if _, err := f.mp.Block(context.Background(), deviceID(pc), true); err != nil {
		t.Fatal(err)
	}
	if r := waitLeg(t, h); r.status != http.StatusGone || r.err.Error.Code != "session_ended" {
		t.Errorf("the waiting leg: %d %+v", r.status, r.err)
	}
	if s, _ := f.mp.viewSession(context.Background(), out.Session.ID); s.State != wire.SessionEnded || s.Error != "device_blocked" {
		t.Errorf("after the block: %+v", s)
	}
}
