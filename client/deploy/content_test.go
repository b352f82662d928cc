package deploy

import (
	"net/url"
	"strings"
	"testing"
)

func TestCheckDPs(t *testing.T) {
	got, err := CheckDPs([]string{"http://dp0:80", "https://dp1.corp.example:8446/", "ftp://x", "https://user@dp2:1", "https://dp3:8446/path", "https://dp4:8446", "not a url", "https://dp5#x", "https://dp6?"})
	if err != nil || strings.Join(got, " ") != "https://dp1.corp.example:8446 https://dp4:8446" {
		t.Fatalf("%q %v", got, err)
	}
	if _, err := CheckDPs(nil); err == nil || !strings.Contains(err.Error(), "no DP") {
		t.Fatalf("none: %v", err)
	}
	if _, err := CheckDPs([]string{"http://dp0"}); err == nil || !strings.Contains(err.Error(), `refused "http://dp0"`) {
		t.Fatalf("bad only: %v", err)
	}
	many := make([]string, 100)
	for i := range many {
		many[i] = "https://dp:1"
	}
	if got, _ := CheckDPs(many); len(got) != MaxDPs {
		t.Fatalf("%d DPs kept", len(got))
	}
}

// FuzzCheckDPs: whatever an MP answers, only https URLs of a host come out.
func FuzzCheckDPs(f *testing.F) {
	f.Add("https://dp1:8446")
	f.Add("https://[::1]:8446/")
	f.Add("javascript:alert(1)")
	f.Fuzz(func(t *testing.T, s string) {
		got, err := CheckDPs([]string{s})
		if err != nil {
			return
		}
		if len(got) != 1 {
			t.Fatalf("%q -> %q", s, got)
		}
		u, err := url.Parse(got[0])
		if err != nil || u.Scheme != "https" || u.Host == "" || u.User != nil || u.Path != "" || u.RawQuery != "" || u.Fragment != "" || got[0] != "https://"+u.Host {
			t.Fatalf("%q -> %q (%v)", s, got, err)
		}
	})
}
