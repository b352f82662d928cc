package bindtest

import (
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
)

func TestStartAnswersAndTakesSignedUpdates(t *testing.T) {
	s := Start(t, "corp.test") // without the trailing dot on purpose
	if s.Zone != "corp.test." {
		t.Errorf("Zone = %q, want corp.test.", s.Zone)
	}

	if got := s.Dig(t, "NS", "corp.test."); !slices.Equal(got, []string{"ns.corp.test."}) {
		t.Errorf("dig NS corp.test. = %q, want [ns.corp.test.]", got)
	}

	// The exported key fields sign an update that named accepts.
	rr, err := dns.NewRR("a.corp.test. 60 IN TXT \"from-go\"")
	if err != nil {
		t.Fatal(err)
	}
	m := new(dns.Msg)
	m.SetUpdate(s.Zone)
	m.Insert([]dns.RR{rr})
	m.SetTsig(s.KeyName, s.Algorithm, 300, time.Now().Unix())
	c := &dns.Client{Net: "tcp", TsigSecret: map[string]string{s.KeyName: s.Secret}, Timeout: 3 * time.Second}
	r, _, err := c.Exchange(m, s.Addr)
	if err != nil {
		t.Fatalf("signed update: %v", err)
	}
	if r.Rcode != dns.RcodeSuccess {
		t.Fatalf("signed update answered %s", dns.RcodeToString[r.Rcode])
	}
	if got := s.Dig(t, "TXT", "a.corp.test."); !slices.Equal(got, []string{`"from-go"`}) {
		t.Errorf("dig TXT a.corp.test. = %q, want [\"from-go\"]", got)
	}

	// The real nsupdate, signed with the same key, is accepted too.
	s.NSUpdate(t, "update delete a.corp.test. TXT", "update add b.corp.test. 60 A 192.0.2.7")
	if got := s.Dig(t, "TXT", "a.corp.test."); len(got) != 0 {
		t.Errorf("dig TXT a.corp.test. after delete = %q, want nothing", got)
	}
	if got := s.Dig(t, "A", "b.corp.test."); !slices.Equal(got, []string{"192.0.2.7"}) {
		t.Errorf("dig A b.corp.test. = %q, want [192.0.2.7]", got)
	}
}

func TestUnsignedUpdateRefused(t *testing.T) {
	s := Start(t, "corp.test.")
	rr, err := dns.NewRR("x.corp.test. 60 IN A 192.0.2.1")
	if err != nil {
		t.Fatal(err)
	}
	m := new(dns.Msg)
	m.SetUpdate(s.Zone)
	m.Insert([]dns.RR{rr})
	r, _, err := (&dns.Client{Net: "tcp", Timeout: 3 * time.Second}).Exchange(m, s.Addr)
	if err != nil {
		t.Fatal(err)
	}
	if r.Rcode != dns.RcodeRefused {
		t.Errorf("unsigned update answered %s, want REFUSED", dns.RcodeToString[r.Rcode])
	}
	if got := s.Dig(t, "A", "x.corp.test."); len(got) != 0 {
		t.Errorf("dig A x.corp.test. = %q, want nothing", got)
	}
}

func TestTwoServersAtOnce(t *testing.T) {
	a, b := Start(t, "a.test."), Start(t, "b.test.")
	if a.Addr == b.Addr || a.Secret == b.Secret {
		t.Fatalf("two servers share address or secret: %s %s", a.Addr, b.Addr)
	}
	if got := b.Dig(t, "SOA", "b.test."); len(got) != 1 || !strings.HasPrefix(got[0], "ns.b.test. ") {
		t.Errorf("dig SOA b.test. = %q", got)
	}
}

func TestStopRemovesDirectory(t *testing.T) {
	var dir string
	t.Run("server", func(t *testing.T) {
		dir = Start(t, "corp.test.").dir
	})
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("%s still there after the test ended (stat: %v)", dir, err)
	}
}
