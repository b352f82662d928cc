package integration

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/ibcm-project/ibcm/ca"
	"github.com/ibcm-project/ibcm/internal/bindtest"
	"github.com/ibcm-project/ibcm/internal/sitedb"
	"github.com/ibcm-project/ibcm/internal/wire"
)

// agentStatus is what `ibcm-client status --json` prints of a running agent.
type agentStatus struct {
	AgentRunning  bool       `json:"agent_running"`
	Location      string     `json:"location"`
	MP            string     `json:"mp"`
	SpoolDepth    int        `json:"spool_depth"`
	LastCheckin   *time.Time `json:"last_checkin"`
	Notify        bool       `json:"notify_connected"`
	Serial        string     `json:"serial"`
	PolicyVersion int        `json:"policy_version"`
	LastError     string     `json:"last_error"`
}

func statusOf(t *testing.T, dev string) agentStatus {
	t.Helper()
	var st agentStatus
	r := run(t, bin.client, "status", "--dir", dev, "--json")
	_ = json.Unmarshal([]byte(r.stdout), &st)
	return st
}

// startAgent runs `ibcm-client run` until stop is called or the test ends.
func startAgent(t *testing.T, dev, resolv string) (stop func()) {
	t.Helper()
	return startAgentArgs(t, dev, resolv)
}

// startAgentArgs is startAgent with more flags for `ibcm-client run`.
func startAgentArgs(t *testing.T, dev, resolv string, extra ...string) (stop func()) {
	t.Helper()
	cmd := exec.Command(bin.client, append([]string{"run", "--dir", dev, "--resolv-conf", resolv}, extra...)...)
	logf, err := os.Create(filepath.Join(t.TempDir(), "agent.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	agentLog := func() string { b, _ := os.ReadFile(logf.Name()); return string(b) }
	stop = stopper(t, cmd, "ibcm-client run", agentLog)
	t.Cleanup(func() {
		stop()
		if t.Failed() {
			t.Logf("agent log:\n%s", agentLog())
		}
	})
	waitFor(t, 10*time.Second, "the agent's control socket", func() bool { return statusOf(t, dev).AgentRunning })
	return stop
}

// writeResolv replaces a resolv.conf atomically, as resolvconf and NetworkManager do.
func writeResolv(t *testing.T, path string, nameservers ...string) {
	t.Helper()
	var b strings.Builder
	b.WriteString("# written by the test\nsearch corp.test\n")
	for _, ns := range nameservers {
		fmt.Fprintf(&b, "nameserver %s\n", ns)
	}
	tmp := path + ".new"
	if err := os.WriteFile(tmp, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// TestAgentLocation: the agent finds the intranet MP through the SRV record the MP itself
// publishes to a real BIND, switches to the internet MP within a second when the resolvers
// change and back, cannot be lured into intranet mode by a rogue resolver, and decides
// internet within its budget when the intranet DNS is black-holed.
func TestAgentLocation(t *testing.T) {
	corp := bindtest.Start(t, "corp.test.")
	elsewhere := bindtest.Start(t, "hotel.test.") // a resolver that knows nothing of corp.test
	s := initSite(t, "sqlite")
	if err := os.WriteFile(s.path("dns.key"), []byte(corp.Secret), 0o600); err != nil {
		t.Fatal(err)
	}
	editConfig(t, s.path("site.yaml"), s.path("site.yaml"), func(mp map[string]any) {
		mp["dns"] = map[string]any{"server": corp.Addr, "zone": "corp.test", "key_name": corp.KeyName, "secret_file": "dns.key", "ttl": "60s"}
	})
	s.start(t, "site", "up", "--dir", s.dir)
	corp.NSUpdate(t, "update add ibcm.corp.test. 60 A 127.0.0.1") // the MP's own name, as the intranet DNS has it
	mpPort := s.mpIntranet[strings.LastIndex(s.mpIntranet, ":")+1:]
	intranetMP := "https://ibcm.corp.test:" + mpPort
	waitFor(t, 15*time.Second, "the MP's SRV record", func() bool { return len(corp.Dig(t, "SRV", "_ibcm-mp._tcp.corp.test")) == 1 })

	dev := enrollDevice(t, s, "pc-21")
	resolv := filepath.Join(t.TempDir(), "resolv.conf")
	writeResolv(t, resolv, corp.Addr)

	// one detection, with its evidence
	var d struct {
		Location string `json:"location"`
		MP       string `json:"mp"`
		Evidence []struct{ Kind, Target, Result string }
	}
	out := must(t, bin.client, "location", "--dir", dev, "--resolv-conf", resolv, "--json")
	if err := json.Unmarshal([]byte(out), &d); err != nil || d.Location != "intranet" || d.MP != intranetMP || len(d.Evidence) == 0 {
		t.Fatalf("ibcm-client location: %v\n%s", err, out)
	}

	stop := startAgent(t, dev, resolv)
	waitFor(t, 10*time.Second, "intranet with the intranet MP", func() bool {
		st := statusOf(t, dev)
		return st.Location == "intranet" && st.MP == intranetMP && st.LastCheckin != nil
	})
	switchTo := func(want string, nameservers ...string) time.Duration {
		t.Helper()
		start := time.Now()
		writeResolv(t, resolv, nameservers...)
		waitFor(t, 3*time.Second, "location "+want, func() bool { return statusOf(t, dev).Location == want })
		took := time.Since(start)
		if took > time.Second {
			t.Errorf("switch to %s took %v, want within a second", want, took)
		}
		return took
	}
	t.Logf("resolver without the zone -> internet in %v", switchTo("internet", elsewhere.Addr))
	if st := statusOf(t, dev); st.MP != s.mpInternet {
		t.Errorf("internet MP = %q, want %s", st.MP, s.mpInternet)
	}
	// the agent reports its location at check-in; the MP records it
	id := deviceIDOf(t, dev)
	waitFor(t, 5*time.Second, "the MP records the internet location", func() bool {
		var d struct {
			LastLocation    string `json:"last_location"`
			ClaimedLocation string `json:"claimed_location"`
		}
		return json.Unmarshal([]byte(s.ibcm(t, "device", "show", "--json", id)), &d) == nil && d.LastLocation == "internet" && d.ClaimedLocation == "internet"
	})
	if out := s.ibcm(t, "device", "show", id); !strings.Contains(out, "claimed location") {
		t.Errorf("ibcm device show does not show the claimed location:\n%s", out)
	}
	t.Logf("back to the intranet resolver -> intranet in %v", switchTo("intranet", corp.Addr))

	// a rogue resolver answers the SRV query and points at a server with another CA's
	// certificate carrying all the right names: the agent stays on the internet
	rogue := rogueDNS(t, mpPort)
	switchTo("internet", rogue)
	out = must(t, bin.client, "location", "--dir", dev, "--resolv-conf", resolv, "--json")
	if err := json.Unmarshal([]byte(out), &d); err != nil || d.Location != "internet" || !strings.Contains(out, "ibcm.corp.test") {
		t.Errorf("rogue resolver: %s", out)
	}

	// a black-holed intranet resolver: internet within the detection budget
	hole := blackHole(t)
	took := switchTo("internet", hole) // from the rogue resolver's internet: stays internet
	out = must(t, bin.client, "location", "--dir", dev, "--resolv-conf", resolv, "--json")
	var timed struct {
		Location string  `json:"location"`
		MP       string  `json:"mp"`
		TookMS   float64 `json:"took_ms"`
	}
	if err := json.Unmarshal([]byte(out), &timed); err != nil || timed.Location != "internet" || timed.MP != s.mpInternet {
		t.Errorf("black hole: %s", out)
	}
	if timed.TookMS > 1500 { // the detection budget
		t.Errorf("deciding internet with a black-holed resolver took %.0f ms, over the 1500 ms budget", timed.TookMS)
	}
	t.Logf("black-holed intranet DNS: internet decided in %.0f ms (agent %v)", timed.TookMS, took)
	switchTo("intranet", corp.Addr) // and back, past the hole
	stop()
}

// rogueDNS answers every SRV query for _ibcm-mp._tcp.corp.test with a target whose address
// is a TLS server holding a certificate from another CA with the right names.
func rogueDNS(t *testing.T, port string) string {
	t.Helper()
	other, err := ca.NewHierarchy("E2E", ca.P256, time.Now(), nil)
	if err != nil {
		t.Fatal(err)
	}
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	u := []*url.URL{{Scheme: "urn", Opaque: "ibcm:site:E2E:role:mp"}}
	tmpl := &x509.Certificate{SerialNumber: serial(), Subject: pkix.Name{CommonName: "ibcm.corp.test"}, DNSNames: []string{"ibcm.corp.test"},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 3)}, URIs: u, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, other.Issuing, &key.PublicKey, other.IssuingKey)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := tls.Listen("tcp", "127.0.0.3:"+port, &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der, other.Issuing.Raw}, PrivateKey: key}},
		ClientAuth: tls.RequestClientCert})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { _ = c.(*tls.Conn).Handshake(); c.Close() }()
		}
	}()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(r)
		m.Authoritative = true
		q := r.Question[0]
		switch q.Qtype {
		case dns.TypeSRV:
			var pn uint16
			_, _ = fmt.Sscan(port, &pn)
			m.Answer = append(m.Answer, &dns.SRV{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeSRV, Class: dns.ClassINET, Ttl: 60}, Port: pn, Target: "ibcm.corp.test."})
		case dns.TypeA:
			m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60}, A: net.IPv4(127, 0, 0, 3)})
		}
		_ = w.WriteMsg(m)
	})}
	go func() { _ = srv.ActivateAndServe() }()
	t.Cleanup(func() { _ = srv.Shutdown() })
	return pc.LocalAddr().String()
}

// blackHole is a nameserver that reads queries and never answers.
func blackHole(t *testing.T) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 2048)
		for {
			if _, _, err := pc.ReadFrom(buf); err != nil {
				return
			}
		}
	}()
	return pc.LocalAddr().String()
}

// TestAgentSpoolSurvivesOutage: with the MP down the agent backs off and keeps status
// messages on disk, across its own restart; when the MP returns every message arrives once.
func TestAgentSpoolSurvivesOutage(t *testing.T) {
	s := startSite(t, "sqlite")
	dev := enrollDevice(t, s, "pc-30")
	resolv := filepath.Join(t.TempDir(), "resolv.conf")
	writeResolv(t, resolv, blackHole(t)) // no intranet: the internet MP
	stopAgent := startAgent(t, dev, resolv)
	waitFor(t, 10*time.Second, "a first check-in and the notification channel", func() bool {
		st := statusOf(t, dev)
		return st.LastCheckin != nil && st.Notify
	})

	// events on the notification channel: renew-cert renews now, policy-changed fetches
	id := deviceIDOf(t, dev)
	before := statusOf(t, dev).Serial
	s.ibcm(t, "device", "notify", "--event", "renew-cert", id)
	waitFor(t, 10*time.Second, "the certificate renewed on renew-cert", func() bool { st := statusOf(t, dev); return st.Serial != "" && st.Serial != before })
	policy := filepath.Join(t.TempDir(), "default.yaml")
	if err := os.WriteFile(policy, []byte(strings.Replace(s.ibcm(t, "policy", "show"), "checkin_interval: 15m", "checkin_interval: 10m", 1)), 0o600); err != nil {
		t.Fatal(err)
	}
	s.ibcm(t, "policy", "set", "--file", policy, "default")
	waitFor(t, 5*time.Second, "policy version 2 fetched on policy-changed", func() bool { return statusOf(t, dev).PolicyVersion == 2 })
	// The agent left its old certificate behind with its session: the MP, which refuses a
	// certificate whose renewal the device presented, has nothing to warn of.
	if out := s.ibcm(t, "device", "show", id); strings.Contains(out, "WARNING") || strings.Contains(out, "probable clone") {
		t.Errorf("the renewing agent was flagged:\n%s", out)
	}

	s.stop() // the whole site goes down
	const n = 5
	for i := 0; i < n; i++ {
		must(t, bin.client, "report", "--dir", dev, "--component", "outage-test", "--text", fmt.Sprintf("message %d", i))
	}
	waitFor(t, 5*time.Second, "messages spooled", func() bool { return statusOf(t, dev).SpoolDepth >= n })
	stopAgent()
	must(t, bin.client, "report", "--dir", dev, "--component", "outage-test", "--text", "message offline") // agent down: straight into the spool

	s.start(t, "site", "up", "--dir", s.dir)
	startAgent(t, dev, resolv)
	waitFor(t, 20*time.Second, "the spool delivered", func() bool { return statusOf(t, dev).SpoolDepth == 0 })

	db, err := sitedb.Open(context.Background(), sitedb.SQLite, s.path("site.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	rows, err := db.Query(context.Background(), `SELECT text, COUNT(*) FROM status_messages WHERE component = 'outage-test' GROUP BY text ORDER BY text`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	got := map[string]int{}
	for rows.Next() {
		var text string
		var c int
		if err := rows.Scan(&text, &c); err != nil {
			t.Fatal(err)
		}
		got[text] = c
	}
	if len(got) != n+1 {
		t.Errorf("stored %d distinct messages, want %d: %v", len(got), n+1, got)
	}
	for text, c := range got {
		if c != 1 {
			t.Errorf("%q stored %d times", text, c)
		}
	}

	// the admin reads them back: a table, newest last, and JSON
	out := s.ibcm(t, "device", "messages", "--since", "1h", id)
	first, offline := strings.Index(out, "message 0"), strings.Index(out, "message offline")
	if !strings.HasPrefix(out, "TIME") || first < 0 || offline < first || !strings.Contains(out, "outage-test") {
		t.Errorf("device messages:\n%s", out)
	}
	var msgs wire.DeviceMessages
	if err := json.Unmarshal([]byte(s.ibcm(t, "device", "messages", "--json", id)), &msgs); err != nil || msgs.DeviceID != id {
		t.Fatalf("device messages --json: %v %+v", err, msgs)
	}
	var outage []string
	for _, m := range msgs.Messages {
		if m.Component == "outage-test" {
			outage = append(outage, m.Text)
		}
	}
	if len(outage) != n+1 || outage[n] != "message offline" {
		t.Errorf("device messages --json: outage messages %q, want %d, the offline one last", outage, n+1)
	}
	if r := s.try(t, "device", "messages", "--since", "yesterday", id); r.code != 2 || !strings.Contains(r.stderr, "RFC 3339") {
		t.Errorf("device messages --since yesterday: exit %d\n%s", r.code, r.stderr)
	}
}

func serial() *big.Int { return new(big.Int).SetInt64(time.Now().UnixNano()) }
