package mp

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/ibcm-project/ibcm/internal/access"
	"github.com/ibcm-project/ibcm/internal/wire"
	"github.com/ibcm-project/ibcm/remote/ticket"
)

// security review 2: the helper's relay leg wrote its direct= into the session whatever
// the session's state: once the session had started over the relay, or had ended, the
// helper could still dial a leg with its ticket (valid up to 15 minutes) and change the
// audit record's direct_error after the fact. Only a pending session takes it now.
func TestRelayDirectErrorOnlyWhilePending(t *testing.T) {
	f := newFixture(t, sqliteDB(t), Options{})
	pc, ws := online(t, f, f.mp, f.intranet, "pc-1")
	helper := f.user(t, "hd", access.HelpDeskOperator)
	_, out, _ := startSession(t, f, f.intranet, helper, deviceID(pc), ticket.ModeControl)
	ticketEvent(t, f, ws, deviceID(pc))
	adminPath := "/v1/admin/sessions/" + out.Session.ID + "/relay?ticket=" + out.TicketID
	dev := dialLeg(t, f, f.internet, pc, "/v1/sessions/"+out.Session.ID+"/relay?ticket="+out.TicketID)
	waitPairs(t, f.mp, 1)
	h := waitLeg(t, dialLeg(t, f, f.intranet, helper, adminPath)) // no direct tried: nothing to say
	d := waitLeg(t, dev)
	if h.status != http.StatusSwitchingProtocols || d.status != http.StatusSwitchingProtocols {
		t.Fatalf("legs answered %d %+v and %d %+v", h.status, h.err, d.status, d.err)
	}
	if status, e := report(t, f, f.internet, pc, out.Session.ID, wire.SessionReport{Ticket: out.TicketID, Event: wire.ReportStarted, Transport: wire.TransportRelay}); status != http.StatusNoContent {
		t.Fatalf("started: %d %+v", status, e)
	}
	// Active: a second leg of the ticket is refused, and says nothing that is kept.
	if r := waitLeg(t, dialLeg(t, f, f.intranet, helper, adminPath+"&direct=failed")); r.status != http.StatusConflict {
		t.Errorf("a second leg of an active session: %d %+v", r.status, r.err)
	}
	if s, _ := f.mp.viewSession(context.Background(), out.Session.ID); s.DirectError != "" {
		t.Errorf("an active session's direct_error became %q", s.DirectError)
	}
	if status, e := call(t, f.client(&helper), "POST", f.intranet+"/v1/admin/sessions/"+out.Session.ID+"/end", nil, nil); status != 200 {
		t.Fatalf("end: %d %+v", status, e)
	}
	// Ended: the leg is answered session_ended, and the record stays as it was.
	if r := waitLeg(t, dialLeg(t, f, f.intranet, helper, adminPath+"&direct=timeout")); r.status != http.StatusGone {
		t.Errorf("a leg of an ended session: %d %+v", r.status, r.err)
	}
	if s, _ := f.mp.viewSession(context.Background(), out.Session.ID); s.DirectError != "" || s.State != wire.SessionEnded {
		t.Errorf("the ended session's record changed: state %s, direct_error %q", s.State, s.DirectError)
	}
}

// security review 2: with IBCM_RELAY_CAPTURE_DIR set, the relay appended every byte either
// leg sent to its capture file, without a bound: any helper allowed a session (or any
// device in one) could fill the MP's disk, where the site database may live too. A capture
// file now stops at relayCaptureMax; the relay itself goes on forwarding.
func TestRelayCaptureIsBounded(t *testing.T) {
	capture := t.TempDir()
	t.Setenv(RelayCaptureEnv, capture)
	old := relayCaptureMax
	relayCaptureMax = 1000
	t.Cleanup(func() { relayCaptureMax = old })
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
		t.Fatalf("legs answered %d %+v and %d %+v", h.status, h.err, d.status, d.err)
	}
	sent := bytes.Repeat([]byte("0123456789abcdef"), 4096) // 64 KiB, in several reads of the relay
	go func() { _, _ = h.conn.Write(sent) }()
	got := make([]byte, len(sent))
	_ = d.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(d.br, got); err != nil || !bytes.Equal(got, sent) {
		t.Fatalf("the relay forwarded %d bytes, %v", len(got), err)
	}
	h.conn.Close()
	d.conn.Close()
	waitPairs(t, f.mp, 0) // both copies are over: the files are closed
	fi, err := os.Stat(filepath.Join(capture, out.Session.ID+"-"+out.TicketID+"-to-device.bin"))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Size() != relayCaptureMax {
		t.Errorf("the capture holds %d bytes of the %d forwarded, want %d", fi.Size(), len(sent), relayCaptureMax)
	}
}
