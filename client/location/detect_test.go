package location

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ibcm-project/ibcm/ca"
	"github.com/ibcm-project/ibcm/internal/bindtest"
	"github.com/ibcm-project/ibcm/internal/wire"
	"github.com/ibcm-project/ibcm/mp"
)

// site is the world of TestDetect: the site TST's CA, its MP on the intranet published in
// a real BIND, and its internet MP.
type site struct {
	ca       testCA
	roots    *x509.CertPool
	device   ca.IssueSpec
	cfg      Config // for a resolv.conf to be filled in
	bind     *bindtest.Server
	mp       *mp.MP          // the site's MP (both modes), whose listeners these are
	mpCert   tls.Certificate // mp1.corp.test (and 127.0.0.1)
	intraMP  *mpServer       // mp1.corp.test
	inetMP   *mpServer       // mp.example.test, reached as 127.0.0.1:port
	intraURL string          // https://mp1.corp.test:port
	inetURL  string          // https://127.0.0.1:port
}

func newSite(t *testing.T) *site {
	t.Helper()
	s := &site{ca: newCA(t, newHierarchy(t, "TST"), "TST")}
	s.roots = x509.NewCertPool()
	s.roots.AddCert(s.ca.h.Root)
	device := s.ca.issue(t, ca.IssueSpec{Profile: ca.Client, Subject: "pc-01", DNS: []string{"pc-01.corp.test"}})
	s.mp = newMP(t, s.ca)
	s.mpCert = s.ca.issue(t, ca.IssueSpec{Profile: ca.SiteServer, Subject: "mp1", DNS: []string{"mp1.corp.test", "127.0.0.1"}, Role: "mp"})
	s.intraMP = serveMP(t, s.mp, s.mpCert, wire.Intranet)
	s.inetMP = serveMP(t, s.mp, s.ca.issue(t, ca.IssueSpec{Profile: ca.SiteServer, Subject: "mp-internet", DNS: []string{"mp.example.test", "127.0.0.1"}, Role: "mp"}), wire.Internet)
	s.intraURL = "https://mp1.corp.test:" + portOf(s.intraMP)
	s.inetURL = "https://" + s.inetMP.addr

	s.bind = bindtest.Start(t, "corp.test.")
	s.bind.NSUpdate(t,
		"update add mp1.corp.test. 60 A 127.0.0.1",
		"update add _ibcm-mp._tcp.corp.test. 60 SRV 0 0 "+portOf(s.intraMP)+" mp1.corp.test.",
	)
	s.cfg = Config{
		SiteCode:         "TST",
		IntranetSuffixes: []string{"corp.test"},
		SRVNames:         []string{"_ibcm-mp._tcp"},
		InternetMPs:      []string{s.inetMP.addr}, // an IP literal: its certificate has the IP SAN
		Roots:            s.roots,
		ClientCert:       &device,
	}
	return s
}

// config returns the site's configuration with the given resolv.conf.
func (s *site) config(resolvConf string) Config {
	c := s.cfg
	c.ResolvConf = resolvConf
	return c
}

func wantDecision(t *testing.T, d Decision, location, mp string) {
	t.Helper()
	if d.Location != location || d.MP != mp {
		t.Fatalf("decision = %s %q, want %s %q\n%s", d.Location, d.MP, location, mp, describe(d))
	}
}

func TestDetect(t *testing.T) {
	s := newSite(t)
	ctx := context.Background()

	t.Run("intranet", func(t *testing.T) {
		d := Detect(ctx, s.config(writeResolvConf(t, s.bind.Addr)))
		t.Logf("took %s\n%s", d.Took, describe(d))
		wantDecision(t, d, wire.Intranet, s.intraURL)
		if rc := findStep(t, d, KindResolvConf, ""); !rc.OK() || !strings.Contains(rc.Result, s.bind.Addr) {
			t.Errorf("resolv.conf step = %+v, want the BIND nameserver", rc)
		}
		srv := findStep(t, d, KindDNS, "_ibcm-mp._tcp.corp.test. SRV")
		if want := "0 0 " + portOf(s.intraMP) + " mp1.corp.test."; !srv.OK() || !strings.Contains(srv.Result, want) || !strings.Contains(srv.Result, s.bind.Addr) {
			t.Errorf("SRV step = %+v, want the answer %q from %s", srv, want, s.bind.Addr)
		}
		if a := findStep(t, d, KindDNS, "mp1.corp.test. A"); !strings.Contains(a.Result, "127.0.0.1") {
			t.Errorf("A step = %+v, want 127.0.0.1", a)
		}
		probe := findStep(t, d, KindProbe, "mp1.corp.test:"+portOf(s.intraMP)+" at 127.0.0.1")
		if !probe.OK() || !strings.Contains(probe.Result, "intranet listener of an MP of site TST") {
			t.Errorf("probe step = %+v, want an intranet listener of an MP of site TST", probe)
		}
		if want := "client certificate serial " + wire.FormatSerial(s.cfg.ClientCert.Leaf.SerialNumber); !strings.Contains(probe.Result, want) {
			t.Errorf("probe step = %+v, want the MP's answer naming the device certificate (%s)", probe, want)
		}
		if !strings.Contains(d.Reason, "mp1.corp.test") {
			t.Errorf("reason %q does not name the MP", d.Reason)
		}
		if d.Took > 500*time.Millisecond {
			t.Errorf("intranet detection took %s; expected well under 100ms on loopback", d.Took)
		}
	})

	t.Run("resolver without the zone", func(t *testing.T) {
		// Another BIND, authoritative for example.test only: it refuses corp.test queries
		// but resolves the internet MP's name, which here is a name, not an IP literal.
		other := bindtest.Start(t, "example.test.")
		other.NSUpdate(t, "update add mp.example.test. 60 A 127.0.0.1")
		cfg := s.config(writeResolvConf(t, other.Addr))
		cfg.InternetMPs = []string{"mp.example.test:" + portOf(s.inetMP)}
		d := Detect(ctx, cfg)
		t.Logf("took %s\n%s", d.Took, describe(d))
		wantDecision(t, d, wire.Internet, "https://mp.example.test:"+portOf(s.inetMP))
		if srv := findStep(t, d, KindDNS, "_ibcm-mp._tcp.corp.test. SRV"); srv.OK() || !strings.Contains(srv.Error, "REFUSED") {
			t.Errorf("SRV step = %+v, want REFUSED", srv)
		}
		if a := findStep(t, d, KindDNS, "mp.example.test. A"); !strings.Contains(a.Result, "127.0.0.1") {
			t.Errorf("A step for the internet MP = %+v, want 127.0.0.1 from the resolver", a)
		}
		findStep(t, d, KindProbe, "mp.example.test:"+portOf(s.inetMP)+" at 127.0.0.1")
	})

	t.Run("NXDOMAIN", func(t *testing.T) {
		d := Detect(ctx, s.config(writeResolvConf(t, startDNS(t))))
		wantDecision(t, d, wire.Internet, s.inetURL)
		if srv := findStep(t, d, KindDNS, "_ibcm-mp._tcp.corp.test. SRV"); !strings.Contains(srv.Result, "NXDOMAIN") {
			t.Errorf("SRV step = %+v, want NXDOMAIN", srv)
		}
		if !strings.Contains(d.Reason, "no _ibcm-mp._tcp.corp.test. SRV records") {
			t.Errorf("reason %q", d.Reason)
		}
	})

	t.Run("rogue resolver", func(t *testing.T) {
		// A resolver the device does not control answers the SRV query and the target's
		// address; the server there has the right names but is no MP of this site.
		otherSite := newCA(t, newHierarchy(t, "TST"), "TST") // same site code, another root
		sameRootOtherCode := newCA(t, s.ca.h, "OTH")         // our root, another site's code
		for _, tc := range []struct {
			name   string
			issuer testCA
			spec   ca.IssueSpec
			want   string // in the probe's error
		}{
			{"another CA", otherSite, ca.IssueSpec{Profile: ca.SiteServer, Subject: "mp1", DNS: []string{"mp1.corp.test", "127.0.0.1"}, Role: "mp"}, "unknown authority"},
			{"another site code", sameRootOtherCode, ca.IssueSpec{Profile: ca.SiteServer, Subject: "mp1", DNS: []string{"mp1.corp.test", "127.0.0.1"}, Role: "mp"}, "urn:ibcm:site:OTH:role:mp, not urn:ibcm:site:TST:role:mp"},
			{"a DP", s.ca, ca.IssueSpec{Profile: ca.SiteServer, Subject: "dp1", DNS: []string{"mp1.corp.test", "127.0.0.1"}, Role: "dp"}, "urn:ibcm:site:TST:role:dp, not urn:ibcm:site:TST:role:mp"},
			{"the CA", s.ca, ca.IssueSpec{Profile: ca.SiteServer, Subject: "ca", DNS: []string{"mp1.corp.test", "127.0.0.1"}, Role: "ca"}, "urn:ibcm:site:TST:role:ca, not urn:ibcm:site:TST:role:mp"},
			{"no site URI", s.ca, ca.IssueSpec{Profile: ca.Client, Subject: "mp1", DNS: []string{"mp1.corp.test"}}, "incompatible key usage"},
			{"another name", s.ca, ca.IssueSpec{Profile: ca.SiteServer, Subject: "mp2", DNS: []string{"mp2.corp.test", "127.0.0.1"}, Role: "mp"}, "not mp1.corp.test"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				rogue := serveMP(t, s.mp, tc.issuer.issue(t, tc.spec), wire.Intranet) // the site's own MP, with that certificate
				resolver := startDNS(t,
					"_ibcm-mp._tcp.corp.test. 60 IN SRV 0 0 "+portOf(rogue)+" mp1.corp.test.",
					"mp1.corp.test. 60 IN A 127.0.0.1",
				)
				d := Detect(ctx, s.config(writeResolvConf(t, resolver)))
				t.Logf("%s", describe(d))
				wantDecision(t, d, wire.Internet, s.inetURL)
				if srv := findStep(t, d, KindDNS, "_ibcm-mp._tcp.corp.test. SRV"); !srv.OK() || !strings.Contains(srv.Result, portOf(rogue)) {
					t.Errorf("SRV step = %+v, want the rogue answer", srv)
				}
				probe := findStep(t, d, KindProbe, "mp1.corp.test:"+portOf(rogue))
				if probe.OK() || !strings.Contains(probe.Error, tc.want) {
					t.Errorf("probe error = %q, want it to contain %q", probe.Error, tc.want)
				}
				if !strings.Contains(d.Reason, "1 of 1 SRV targets failed the probe") {
					t.Errorf("reason %q does not say the probe failed", d.Reason)
				}
			})
		}
	})

	t.Run("the site's internet listener", func(t *testing.T) {
		// A café's resolver serves a corp.test zone (a real BIND) whose SRV record points at
		// the site's internet MP listener, which, as for an MP in both modes, presents the
		// very certificate of the intranet listener: a genuine MP of this site for the
		// name. Only its answer on the verified connection tells it is no intranet listener.
		both := serveMP(t, s.mp, s.mpCert, wire.Internet)
		cafe := bindtest.Start(t, "corp.test.")
		cafe.NSUpdate(t,
			"update add mp1.corp.test. 60 A 127.0.0.1",
			"update add _ibcm-mp._tcp.corp.test. 60 SRV 0 0 "+portOf(both)+" mp1.corp.test.",
		)
		d := Detect(ctx, s.config(writeResolvConf(t, cafe.Addr)))
		t.Logf("%s", describe(d))
		wantDecision(t, d, wire.Internet, s.inetURL)
		probe := findStep(t, d, KindProbe, "mp1.corp.test:"+portOf(both))
		if probe.OK() || !strings.Contains(probe.Error, "says this is its internet listener, not an intranet one") || !strings.Contains(probe.Error, `certificate "mp1"`) {
			t.Errorf("probe step = %+v, want the MP's internet answer", probe)
		}
		// and the same BIND pointing at the intranet listener: intranet
		cafe.NSUpdate(t,
			"update delete _ibcm-mp._tcp.corp.test. SRV",
			"update add _ibcm-mp._tcp.corp.test. 60 SRV 0 0 "+portOf(s.intraMP)+" mp1.corp.test.",
		)
		wantDecision(t, Detect(ctx, s.config(writeResolvConf(t, cafe.Addr))), wire.Intranet, s.intraURL)
	})

	t.Run("device refused", func(t *testing.T) {
		// The intranet MP refuses a certificate that is not of this site: no answer, so
		// no proof, however good the MP's own certificate.
		stranger := newCA(t, newHierarchy(t, "TST"), "TST").issue(t, ca.IssueSpec{Profile: ca.Client, Subject: "pc-x", DNS: []string{"pc-x.corp.test"}})
		cfg := s.config(writeResolvConf(t, s.bind.Addr))
		cfg.ClientCert = &stranger
		d := Detect(ctx, cfg)
		t.Logf("%s", describe(d))
		if d.Location != wire.Internet {
			t.Fatalf("decision %s, want internet\n%s", d.Location, describe(d))
		}
		if probe := findStep(t, d, KindProbe, "mp1.corp.test:"+portOf(s.intraMP)); probe.OK() || !strings.Contains(probe.Error, "bad certificate") {
			t.Errorf("probe step = %+v, want the MP's refusal", probe)
		}
	})

	t.Run("broken MP", func(t *testing.T) {
		// Servers holding a genuine intranet MP certificate of this site that answer the
		// probe badly: none proves an intranet listener.
		respond := func(status, contentType, body string) func(net.Conn, <-chan struct{}) {
			return func(c net.Conn, _ <-chan struct{}) {
				_, _ = fmt.Fprintf(c, "HTTP/1.1 %s\r\nContent-Type: %s\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s", status, contentType, len(body), body)
			}
		}
		serial := wire.FormatSerial(s.cfg.ClientCert.Leaf.SerialNumber)
		for _, tc := range []struct {
			name   string
			answer func(net.Conn, <-chan struct{})
			want   string
		}{
			{"internet", respond("200 OK", "application/json", `{"location":"internet","serial":"`+serial+`"}`), "says this is its internet listener"},
			{"garbage", respond("200 OK", "application/json", "<html>intranet</html>"), "not a JSON object"},
			{"not JSON", respond("200 OK", "text/plain", `{"location":"intranet","serial":"`+serial+`"}`), `is "text/plain", not JSON`},
			{"two objects", respond("200 OK", "application/json", `{"location":"intranet","serial":"`+serial+`"}{"location":"internet"}`), "data after the JSON object"},
			{"no location", respond("200 OK", "application/json", `{"serial":"`+serial+`"}`), `location "" is neither`},
			{"wrong type", respond("200 OK", "application/json", `{"location":1,"serial":"`+serial+`"}`), "not a JSON object"},
			{"another serial", respond("200 OK", "application/json", `{"location":"intranet","serial":"42"}`), "it saw client certificate serial 42, not this device's"},
			{"decimal serial", respond("200 OK", "application/json", `{"location":"intranet","serial":"`+s.cfg.ClientCert.Leaf.SerialNumber.String()+`"}`), "not this device's"},
			{"too much", respond("200 OK", "application/json", `{"location":"intranet","serial":"`+serial+`"}`+strings.Repeat(" ", 8000)), "over 4096 bytes"},
			{"endless headers", func(c net.Conn, stop <-chan struct{}) {
				_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\n")
				for i := 0; i < 1000; i++ {
					if _, err := fmt.Fprintf(c, "X-Pad-%d: %s\r\n", i, strings.Repeat("a", 100)); err != nil {
						return
					}
				}
			}, "over 4096 bytes"},
			{"refused", respond("403 Forbidden", "application/json", `{"error":{"code":"device_blocked","message":"device is blocked"}}`), "it refused GET /v1/probe: 403 Forbidden device_blocked: device is blocked"},
			{"silent", func(_ net.Conn, stop <-chan struct{}) { <-stop }, "no answer to GET /v1/probe within 300ms"},
			{"hang up", func(net.Conn, <-chan struct{}) {}, "no answer to GET /v1/probe"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				fake := startFakeMP(t, s.mpCert, tc.answer)
				cfg := s.config(writeResolvConf(t, startDNS(t,
					"_ibcm-mp._tcp.corp.test. 60 IN SRV 0 0 "+portOf(fake)+" mp1.corp.test.",
					"mp1.corp.test. 60 IN A 127.0.0.1",
				)))
				cfg.ProbeTimeout = 300 * time.Millisecond
				d := Detect(ctx, cfg)
				t.Logf("%s", describe(d))
				wantDecision(t, d, wire.Internet, s.inetURL)
				if probe := findStep(t, d, KindProbe, "mp1.corp.test:"+portOf(fake)); probe.OK() || !strings.Contains(probe.Error, tc.want) {
					t.Errorf("probe error = %q, want it to contain %q", probe.Error, tc.want)
				}
			})
		}
	})

	t.Run("RFC 2782 order", func(t *testing.T) {
		// Under a second SRV name: priority 0 points at a closed port, priority 10 at mp1.
		// The first SRV name has no records at all.
		dead := closedPort(t)
		s.bind.NSUpdate(t,
			"update add down.corp.test. 60 A 127.0.0.1",
			"update add _ibcm-alt._tcp.corp.test. 60 SRV 10 0 "+portOf(s.intraMP)+" mp1.corp.test.",
			"update add _ibcm-alt._tcp.corp.test. 60 SRV 0 5 "+dead+" down.corp.test.",
		)
		cfg := s.config(writeResolvConf(t, s.bind.Addr))
		cfg.SRVNames = []string{"_ibcm-none._tcp", "_ibcm-alt._tcp"}
		d := Detect(ctx, cfg)
		t.Logf("%s", describe(d))
		wantDecision(t, d, wire.Intranet, s.intraURL)
		var probes []string
		for _, p := range stepsOf(d, KindProbe) {
			if strings.Contains(p.Target, "corp.test") {
				probes = append(probes, p.Target)
			}
		}
		want := []string{"down.corp.test:" + dead + " at 127.0.0.1", "mp1.corp.test:" + portOf(s.intraMP) + " at 127.0.0.1"}
		if !reflect.DeepEqual(probes, want) {
			t.Errorf("probes %q, want %q", probes, want)
		}
		if p := findStep(t, d, KindProbe, "down.corp.test"); !strings.Contains(p.Error, "connection refused") {
			t.Errorf("probe of the closed port: %+v", p)
		}
	})

	t.Run("first internet MP down", func(t *testing.T) {
		cfg := s.config(writeResolvConf(t, startDNS(t)))
		cfg.InternetMPs = []string{"127.0.0.1:" + closedPort(t), s.inetMP.addr}
		d := Detect(ctx, cfg)
		t.Logf("%s", describe(d))
		wantDecision(t, d, wire.Internet, s.inetURL)
	})

	t.Run("black hole", func(t *testing.T) {
		cfg := s.config(writeResolvConf(t, startBlackHole(t)))
		d := Detect(ctx, cfg)
		t.Logf("took %s\n%s", d.Took, describe(d))
		wantDecision(t, d, wire.Internet, s.inetURL)
		if budget := cfg.withDefaults().Budget; d.Took >= budget+200*time.Millisecond {
			t.Errorf("took %s, want under the budget %s + 200ms", d.Took, budget)
		}
		if srv := findStep(t, d, KindDNS, "_ibcm-mp._tcp.corp.test. SRV"); !strings.Contains(srv.Error, "no answer within 250ms (2 attempts)") {
			t.Errorf("SRV step = %+v, want a timeout", srv)
		}
	})

	t.Run("black hole first", func(t *testing.T) {
		cfg := s.config(writeResolvConf(t, startBlackHole(t), s.bind.Addr))
		d := Detect(ctx, cfg)
		t.Logf("took %s\n%s", d.Took, describe(d))
		wantDecision(t, d, wire.Intranet, s.intraURL)
		if limit := 2 * cfg.withDefaults().DNSTimeout; d.Took >= limit {
			t.Errorf("took %s, want under 2×DNSTimeout = %s", d.Took, limit)
		}
	})

	t.Run("split DNS", func(t *testing.T) {
		// A laptop with two resolvers: the local one knows nothing of corp.test (NXDOMAIN,
		// or NODATA), the VPN's has the SRV record and answers after it. The positive
		// answer wins, in either resolv.conf order.
		intranetRecords := []string{
			"_ibcm-mp._tcp.corp.test. 60 IN SRV 0 0 " + portOf(s.intraMP) + " mp1.corp.test.",
			"mp1.corp.test. 60 IN A 127.0.0.1",
		}
		for _, tc := range []struct {
			name     string
			negative []string // records of the resolver without the SRV record
			want     string   // in its answer
			vpnFirst bool     // the VPN's resolver first in resolv.conf
		}{
			{"NXDOMAIN first", nil, "NXDOMAIN", false},
			{"NODATA first", []string{`_ibcm-mp._tcp.corp.test. 60 IN TXT "not here"`}, "no SRV records", false},
			{"NXDOMAIN second", nil, "NXDOMAIN", true},
		} {
			t.Run(tc.name, func(t *testing.T) {
				first := make(chan struct{})
				var once sync.Once
				local := startOrderedDNS(t, nil, func() { once.Do(func() { close(first) }) }, tc.negative...)
				vpn := startOrderedDNS(t, first, nil, intranetRecords...) // answers once the local one has
				servers := []string{local, vpn}
				if tc.vpnFirst {
					servers = []string{vpn, local}
				}
				d := Detect(ctx, s.config(writeResolvConf(t, servers...)))
				t.Logf("%s", describe(d))
				wantDecision(t, d, wire.Intranet, s.intraURL)
				if srv := findStep(t, d, KindDNS, "_ibcm-mp._tcp.corp.test. SRV"); !strings.Contains(srv.Result, vpn+" answered: 0 0 "+portOf(s.intraMP)) {
					t.Errorf("SRV step = %+v, want the VPN resolver's answer", srv)
				}
			})
		}
		t.Run("both negative", func(t *testing.T) {
			d := Detect(ctx, s.config(writeResolvConf(t, startDNS(t), startDNS(t, `_ibcm-mp._tcp.corp.test. 60 IN TXT "not here"`))))
			wantDecision(t, d, wire.Internet, s.inetURL)
			if srv := findStep(t, d, KindDNS, "_ibcm-mp._tcp.corp.test. SRV"); !srv.OK() || !strings.Contains(srv.Result, "NXDOMAIN") && !strings.Contains(srv.Result, "no SRV records") {
				t.Errorf("SRV step = %+v, want a negative answer", srv)
			}
		})
		t.Run("negative and a black hole", func(t *testing.T) {
			// The black hole may still hold the positive answer: it gets its short
			// timeout and attempts, no more.
			cfg := s.config(writeResolvConf(t, startDNS(t), startBlackHole(t)))
			d := Detect(ctx, cfg)
			t.Logf("took %s\n%s", d.Took, describe(d))
			wantDecision(t, d, wire.Internet, s.inetURL)
			c := cfg.withDefaults()
			if limit := time.Duration(c.DNSAttempts)*c.DNSTimeout + 200*time.Millisecond; d.Took >= limit {
				t.Errorf("took %s, want under DNSAttempts×DNSTimeout + 200ms = %s", d.Took, limit)
			}
			if srv := findStep(t, d, KindDNS, "_ibcm-mp._tcp.corp.test. SRV"); !strings.Contains(srv.Result, "NXDOMAIN") || !strings.Contains(srv.Result, "no answer within") {
				t.Errorf("SRV step = %+v, want the NXDOMAIN and the black hole's timeout", srv)
			}
		})
	})

	t.Run("budget", func(t *testing.T) {
		// Black hole, slow retries and an internet MP that never completes a handshake:
		// the budget ends it all.
		l := startBlackHoleTCP(t)
		cfg := s.config(writeResolvConf(t, startBlackHole(t)))
		cfg.DNSTimeout, cfg.DNSAttempts, cfg.Budget = 200*time.Millisecond, 10, 500*time.Millisecond
		cfg.InternetMPs = []string{l}
		d := Detect(ctx, cfg)
		t.Logf("took %s\n%s", d.Took, describe(d))
		wantDecision(t, d, wire.Internet, "")
		if d.Took >= cfg.Budget+200*time.Millisecond {
			t.Errorf("took %s, want under the budget %s + 200ms", d.Took, cfg.Budget)
		}
		if !strings.Contains(d.Reason, "budget ran out") {
			t.Errorf("reason %q does not mention the budget", d.Reason)
		}
	})

	t.Run("always internet", func(t *testing.T) {
		cfg := s.config(writeResolvConf(t, s.bind.Addr))
		cfg.AlwaysInternet = true
		d := Detect(ctx, cfg)
		t.Logf("took %s\n%s", d.Took, describe(d))
		wantDecision(t, d, wire.Internet, s.inetURL)
		if q := stepsOf(d, KindDNS); len(q) != 0 {
			t.Errorf("always_internet asked DNS: %+v", q)
		}
		if len(stepsOf(d, KindProbe)) != 1 {
			t.Errorf("want exactly the internet MP probed:\n%s", describe(d))
		}
		if !strings.Contains(d.Reason, "always_internet") {
			t.Errorf("reason %q", d.Reason)
		}
	})

	t.Run("unreadable resolv.conf", func(t *testing.T) {
		d := Detect(ctx, s.config(filepath.Join(t.TempDir(), "missing")))
		wantDecision(t, d, wire.Internet, s.inetURL)
		if rc := findStep(t, d, KindResolvConf, ""); rc.OK() || !strings.Contains(rc.Error, "no such file") {
			t.Errorf("resolv.conf step = %+v, want the error", rc)
		}
	})

	t.Run("no roots", func(t *testing.T) {
		cfg := s.config(writeResolvConf(t, s.bind.Addr))
		cfg.Roots = nil
		d := Detect(ctx, cfg)
		wantDecision(t, d, wire.Internet, "")
		if !strings.Contains(d.Reason, "roots: required") || len(d.Evidence) != 0 {
			t.Errorf("decision without roots: %s", describe(d))
		}
	})

	t.Run("JSON", func(t *testing.T) {
		d := Detect(ctx, s.config(writeResolvConf(t, s.bind.Addr)))
		b, err := json.Marshal(d)
		if err != nil {
			t.Fatal(err)
		}
		for _, key := range []string{`"location":"intranet"`, `"mp":"https://mp1.corp.test:`, `"evidence":[{"kind":"resolv.conf"`, `"took_ms":`} {
			if !strings.Contains(string(b), key) {
				t.Errorf("JSON lacks %s: %s", key, b)
			}
		}
		var back Decision
		if err := json.Unmarshal(b, &back); err != nil {
			t.Fatal(err)
		}
		round := func(d Decision) Decision {
			d.Took = d.Took.Round(time.Microsecond)
			d.Evidence = append([]Step(nil), d.Evidence...)
			for i := range d.Evidence {
				d.Evidence[i].Took = d.Evidence[i].Took.Round(time.Microsecond)
			}
			return d
		}
		if !reflect.DeepEqual(round(d), back) {
			t.Errorf("JSON round trip:\n got %+v\nwant %+v", back, round(d))
		}
	})
}
