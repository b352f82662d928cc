package location

import (
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestParseResolvConf(t *testing.T) {
	for _, tc := range []struct {
		name    string
		conf    string
		want    []string
		skipped int
	}{
		{"empty", "", nil, 0},
		{"plain", "nameserver 192.0.2.53\n", []string{"192.0.2.53:53"}, 0},
		{"port", "nameserver 127.0.0.1:5353", []string{"127.0.0.1:5353"}, 0},
		{"IPv6", "nameserver 2001:db8::53", []string{"[2001:db8::53]:53"}, 0},
		{"IPv6 brackets", "nameserver [2001:db8::53]", []string{"[2001:db8::53]:53"}, 0},
		{"IPv6 brackets port", "nameserver [::1]:5300", []string{"[::1]:5300"}, 0},
		{"IPv6 zone", "nameserver fe80::1%eth0", []string{"[fe80::1%eth0]:53"}, 0},
		{"IPv4-mapped", "nameserver ::ffff:192.0.2.1", []string{"192.0.2.1:53"}, 0},
		{"comments and options", "# nameserver 192.0.2.1\n; nameserver 192.0.2.2\nsearch corp.example\ndomain corp.example\noptions ndots:2 timeout:1\nnameserver 192.0.2.3 # trailing comment\n",
			[]string{"192.0.2.3:53"}, 0},
		{"whitespace", "  \tnameserver\t192.0.2.4  \r\n\n", []string{"192.0.2.4:53"}, 0},
		{"order kept, duplicates dropped", "nameserver 192.0.2.2\nnameserver 192.0.2.1\nnameserver 192.0.2.2:53\n", []string{"192.0.2.2:53", "192.0.2.1:53"}, 0},
		{"garbage", "nameserver\nnameserver ns1.corp.example\nnameserver 192.0.2.1:0\nnameserver 192.0.2.1:99999\nnameserver 192.0.2.1:+53\nnameserver [192.0.2.1]:53\nnameserver 2001:db8::1]:53\nnameserver 192.0.2.1#53\n\x00\xff garbage\nnameservers 192.0.2.9\nnameserver 192.0.2.5\n",
			[]string{"192.0.2.5:53"}, 8},
		{"at most 8", strings.Repeat("nameserver 192.0.2.1\n", 2) + "nameserver 10.0.0.1\nnameserver 10.0.0.2\nnameserver 10.0.0.3\nnameserver 10.0.0.4\nnameserver 10.0.0.5\nnameserver 10.0.0.6\nnameserver 10.0.0.7\nnameserver 10.0.0.8\n",
			[]string{"192.0.2.1:53", "10.0.0.1:53", "10.0.0.2:53", "10.0.0.3:53", "10.0.0.4:53", "10.0.0.5:53", "10.0.0.6:53", "10.0.0.7:53"}, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, skipped := ParseResolvConf([]byte(tc.conf))
			if !slices.Equal(got, tc.want) {
				t.Errorf("nameservers = %q, want %q", got, tc.want)
			}
			if len(skipped) != tc.skipped {
				t.Errorf("skipped = %q, want %d lines", skipped, tc.skipped)
			}
		})
	}
}

func TestReadResolvConfEvidence(t *testing.T) {
	path := filepath.Join(t.TempDir(), "resolv.conf")
	if err := os.WriteFile(path, []byte("nameserver 192.0.2.1\nnameserver bogus\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	servers, step := readResolvConf(path)
	if !slices.Equal(servers, []string{"192.0.2.1:53"}) || !step.OK() ||
		!strings.Contains(step.Result, "192.0.2.1:53") || !strings.Contains(step.Result, `line 2: nameserver "bogus"`) {
		t.Errorf("servers %q, step %+v", servers, step)
	}
	if err := os.WriteFile(path, []byte("search corp.example\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if servers, step := readResolvConf(path); servers != nil || step.Error != "no nameservers" {
		t.Errorf("without nameservers: servers %q, step %+v", servers, step)
	}
}

// FuzzParseResolvConf checks the parser never panics, returns only usable, distinct
// addresses, at most 8, and reads its own output back unchanged.
func FuzzParseResolvConf(f *testing.F) {
	for _, s := range []string{
		"nameserver 127.0.0.1\n",
		"nameserver 127.0.0.1:5353\nnameserver [::1]:53\n",
		"# c\nsearch a b\nnameserver fe80::1%eth0\noptions ndots:1\n",
		"nameserver [::ffff:1.2.3.4]:53\nnameserver 1.2.3.4#53\n",
		"nameserver\tnameserver\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		got, _ := ParseResolvConf(data)
		if len(got) > maxNameservers {
			t.Fatalf("%d nameservers", len(got))
		}
		seen := map[string]bool{}
		var again strings.Builder
		for _, s := range got {
			ap, err := netip.ParseAddrPort(s)
			if err != nil || ap.Port() == 0 || !ap.Addr().IsValid() {
				t.Fatalf("nameserver %q is not IP:port: %v", s, err)
			}
			if seen[s] {
				t.Fatalf("nameserver %q twice", s)
			}
			seen[s] = true
			again.WriteString("nameserver " + s + "\n")
		}
		back, skipped := ParseResolvConf([]byte(again.String()))
		if !slices.Equal(back, got) || len(skipped) != 0 {
			t.Fatalf("reparsing %q gave %q (skipped %q)", got, back, skipped)
		}
	})
}
