package mp

import (
	"bytes"
	"context"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/ibcm-project/ibcm/internal/access"
	"github.com/ibcm-project/ibcm/internal/wire"
	"github.com/ibcm-project/ibcm/remote/ticket"
)

// The helper's leg says why direct lost (direct=closed|timeout|failed): the session keeps
// it, a started report over the direct connection clears it, anything else is refused with
// 400; with IBCM_RELAY_CAPTURE_DIR set the relay writes each direction's bytes there, 0600.
func TestRelayDirectErrorAndCapture(t *testing.T) {
	capture := t.TempDir()
	t.Setenv(RelayCaptureEnv, capture)
	f := newFixture(t, sqliteDB(t), Options{})
	pc, ws := online(t, f, f.mp, f.intranet, "pc-1")
	helper := f.user(t, "hd", access.HelpDeskOperator)
	_, out, _ := startSession(t, f, f.intranet, helper, deviceID(pc), ticket.ModeControl)
	ticketEvent(t, f, ws, deviceID(pc))
	adminPath := "/v1/admin/sessions/" + out.Session.ID + "/relay?ticket=" + out.TicketID
	for _, bad := range []string{"&direct=", "&direct=refused", "&direct=closed&direct=timeout", "&direct=CLOSED", "&direct=%zz"} {
		if r := waitLeg(t, dialLeg(t, f, f.intranet, helper, adminPath+bad)); r.status != http.StatusBadRequest || r.err.Error.Code != "bad_request" {
			t.Errorf("%s: %d %+v", bad, r.status, r.err)
		}
	}
	dev := dialLeg(t, f, f.internet, pc, "/v1/sessions/"+out.Session.ID+"/relay?ticket="+out.TicketID)
	waitPairs(t, f.mp, 1)
	h := waitLeg(t, dialLeg(t, f, f.intranet, helper, adminPath+"&direct=timeout"))
	d := waitLeg(t, dev)
	if h.status != http.StatusSwitchingProtocols || d.status != http.StatusSwitchingProtocols {
		t.Fatalf("legs answered %d %+v and %d %+v", h.status, h.err, d.status, d.err)
	}
	if s, _ := f.mp.viewSession(context.Background(), out.Session.ID); s.DirectError != wire.DirectTimeout {
		t.Errorf("direct_error %q, want timeout", s.DirectError)
	}
	exchange(t, h, d)
	if status, e := report(t, f, f.internet, pc, out.Session.ID, wire.SessionReport{Ticket: out.TicketID, Event: wire.ReportStarted, Transport: wire.TransportRelay}); status != http.StatusNoContent {
		t.Fatalf("started: %d %+v", status, e)
	}
	if s, _ := f.mp.viewSession(context.Background(), out.Session.ID); s.DirectError != wire.DirectTimeout || s.Transport != wire.TransportRelay {
		t.Errorf("after started over the relay: %+v", s)
	}
	for _, dir := range []string{"to-device", "from-device"} {
		name := filepath.Join(capture, out.Session.ID+"-"+out.TicketID+"-"+dir+".bin")
		var b []byte
		for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
			if b, _ = os.ReadFile(name); len(b) > 0 {
				break
			}
		}
		if !bytes.Contains(b, []byte("hello through the relay")) {
			t.Errorf("capture %s: %q", dir, b)
		}
		if fi, err := os.Stat(name); err != nil || fi.Mode().Perm() != 0o600 {
			t.Errorf("capture %s: %v %v", dir, fi.Mode(), err)
		}
	}

	// A second session: the helper's relay leg said closed, then direct won: no error kept.
	_, out, _ = startSession(t, f, f.intranet, helper, deviceID(pc), ticket.ModeControl)
	ticketEvent(t, f, ws, deviceID(pc))
	adminPath = "/v1/admin/sessions/" + out.Session.ID + "/relay?ticket=" + out.TicketID
	h.conn.Close()
	d.conn.Close()
	waitPairs(t, f.mp, 0)
	hl := dialLeg(t, f, f.intranet, helper, adminPath+"&direct=closed")
	waitPairs(t, f.mp, 1) // the leg waits: what it said is recorded
	if s, _ := f.mp.viewSession(context.Background(), out.Session.ID); s.DirectError != wire.DirectClosed {
		t.Errorf("direct_error %q, want closed", s.DirectError)
	}
	if status, e := report(t, f, f.internet, pc, out.Session.ID, wire.SessionReport{Ticket: out.TicketID, Event: wire.ReportStarted, Transport: wire.TransportDirect}); status != http.StatusNoContent {
		t.Fatalf("started: %d %+v", status, e)
	}
	if s, _ := f.mp.viewSession(context.Background(), out.Session.ID); s.DirectError != "" || s.Transport != wire.TransportDirect {
		t.Errorf("after started direct: %+v", s)
	}
	f.mp.relays.endSession(out.Session.ID, "", endError(wire.OutcomeCompleted, ""))
	waitLeg(t, hl)
}

// FuzzRelayQuery: the query of a relay leg is parsed without panicking; what it accepts is
// one ticket id and at most one known direct= value.
func FuzzRelayQuery(f *testing.F) {
	for _, q := range []string{"ticket=0123456789abcdef0123456789abcdef", "ticket=0123456789abcdef0123456789abcdef&direct=closed",
		"direct=timeout&direct=timeout", "direct=%zz", "direct=failed;x", ""} {
		f.Add(q)
	}
	f.Fuzz(func(t *testing.T, q string) {
		r := &http.Request{ProtoMajor: 1, Header: http.Header{"Connection": {"Upgrade"}, "Upgrade": {wire.RelayProtocol}}, URL: &url.URL{Path: "/v1/admin/sessions/x/relay", RawQuery: q}}
		r.SetPathValue("id", "0123456789abcdef0123456789abcdef")
		d, err := relayDirectError(r)
		if err == nil && d != "" && d != wire.DirectClosed && d != wire.DirectTimeout && d != wire.DirectFailed {
			t.Fatalf("accepted direct=%q", d)
		}
		if tk, err := checkRelayRequest(r); err == nil && !ticket.ValidID(tk) {
			t.Fatalf("accepted ticket %q", tk)
		}
	})
}
