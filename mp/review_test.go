package mp

import (
	"context"
	"crypto/tls"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/ibcm-project/ibcm/ca"
	"github.com/ibcm-project/ibcm/internal/access"
	"github.com/ibcm-project/ibcm/internal/wire"
	"github.com/ibcm-project/ibcm/remote/ticket"
)

// security review: a session's reason reaches the device user's terminal in the consent
// question; the MP took any character but newline, carriage return and NUL, so a helper
// could send escape sequences that rewrite the question.
func TestSessionStartRefusesControlCharactersInReason(t *testing.T) {
	f := newFixture(t, sqliteDB(t), Options{})
	pc, _ := online(t, f, f.mp, f.intranet, "pc-1")
	hd := f.user(t, "hd", access.HelpDeskOperator)
	for _, reason := range []string{"\x1b[2K\x1b[1Aview only", "a\u009b2Jb", "bell\x07", "del\x7f", "tab\there"} {
		var out wire.SessionStart
		status, e := call(t, f.client(&hd), "POST", f.intranet+"/v1/admin/sessions",
			wire.SessionStartRequest{Device: deviceID(pc), Mode: ticket.ModeView, Reason: reason}, &out)
		if status != http.StatusBadRequest || e.Error.Code != "bad_request" {
			t.Errorf("reason %q: %d %+v", reason, status, e)
		}
	}
	var out wire.SessionStart
	if status, e := call(t, f.client(&hd), "POST", f.intranet+"/v1/admin/sessions",
		wire.SessionStartRequest{Device: deviceID(pc), Mode: ticket.ModeView, Reason: "imprimante 打印机 طابعة"}, &out); status != http.StatusCreated {
		t.Errorf("a reason in other scripts: %d %+v", status, e)
	}
}

// security review: the relay keeps its own byte counts when the device reports less, but
// only when the relay finishes after the device's report: a device whose "ended" report
// came after the relay had recorded its counts wrote smaller ones over them.
func TestDeviceReportDoesNotLowerRelayByteCounts(t *testing.T) {
	f := newFixture(t, sqliteDB(t), Options{})
	pc, ws := online(t, f, f.mp, f.intranet, "pc-1")
	helper := f.user(t, "hd", access.HelpDeskOperator)
	_, out, _ := startSession(t, f, f.intranet, helper, deviceID(pc), ticket.ModeControl)
	ticketEvent(t, f, ws, deviceID(pc))
	dev := dialLeg(t, f, f.internet, pc, "/v1/sessions/"+out.Session.ID+"/relay?ticket="+out.TicketID)
	waitPairs(t, f.mp, 1)
	h := waitLeg(t, dialLeg(t, f, f.intranet, helper, "/v1/admin/sessions/"+out.Session.ID+"/relay?ticket="+out.TicketID))
	d := waitLeg(t, dev)
	if h.status != http.StatusSwitchingProtocols || d.status != http.StatusSwitchingProtocols {
		t.Fatalf("legs answered %d and %d", h.status, d.status)
	}
	if status, e := report(t, f, f.internet, pc, out.Session.ID, wire.SessionReport{Ticket: out.TicketID, Event: wire.ReportStarted}); status != http.StatusNoContent {
		t.Fatalf("started: %d %+v", status, e)
	}
	exchange(t, h, d)
	h.conn.Close() // the helper leaves: the relay records its counts
	var s wire.Session
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		if s, _ = f.mp.viewSession(context.Background(), out.Session.ID); s.BytesIn > 0 && s.BytesOut > 0 {
			break
		}
	}
	relayIn, relayOut := s.BytesIn, s.BytesOut
	if relayIn == 0 || relayOut == 0 {
		t.Fatalf("the relay recorded no byte counts: %+v", s)
	}
	if status, e := report(t, f, f.internet, pc, out.Session.ID, wire.SessionReport{Ticket: out.TicketID, Event: wire.ReportEnded, BytesIn: 1, BytesOut: 1}); status != http.StatusNoContent {
		t.Fatalf("ended: %d %+v", status, e)
	}
	s, _ = f.mp.viewSession(context.Background(), out.Session.ID)
	if s.State != wire.SessionEnded || s.BytesIn < relayIn || s.BytesOut < relayOut {
		t.Errorf("after the device's report: %d/%d bytes, the relay counted %d/%d (%+v)", s.BytesIn, s.BytesOut, relayIn, relayOut, s)
	}
}

// The security review's attempts on the relay and the session routes from everything else
// of the site that holds a certificate: each is refused with its code.
func TestSessionRoutesRefuseOthers(t *testing.T) {
	f := newFixture(t, sqliteDB(t), Options{})
	ctx := context.Background()
	pc, ws := online(t, f, f.mp, f.intranet, "pc-1")
	other, _ := online(t, f, f.mp, f.intranet, "pc-2")
	hd := f.user(t, "hd", access.HelpDeskOperator)
	hd2 := f.user(t, "hd2", access.HelpDeskOperator)
	_, out, _ := startSession(t, f, f.intranet, hd, deviceID(pc), ticket.ModeControl)
	ticketEvent(t, f, ws, deviceID(pc))
	_, out2, _ := startSession(t, f, f.intranet, hd2, deviceID(pc), ticket.ModeView)
	ticketEvent(t, f, ws, deviceID(pc))
	sid := out.Session.ID
	leg := func(id, tid string) string { return "/v1/admin/sessions/" + id + "/relay?ticket=" + tid }

	// A second helper leg for one ticket.
	first := dialLeg(t, f, f.intranet, hd, leg(sid, out.TicketID))
	waitPairs(t, f.mp, 1)
	if r := waitLeg(t, dialLeg(t, f, f.intranet, hd, leg(sid, out.TicketID))); r.status != http.StatusConflict || r.err.Error.Code != "leg_taken" {
		t.Errorf("a second leg of one ticket: %d %+v", r.status, r.err)
	}
	// Another helper's ticket, and a ticket on another session's path.
	if r := waitLeg(t, dialLeg(t, f, f.intranet, hd, leg(out2.Session.ID, out2.TicketID))); r.status != http.StatusForbidden || r.err.Error.Code != "not_your_ticket" {
		t.Errorf("another helper's ticket: %d %+v", r.status, r.err)
	}
	if r := waitLeg(t, dialLeg(t, f, f.intranet, hd, leg(out2.Session.ID, out.TicketID))); r.status != http.StatusNotFound {
		t.Errorf("a ticket on another session's path: %d %+v", r.status, r.err)
	}
	// A device on the helpers' route, and on the MP-to-MP route; a DP on the latter.
	if r := waitLeg(t, dialLeg(t, f, f.intranet, pc, leg(sid, out.TicketID))); r.status != http.StatusForbidden {
		t.Errorf("a device on the helper's route: %d %+v", r.status, r.err)
	}
	dp := f.issue(t, ca.IssueSpec{Profile: ca.SiteServer, Subject: "dp", DNS: []string{"dp.corp.example"}, Role: "dp"})
	for name, cert := range map[string]tls.Certificate{"a device": pc, "a DP": dp, "a helper": hd} {
		if r := waitLeg(t, dialLeg(t, f, f.intranet, cert, "/v1/relay/"+sid+"?ticket="+out.TicketID+"&side=device")); r.status != http.StatusForbidden || r.err.Error.Code != "not_an_mp" {
			t.Errorf("%s on the MP-to-MP relay: %d %+v", name, r.status, r.err)
		}
	}
	// Another device: its leg, its reports, its recording.
	if r := waitLeg(t, dialLeg(t, f, f.intranet, other, "/v1/sessions/"+sid+"/relay?ticket="+out.TicketID)); r.status != http.StatusForbidden || r.err.Error.Code != "not_your_session" {
		t.Errorf("another device's leg: %d %+v", r.status, r.err)
	}
	if status, e := report(t, f, f.intranet, other, sid, wire.SessionReport{Ticket: out.TicketID, Event: wire.ReportEnded}); status != http.StatusForbidden || e.Error.Code != "not_your_session" {
		t.Errorf("another device's report: %d %+v", status, e)
	}
	if status, e := report(t, f, f.intranet, pc, sid, wire.SessionReport{Ticket: out2.TicketID, Event: wire.ReportEnded}); status != http.StatusForbidden {
		t.Errorf("a report naming another session's ticket: %d %+v", status, e)
	}
	if status, e := call(t, f.client(&other), "POST", f.intranet+"/v1/sessions/"+sid+"/recording", "sealed", nil); status != http.StatusForbidden || e.Error.Code != "not_your_session" {
		t.Errorf("another device's recording: %d %+v", status, e)
	}
	// Each of those refusals is audited: among the other device's status messages, and as
	// a refused session of the helper who presented another's ticket.
	msgs, err := f.mp.Messages(ctx, deviceID(other), time.Time{}, 100)
	if err != nil {
		t.Fatal(err)
	}
	refusedMsgs := 0
	for _, m := range msgs.Messages {
		if m.Component == "remote-control" && strings.Contains(m.Text, "(not_your_session)") {
			refusedMsgs++
		}
	}
	if refusedMsgs != 3 {
		t.Errorf("%d audited refusals of the other device, want 3 (leg, report, recording): %+v", refusedMsgs, msgs.Messages)
	}
	audited := false
	for _, x := range auditOf(t, f, deviceID(pc)) {
		audited = audited || (x.Helper == "hd" && x.Outcome == wire.OutcomeRefused && x.Error == "not_your_ticket" && x.Reason == "relay "+out2.Session.ID)
	}
	if !audited {
		t.Errorf("no audit row for the leg on another helper's ticket")
	}
	// The helper reads no recording without ReadAudit; a helper scoped elsewhere sees no session.
	if status, e := call(t, f.client(&hd), "GET", f.intranet+"/v1/admin/sessions/"+sid+"/recording", nil, nil); status != http.StatusForbidden || e.Error.Code != "forbidden" {
		t.Errorf("the recording without ReadAudit: %d %+v", status, e)
	}
	if err := f.mp.CreateGroup(ctx, wire.Group{Name: "elsewhere"}); err != nil {
		t.Fatal(err)
	}
	if err := f.ca.Access().AddUser(ctx, access.User{Name: "scoped"}, "test"); err != nil {
		t.Fatal(err)
	}
	if err := f.ca.Access().Assign(ctx, "scoped", access.HelpDeskOperator, []string{"elsewhere"}, "test"); err != nil {
		t.Fatal(err)
	}
	scoped := f.issue(t, caAdmin("scoped"))
	report(t, f, f.intranet, pc, sid, wire.SessionReport{Ticket: out.TicketID, Event: wire.ReportStarted})
	for _, c := range []struct{ method, path string }{{"POST", "/join"}, {"GET", ""}, {"POST", "/end"}} {
		if status, e := call(t, f.client(&scoped), c.method, f.intranet+"/v1/admin/sessions/"+sid+c.path, nil, nil); status != http.StatusNotFound || e.Error.Code != "not_found" {
			t.Errorf("%s %s out of scope: %d %+v", c.method, c.path, status, e)
		}
	}
	// The waiting leg wakes when its helper ends the session.
	if status, e := call(t, f.client(&hd), "POST", f.intranet+"/v1/admin/sessions/"+sid+"/end", nil, nil); status != 200 {
		t.Fatalf("end: %d %+v", status, e)
	}
	if r := waitLeg(t, first); r.status != http.StatusGone || r.err.Error.Code != "session_ended" {
		t.Errorf("the waiting leg at the end: %d %+v", r.status, r.err)
	}
}
