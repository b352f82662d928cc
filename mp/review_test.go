package mp

import (
	"context"
	"net/http"
	"testing"
	"time"

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
