package mp

import (
	"io"
	"os"
	"runtime"
	"strconv"
	"testing"
	"time"

	"github.com/ibcm-project/ibcm/internal/access"
	"github.com/ibcm-project/ibcm/internal/wire"
	"github.com/ibcm-project/ibcm/remote/ticket"
)

// TestRelayMemory measures what spliced sessions cost: IBCM_RELAY_MEM=N relays N sessions
// (both legs dialed from this process, so the figure includes the two client TLS
// connections of each session as well as the MP's side) and reports heap and stack in use
// and goroutines per session. It is a measurement, not part of the suite.
func TestRelayMemory(t *testing.T) {
	n, _ := strconv.Atoi(os.Getenv("IBCM_RELAY_MEM"))
	if n <= 0 {
		t.Skip("set IBCM_RELAY_MEM=<sessions> to measure")
	}
	f := newFixture(t, sqliteDB(t), Options{MaxInFlight: 4096})
	pc, _ := online(t, f, f.mp, f.intranet, "pc-1")
	helper := f.user(t, "hd", access.HelpDeskOperator)
	type sess struct{ id, tid string }
	var ss []sess
	for range n {
		_, out, e := startSession(t, f, f.intranet, helper, deviceID(pc), ticket.ModeView)
		if out.TicketID == "" {
			t.Fatalf("start: %+v", e)
		}
		ss = append(ss, sess{out.Session.ID, out.TicketID})
	}
	measure := func() (uint64, int) {
		runtime.GC()
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return ms.HeapInuse + ms.StackInuse, runtime.NumGoroutine()
	}
	time.Sleep(100 * time.Millisecond)
	before, g0 := measure()
	var legs []legResult
	for _, s := range ss {
		d := dialLeg(t, f, f.intranet, pc, "/v1/sessions/"+s.id+"/relay?ticket="+s.tid)
		h := waitLeg(t, dialLeg(t, f, f.intranet, helper, "/v1/admin/sessions/"+s.id+"/relay?ticket="+s.tid))
		dr := waitLeg(t, d)
		if h.status != 101 || dr.status != 101 {
			t.Fatalf("legs %d %d", h.status, dr.status)
		}
		exchange(t, h, dr) // light traffic, then idle
		legs = append(legs, h, dr)
	}
	time.Sleep(200 * time.Millisecond)
	after, g1 := measure()
	// The MP lets go of its side of every session (its connections, goroutines and
	// buffers); the client ends stay referenced, unread: what is freed is the MP's share.
	for _, s := range ss {
		f.mp.relays.endSession(s.id, "", endError(wire.OutcomeCompleted, ""))
	}
	for deadline := time.Now().Add(10 * time.Second); runtime.NumGoroutine() > g0 && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	ended, _ := measure()
	t.Logf("%d relayed sessions: %.1f KiB per session in all (the MP's side and both client ends), of which the MP's side %.1f KiB; %.1f goroutines per session on the MP",
		n, float64(after-before)/float64(n)/1024, float64(int64(after)-int64(ended))/float64(n)/1024, float64(g1-g0)/float64(n))
	runtime.KeepAlive(legs)
}

// TestRelayBulk measures the relay's throughput: IBCM_RELAY_BULK=<MiB> sends that much
// from the device's leg to the helper's through the MP (both ends in this process, so the
// figure is a lower bound). A measurement, not part of the suite.
func TestRelayBulk(t *testing.T) {
	mib, _ := strconv.Atoi(os.Getenv("IBCM_RELAY_BULK"))
	if mib <= 0 {
		t.Skip("set IBCM_RELAY_BULK=<MiB> to measure")
	}
	f := newFixture(t, sqliteDB(t), Options{})
	pc, _ := online(t, f, f.mp, f.intranet, "pc-1")
	helper := f.user(t, "hd", access.HelpDeskOperator)
	_, out, _ := startSession(t, f, f.intranet, helper, deviceID(pc), ticket.ModeView)
	d := dialLeg(t, f, f.intranet, pc, "/v1/sessions/"+out.Session.ID+"/relay?ticket="+out.TicketID)
	h := waitLeg(t, dialLeg(t, f, f.intranet, helper, "/v1/admin/sessions/"+out.Session.ID+"/relay?ticket="+out.TicketID))
	dr := waitLeg(t, d)
	total := int64(mib) << 20
	start := time.Now()
	go func() {
		buf := make([]byte, 32<<10)
		for sent := int64(0); sent < total; sent += int64(len(buf)) {
			if _, err := dr.conn.Write(buf); err != nil {
				return
			}
		}
	}()
	_ = h.conn.SetReadDeadline(time.Now().Add(2 * time.Minute))
	if _, err := io.CopyN(io.Discard, h.br, total); err != nil {
		t.Fatal(err)
	}
	el := time.Since(start)
	t.Logf("%d MiB through the relay in %v: %.0f MiB/s", mib, el, float64(mib)/el.Seconds())
}
