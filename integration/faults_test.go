package integration

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	osexec "os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/miekg/dns"

	"github.com/ibcm-project/ibcm/internal/bindtest"
	"github.com/ibcm-project/ibcm/internal/peertest"
	"github.com/ibcm-project/ibcm/internal/pgtest"
	"github.com/ibcm-project/ibcm/internal/sitedb"
	"github.com/ibcm-project/ibcm/internal/wire"
)

// The fault tests of issue #8: the site survives PostgreSQL restarting under load, an MP
// killed, the CA down during renewal, and a flapping network.

// TestFaultPostgresRestart: PostgreSQL stops (pg_ctl stop -m fast, then a crash with
// -m immediate) and starts again on the same port while agents send status messages. Every
// message is stored exactly once, the MPs recover by themselves, and LISTEN/NOTIFY resumes:
// a block through MP 1 after the restarts closes the device's channel on MP 2 within a second.
func TestFaultPostgresRestart(t *testing.T) {
	pg := ownPostgres(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	dsn, err := pg.NewDatabase(ctx)
	if err != nil {
		t.Fatal(err)
	}
	s := initSiteDSN(t, "postgres", dsn)
	s.start(t, "site", "up", "--dir", s.dir)
	_, mp2Out, _ := addMP(t, s, "mp2")

	watched := enrollDevice(t, s, "pc-watched")
	channel := openChannel(t, s, watched, "wss://"+mp2Out+"/v1/notify")
	waitFor(t, 5*time.Second, "the channel on MP 2 recorded", func() bool { return connectedOn(t, s, "", deviceIDOf(t, watched)) == 1 })

	var agents []string
	for _, name := range []string{"pc-pg1", "pc-pg2"} {
		dev := enrollDevice(t, s, name)
		resolv := filepath.Join(t.TempDir(), "resolv.conf")
		writeResolv(t, resolv) // no nameservers: the internet MP (MP 1) at once
		startAgent(t, dev, resolv)
		agents = append(agents, dev)
	}
	for _, dev := range agents {
		waitFor(t, 15*time.Second, "the agent checked in with its channel open", func() bool { st := statusOf(t, dev); return st.LastCheckin != nil && st.Notify })
	}
	reporters := startReporters(t, "pg-restart", agents)

	for _, mode := range []string{"fast", "immediate"} {
		reporters.waitEach(t, 3) // load before the stop
		if err := pg.StopServer(ctx, mode); err != nil {
			t.Fatal(err)
		}
		reporters.waitEach(t, 3) // and while PostgreSQL is down
		// A request that needs the database is answered 503 with Retry-After, so clients back off.
		r := curlMP(t, s, watched, s.mpInternet+"/v1/hello", "-i", "-X", "POST", "-H", "Content-Type: application/json", "-d", `{"os":"debian 12"}`)
		if r.code != 0 || !strings.Contains(r.stdout, " 503") || !strings.Contains(strings.ToLower(r.stdout), "retry-after:") || !strings.Contains(r.stdout, `"unavailable"`) {
			t.Errorf("hello with PostgreSQL down (-m %s): want 503 unavailable with Retry-After, got exit %d\n%s%s", mode, r.code, r.stdout, r.stderr)
		}
		if err := pg.StartServer(ctx); err != nil {
			t.Fatal(err)
		}
		started := time.Now()
		// LISTEN/NOTIFY resumes on both MPs: an event pushed through MP 1 reaches MP 2.
		waitFor(t, 20*time.Second, "an event through MP 1 reaching the channel on MP 2 after -m "+mode, func() bool {
			s.try(t, "device", "notify", "--event", wire.EventRedetectLocation, deviceIDOf(t, watched)) // fails while the MP reconnects
			return channel.event(wire.EventRedetectLocation, 500*time.Millisecond)
		})
		t.Logf("pg_ctl stop -m %s: events flow between the MPs again %v after PostgreSQL started", mode, time.Since(started).Round(time.Millisecond))
	}
	reported := reporters.stop()
	for _, dev := range agents {
		waitFor(t, 30*time.Second, "the spool delivered", func() bool { return statusOf(t, dev).SpoolDepth == 0 })
	}
	checkStoredOnce(t, sitedb.Postgres, dsn, "pg-restart", reported)

	start := time.Now()
	s.ibcm(t, "device", "block", deviceIDOf(t, watched))
	if err := channel.closedWithin(time.Second); err != nil {
		t.Fatalf("after the restarts, the channel on MP 2 %v after ibcm device block through MP 1", err)
	}
	t.Logf("after the restarts, the channel on MP 2 closed %v after ibcm device block started", time.Since(start).Round(time.Millisecond))
}

// TestFaultMPKilled: two MPs publish their SRV records to a real BIND and the agents find
// them through it. The MP of one agent is killed (SIGKILL): the agent fails over to the
// other MP within seconds, no status message is lost or stored twice, and the surviving MP
// stops counting the dead MP's channel rows, so the device shows one live channel.
func TestFaultMPKilled(t *testing.T) {
	corp := bindtest.Start(t, "corp.test.")
	s := initSite(t, "postgres")
	if err := os.WriteFile(s.path("dns.key"), []byte(corp.Secret), 0o600); err != nil {
		t.Fatal(err)
	}
	editConfig(t, s.path("site.yaml"), s.path("site.yaml"), func(mp map[string]any) {
		mp["dns"] = map[string]any{"server": corp.Addr, "zone": "corp.test", "key_name": corp.KeyName, "secret_file": "dns.key", "ttl": "60s"}
	})
	corp.NSUpdate(t, "update add ibcm.corp.test. 60 A 127.0.0.1")
	s.start(t, "ca", "serve", "--config", s.path("site.yaml"))
	mps := map[string]*proc{ // by intranet port
		port(s.mpIntranet): s.start(t, "mp", "serve", "--config", s.path("site.yaml")),
	}
	mp2In, _, mp2 := addMP(t, s, "mp2")
	mps[port("https://"+mp2In)] = mp2
	adminURL := map[string]string{port(s.mpIntranet): s.mpIntranet, port("https://" + mp2In): "https://" + mp2In}
	mpID := map[string]string{port(s.mpIntranet): "mp1", port("https://" + mp2In): "mp2"}
	waitFor(t, 15*time.Second, "both MPs' SRV records", func() bool { return len(corp.Dig(t, "SRV", "_ibcm-mp._tcp.corp.test")) == 2 })

	resolv := filepath.Join(t.TempDir(), "resolv.conf")
	writeResolv(t, resolv, corp.Addr)
	var agents []string
	for _, name := range []string{"pc-kill1", "pc-kill2"} {
		dev := enrollDevice(t, s, name)
		startAgent(t, dev, resolv)
		agents = append(agents, dev)
	}
	for _, dev := range agents {
		waitFor(t, 15*time.Second, "the agent on an intranet MP with its channel open", func() bool {
			st := statusOf(t, dev)
			return st.Location == wire.Intranet && st.LastCheckin != nil && st.Notify
		})
	}
	victimPort := port(statusOf(t, agents[0]).MP)
	var survivorPort string
	for p := range mps {
		if p != victimPort {
			survivorPort = p
		}
	}
	id := deviceIDOf(t, agents[0])
	reporters := startReporters(t, "mp-killed", agents)
	reporters.waitEach(t, 2)

	mps[victimPort].kill()
	killed := time.Now()
	waitFor(t, 15*time.Second, "the agent of the killed MP on the other MP", func() bool {
		st := statusOf(t, agents[0])
		return port(st.MP) == survivorPort && st.Notify
	})
	took := time.Since(killed)
	t.Logf("failed over to the surviving MP %v after the SIGKILL", took.Round(time.Millisecond))
	if took > 10*time.Second {
		t.Errorf("failing over took %v, want within 10 s", took)
	}
	reporters.waitEach(t, 3) // messages after the failover too
	reported := reporters.stop()
	for _, dev := range agents {
		waitFor(t, 30*time.Second, "the spool delivered", func() bool { return statusOf(t, dev).SpoolDepth == 0 })
	}
	checkStoredOnce(t, sitedb.Postgres, s.dsn, "mp-killed", reported)

	// The killed MP's row of the channel stays in the database (nobody deleted it); once the
	// MP has missed its heartbeats, the survivor no longer counts it.
	waitFor(t, 30*time.Second, "the device shows only its channel on the survivor", func() bool {
		return connectedOn(t, s, adminURL[survivorPort], id) == 1
	})
	t.Logf("the killed MP's channel row was no longer counted %v after the SIGKILL", time.Since(killed).Round(time.Millisecond))
	// and the one counted is the survivor's: both rows are there
	want := map[string]int{mpID[victimPort]: 1, mpID[survivorPort]: 1}
	if got := channelRows(t, s.dsn, id); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("channel rows of the device by MP: %v, want %v", got, want)
	}
}

// channelRows counts a device's rows in notify_connections by MP.
func channelRows(t *testing.T, dsn, id string) map[string]int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	db, err := sitedb.Open(ctx, sitedb.Postgres, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	rows, err := db.Query(ctx, `SELECT mp_id, COUNT(*) FROM notify_connections WHERE device_id = ? GROUP BY mp_id`, id)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	got := map[string]int{}
	for rows.Next() {
		var mp string
		var n int
		if err := rows.Scan(&mp, &n); err != nil {
			t.Fatal(err)
		}
		got[mp] = n
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return got
}

// TestFaultCADownDuringRenewal: with the CA stopped, a renewal (the renew-cert event) fails;
// the agent keeps its current certificate and its MP session, retries with backoff, and
// renews by itself once the CA is back.
func TestFaultCADownDuringRenewal(t *testing.T) {
	needTool(t, "curl")
	s := initSite(t, "postgres")
	caProc := s.start(t, "ca", "serve", "--config", s.path("site.yaml"))
	s.start(t, "mp", "serve", "--config", s.path("site.yaml"))
	dev := enrollDevice(t, s, "pc-renew")
	id := deviceIDOf(t, dev)
	resolv := filepath.Join(t.TempDir(), "resolv.conf")
	writeResolv(t, resolv)
	startAgent(t, dev, resolv)
	waitFor(t, 15*time.Second, "a check-in and the notification channel", func() bool { st := statusOf(t, dev); return st.LastCheckin != nil && st.Notify })
	before := statusOf(t, dev).Serial

	caProc.stop()
	s.ibcm(t, "device", "notify", "--event", wire.EventRenewCert, id)
	waitFor(t, 10*time.Second, "the renewal failing with the CA down", func() bool { return strings.Contains(statusOf(t, dev).LastError, "renewal") })
	failed := time.Now()
	st := statusOf(t, dev)
	if st.Serial != before || !st.Notify {
		t.Fatalf("after the failed renewal: serial %s (was %s), channel open %v", st.Serial, before, st.Notify)
	}
	if r := curlMP(t, s, dev, s.mpInternet+"/v1/whoami"); r.code != 0 || !strings.Contains(r.stdout, id) {
		t.Fatalf("the current certificate no longer works at the MP: %s%s", r.stdout, r.stderr)
	}

	caProc = s.start(t, "ca", "serve", "--config", s.path("site.yaml"))
	// No new event: the agent's own retry (30 s backoff with jitter, so 15-30 s) renews.
	waitFor(t, 45*time.Second, "the certificate renewed once the CA is back", func() bool { st := statusOf(t, dev); return st.Serial != "" && st.Serial != before })
	took := time.Since(failed)
	t.Logf("renewed %v after the failed attempt, by the agent's retry", took.Round(time.Millisecond))
	if took < 10*time.Second { // the CA was back within seconds: an agent that did not back off renews then
		t.Errorf("renewed %v after the failure: the agent did not back off", took)
	}
	waitFor(t, 10*time.Second, "the channel open again with the new certificate", func() bool { st := statusOf(t, dev); return st.Notify && st.LastError == "" })

	// Once more, but a renew-cert event sent when the CA is back does not wait out the backoff.
	before = statusOf(t, dev).Serial
	caProc.stop()
	s.ibcm(t, "device", "notify", "--event", wire.EventRenewCert, id)
	waitFor(t, 10*time.Second, "the second renewal failing with the CA down", func() bool { return strings.Contains(statusOf(t, dev).LastError, "renewal") })
	s.start(t, "ca", "serve", "--config", s.path("site.yaml"))
	s.ibcm(t, "device", "notify", "--event", wire.EventRenewCert, id)
	waitFor(t, 8*time.Second, "the certificate renewed at once on renew-cert during the backoff", func() bool { st := statusOf(t, dev); return st.Serial != "" && st.Serial != before })
}

// TestFaultNetworkFlap: the resolver configuration flips to a resolver that does not know
// the intranet and back before the agent can see the new network twice in a row: the agent
// stays where it is. A change that lasts does switch it (the control).
func TestFaultNetworkFlap(t *testing.T) {
	corp := bindtest.Start(t, "corp.test.")
	s := startSite(t, "sqlite")
	corp.NSUpdate(t, "update add ibcm.corp.test. 60 A 127.0.0.1",
		fmt.Sprintf("update add _ibcm-mp._tcp.corp.test. 60 SRV 0 0 %s ibcm.corp.test.", port(s.mpIntranet)))
	resolv := filepath.Join(t.TempDir(), "resolv.conf")
	var order atomic.Uint64                         // numbers the SRV queries to either resolver
	intranet := frontDNS(t, &order, corp.Addr, nil) // the corporate resolver (BIND), seen by the test
	var flapBack atomic.Bool
	flapBack.Store(true)
	hotel := frontDNS(t, &order, "", func() { // knows nothing of corp.test; the network flips back as the agent asks
		if flapBack.Load() {
			_ = writeResolvFile(resolv, intranet.addr)
		}
	})
	if err := writeResolvFile(resolv, intranet.addr); err != nil {
		t.Fatal(err)
	}
	dev := enrollDevice(t, s, "pc-flap")
	startAgent(t, dev, resolv)
	waitFor(t, 10*time.Second, "intranet", func() bool { st := statusOf(t, dev); return st.Location == wire.Intranet && st.LastCheckin != nil })
	first := statusOf(t, dev)

	const flaps = 10
	var last uint64
	for i := 0; i < flaps; i++ {
		if err := writeResolvFile(resolv, hotel.addr); err != nil {
			t.Fatal(err)
		}
		seen := hotel.waitSRV(t, "the other network's", last, 5*time.Second) // the agent saw the other network once...
		last = intranet.waitSRV(t, "the intranet's", seen, 5*time.Second)    // ...and the intranet again on its next look
		if st := statusOf(t, dev); st.Location != first.Location || st.MP != first.MP {
			t.Fatalf("flap %d moved the agent to %s %s, from %s %s", i+1, st.Location, st.MP, first.Location, first.MP)
		}
	}
	// Every switch is reported as a status message: there was none, not even one undone
	// between two looks of the test.
	waitFor(t, 10*time.Second, "the spool delivered", func() bool { return statusOf(t, dev).SpoolDepth == 0 })
	if n := locationChanges(t, s, deviceIDOf(t, dev)); n != 0 {
		t.Errorf("the agent reported %d location changes during %d flaps, want none", n, flaps)
	}

	flapBack.Store(false) // the other network stays: the agent switches
	start := time.Now()
	if err := writeResolvFile(resolv, hotel.addr); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 3*time.Second, "internet once the other network lasts", func() bool { return statusOf(t, dev).Location == wire.Internet })
	t.Logf("%d flaps did not move the agent; a lasting change did, in %v", flaps, time.Since(start).Round(time.Millisecond))
	waitFor(t, 10*time.Second, "the location change reported", func() bool { return locationChanges(t, s, deviceIDOf(t, dev)) == 1 })
}

// locationChanges counts the "location changed" status messages the SQLite site s stored
// for a device.
func locationChanges(t *testing.T, s *testSite, id string) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	db, err := sitedb.Open(ctx, sitedb.SQLite, s.path("site.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var n int
	if err := db.QueryRow(ctx, `SELECT COUNT(*) FROM status_messages WHERE device_id = ? AND component = 'location'`, id).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// ownPostgres starts a PostgreSQL server of the test's own, which the test may stop and
// start; synchronous_commit is on, so a crash (-m immediate) loses no acknowledged commit.
func ownPostgres(t *testing.T) *pgtest.Server {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	srv, err := pgtest.Start(ctx, pgtest.SynchronousCommit())
	if errors.Is(err, pgtest.ErrNotFound) {
		peertest.Missing(t, err.Error())
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := srv.Stop(); err != nil {
			t.Error(err)
		}
	})
	return srv
}

// addMP runs another MP of the PostgreSQL site s with its own id and listeners (`ibcm mp
// serve` on a copy of site.yaml) and returns its intranet and internet addresses.
func addMP(t *testing.T, s *testSite, id string) (intranet, internet string, p *proc) {
	t.Helper()
	intranet, internet = freeAddr(t), freeAddr(t)
	cfg := s.path("site-" + id + ".yaml")
	editConfig(t, s.path("site.yaml"), cfg, func(mp map[string]any) {
		mp["id"] = id
		mp["intranet_listen"], mp["intranet_url"] = intranet, "https://"+intranet
		mp["internet_listen"], mp["internet_url"] = internet, "https://"+internet
	})
	return intranet, internet, s.start(t, "mp", "serve", "--config", cfg)
}

// port is the port of a URL or host:port.
func port(u string) string { return u[strings.LastIndex(u, ":")+1:] }

// connectedOn is how many live channels the MP at mpURL ("" for the site's own) shows for
// a device.
func connectedOn(t *testing.T, s *testSite, mpURL, id string) int {
	t.Helper()
	r := runEnv(t, []string{"IBCM_DIR=" + s.dir, "IBCM_MP_URL=" + mpURL}, bin.ibcm, "device", "show", "--json", id)
	var d wire.Device
	if r.code != 0 || json.Unmarshal([]byte(r.stdout), &d) != nil {
		return -1
	}
	return d.Connected
}

// channel is a device's notification channel opened by the test itself; a goroutine reads
// it (which also answers the MP's pings).
type channel struct {
	events chan string
	ended  chan error
}

func openChannel(t *testing.T, s *testSite, dev, url string) *channel {
	t.Helper()
	pair, err := tls.LoadX509KeyPair(filepath.Join(dev, "cert.pem"), filepath.Join(dev, "key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	rootPEM, _ := os.ReadFile(s.path("ca/root.crt"))
	roots.AppendCertsFromPEM(rootPEM)
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{Certificates: []tls.Certificate{pair}, RootCAs: roots}}}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ws, _, err := websocket.Dial(ctx, url, &websocket.DialOptions{HTTPClient: client})
	if err != nil {
		t.Fatalf("notification channel %s: %v", url, err)
	}
	t.Cleanup(func() { ws.CloseNow() })
	c := &channel{events: make(chan string, 100), ended: make(chan error, 1)}
	go func() {
		for {
			_, msg, err := ws.Read(context.Background())
			if err != nil {
				c.ended <- err
				return
			}
			select {
			case c.events <- string(msg):
			default:
			}
		}
	}()
	return c
}

// event reports whether an event of type typ arrives within d.
func (c *channel) event(typ string, d time.Duration) bool {
	deadline := time.After(d)
	for {
		select {
		case msg := <-c.events:
			var ev wire.Event
			if json.Unmarshal([]byte(msg), &ev) == nil && ev.Type == typ {
				return true
			}
		case <-deadline:
			return false
		}
	}
}

// closedWithin returns nil when the MP closes the channel within d.
func (c *channel) closedWithin(d time.Duration) error {
	select {
	case <-c.ended:
		return nil
	case <-time.After(d):
		return fmt.Errorf("was still open %v", d)
	}
}

// reporters run `ibcm-client report` for each agent in a loop, each message with its own
// text, and keep the texts whose report succeeded.
type reporters struct {
	cancel context.CancelFunc
	wg     sync.WaitGroup
	mu     sync.Mutex
	done   map[string][]string // by agent directory
}

func startReporters(t *testing.T, component string, agents []string) *reporters {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	r := &reporters{cancel: cancel, done: map[string][]string{}}
	for _, dev := range agents {
		r.done[dev] = nil
		r.wg.Go(func() {
			for i := 0; ctx.Err() == nil; i++ {
				text := fmt.Sprintf("%s message %d", filepath.Base(dev), i)
				err := runQuiet(ctx, bin.client, "report", "--dir", dev, "--component", component, "--text", text)
				if err == nil {
					r.mu.Lock()
					r.done[dev] = append(r.done[dev], text)
					r.mu.Unlock()
				}
			}
		})
	}
	t.Cleanup(func() { r.stop() })
	return r
}

// waitEach waits until every agent has had n more messages reported.
func (r *reporters) waitEach(t *testing.T, n int) {
	t.Helper()
	r.mu.Lock()
	want := map[string]int{}
	for dev, texts := range r.done {
		want[dev] = len(texts) + n
	}
	r.mu.Unlock()
	waitFor(t, 30*time.Second, fmt.Sprintf("%d more status messages reported by each agent", n), func() bool {
		r.mu.Lock()
		defer r.mu.Unlock()
		for dev, texts := range r.done {
			if len(texts) < want[dev] {
				return false
			}
		}
		return true
	})
}

// stop ends the loops and returns every text reported.
func (r *reporters) stop() []string {
	r.cancel()
	r.wg.Wait()
	r.mu.Lock()
	defer r.mu.Unlock()
	var all []string
	for _, texts := range r.done {
		all = append(all, texts...)
	}
	return all
}

// runQuiet runs a command to completion (or until ctx ends); nil when it exited 0.
func runQuiet(ctx context.Context, name string, args ...string) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	return osexec.CommandContext(ctx, name, args...).Run()
}

// checkStoredOnce checks that the site stored each reported text of component exactly once.
func checkStoredOnce(t *testing.T, driver sitedb.Driver, dsn, component string, reported []string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	db, err := sitedb.Open(ctx, driver, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	rows, err := db.Query(ctx, `SELECT text, COUNT(*) FROM status_messages WHERE component = ? GROUP BY text`, component)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	stored := map[string]int{}
	for rows.Next() {
		var text string
		var n int
		if err := rows.Scan(&text, &n); err != nil {
			t.Fatal(err)
		}
		stored[text] = n
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	lost := 0
	for _, text := range reported {
		switch n := stored[text]; {
		case n == 0:
			lost++
			t.Errorf("status message %q was reported but not stored", text)
		case n > 1:
			t.Errorf("status message %q stored %d times", text, n)
		}
	}
	// stored may hold one more per agent: a report the stop cut short after it was spooled
	t.Logf("%d status messages reported, %d stored, %d lost", len(reported), len(stored), lost)
}

// frontDNS is a resolver the test watches: it forwards every query to upstream (BIND), or
// answers NXDOMAIN when upstream is "", and tells of every SRV query with its number from
// order (shared by the fronts of a test, so it says which query came first; the agent
// detects one look at a time); onSRV runs before an SRV query is answered.
type dnsFront struct {
	addr string
	srv  chan uint64
}

func frontDNS(t *testing.T, order *atomic.Uint64, upstream string, onSRV func()) *dnsFront {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &dnsFront{addr: pc.LocalAddr().String(), srv: make(chan uint64, 1000)}
	client := &dns.Client{Net: "tcp", Timeout: 5 * time.Second}
	srv := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		isSRV := len(r.Question) == 1 && r.Question[0].Qtype == dns.TypeSRV
		var n uint64
		if isSRV {
			n = order.Add(1)
			if onSRV != nil {
				onSRV()
			}
		}
		m := new(dns.Msg)
		if upstream == "" {
			m.SetRcode(r, dns.RcodeNameError)
		} else if a, _, err := client.Exchange(r, upstream); err == nil {
			m = a
		} else {
			m.SetRcode(r, dns.RcodeServerFailure)
		}
		_ = w.WriteMsg(m)
		if isSRV {
			select {
			case f.srv <- n:
			default:
			}
		}
	})}
	go func() { _ = srv.ActivateAndServe() }()
	t.Cleanup(func() { _ = srv.Shutdown() })
	return f
}

// waitSRV waits for an SRV query numbered after after, and returns its number.
func (f *dnsFront) waitSRV(t *testing.T, which string, after uint64, d time.Duration) uint64 {
	t.Helper()
	deadline := time.After(d)
	for {
		select {
		case n := <-f.srv:
			if n > after {
				return n
			}
		case <-deadline:
			t.Fatalf("no SRV query to %s resolver within %v", which, d)
		}
	}
}

// writeResolvFile replaces a resolv.conf atomically (as writeResolv does) and returns an
// error rather than failing a test, for use off the test's goroutine. Every write differs
// (a comment says when), so the agent's watcher, which compares contents every 200 ms,
// sees each one even when the file went back and forth between two of its looks.
func writeResolvFile(path string, nameservers ...string) error {
	var b strings.Builder
	fmt.Fprintf(&b, "# written by the test at %d\nsearch corp.test\n", time.Now().UnixNano())
	for _, ns := range nameservers {
		fmt.Fprintf(&b, "nameserver %s\n", ns)
	}
	tmp := fmt.Sprintf("%s.%d.new", path, time.Now().UnixNano())
	if err := os.WriteFile(tmp, []byte(b.String()), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
