package agent

import (
	"net"
	"slices"
	"testing"

	"github.com/ibcm-project/ibcm/ca/catest"
	"github.com/ibcm-project/ibcm/client/location"
	"github.com/ibcm-project/ibcm/internal/wire"
)

// With DirectAddrs, the agent reports those addresses (hello, check-in) and its session
// port listens on them alone; without, it reports the interfaces' non-loopback ones.
func TestDirectAddrsAreWhatTheAgentReports(t *testing.T) {
	s := catest.Start(t)
	dir := t.TempDir()
	enrolled(t, s, dir)

	a, err := New(Options{Dir: dir, DirectAddrs: []net.IP{net.ParseIP("127.0.0.9"), net.ParseIP("::1")}})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := a.addresses(), []string{"127.0.0.9", "::1"}; !slices.Equal(got, want) {
		t.Errorf("addresses with DirectAddrs = %v, want %v", got, want)
	}

	def, err := New(Options{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range def.addresses() {
		if ip := net.ParseIP(s); ip == nil || ip.IsLoopback() || ip.IsLinkLocalUnicast() {
			t.Errorf("default addresses include %q: want the interfaces' non-loopback, non-link-local ones", s)
		}
	}

	for _, bad := range [][]net.IP{{net.IPv4zero}, {net.ParseIP("224.0.0.1")}, {nil}, make([]net.IP, 17)} {
		if _, err := New(Options{Dir: dir, DirectAddrs: bad}); err == nil {
			t.Errorf("New with DirectAddrs %v: no error", bad)
		}
	}
}

// Without DirectAddrs the session port listens only on the address the device reaches its
// intranet MP from, and nowhere off the intranet.
func TestSessionPortListensOnTheIntranetRouteOnly(t *testing.T) {
	s := catest.Start(t)
	dir := t.TempDir()
	enrolled(t, s, dir)
	a, err := New(Options{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	a.current = location.Decision{Location: wire.Intranet, Addr: "127.0.0.77:8443"}
	if got := a.sessionPortAddrs(); len(got) != 1 || !got[0].Equal(net.ParseIP("127.0.0.1")) && !got[0].Equal(net.ParseIP("127.0.0.77")) {
		t.Errorf("on the intranet (MP at 127.0.0.77): %v, want the loopback source address", got)
	}
	a.current = location.Decision{Location: wire.Internet, Addr: "127.0.0.77:8443"}
	if got := a.sessionPortAddrs(); got != nil {
		t.Errorf("on the internet: %v, want none", got)
	}
	b, err := New(Options{Dir: dir, DirectAddrs: []net.IP{net.ParseIP("127.0.0.9")}})
	if err != nil {
		t.Fatal(err)
	}
	b.current = location.Decision{Location: wire.Intranet, Addr: "127.0.0.77:8443"}
	if got := b.sessionPortAddrs(); len(got) != 1 || !got[0].Equal(net.ParseIP("127.0.0.9")) {
		t.Errorf("with DirectAddrs: %v", got)
	}
}
