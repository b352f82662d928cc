package helper

import "testing"

func TestListenScreenLoopbackOnly(t *testing.T) {
	for _, addr := range []string{"0.0.0.0:0", "192.0.2.1:5900", ":0", "localhost:0"} {
		if p, err := ListenScreen(addr); err == nil {
			p.Close()
			t.Errorf("%s: listening", addr)
		}
	}
	p, err := ListenScreen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if !p.Addr().IP.IsLoopback() || len(p.Password) != 8 {
		t.Fatalf("%v %q", p.Addr(), p.Password)
	}
}
