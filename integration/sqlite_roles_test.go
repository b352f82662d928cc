package integration

import (
	"fmt"
	"net"
	"strings"
	"testing"
	"time"
)

// TestSQLiteServesFromOneProcess: on a SQLite store events never leave the process that
// sends them, so while `ibcm site up` runs, a second serving process on the same site
// (`ibcm mp serve`, `ibcm ca serve`) is refused at start-up, before it listens, with an
// error that says what to do; admin commands still work. Once the first process stops,
// the second starts. (Two processes on PostgreSQL: TestBlockAcrossMPProcesses.)
func TestSQLiteServesFromOneProcess(t *testing.T) {
	s := startSite(t, "sqlite")
	mp2In, mp2Out := freeAddr(t), freeAddr(t)
	second := s.path("site-mp2.yaml")
	editConfig(t, s.path("site.yaml"), second, func(mp map[string]any) {
		mp["id"] = "mp2"
		mp["intranet_listen"], mp["intranet_url"] = mp2In, "https://"+mp2In
		mp["internet_listen"], mp["internet_url"] = mp2Out, "https://"+mp2Out
	})
	want := fmt.Sprintf("another process (pid %d) already serves site roles on the SQLite store", s.cmd.Process.Pid)
	for _, args := range [][]string{{"mp", "serve", "--config", second}, {"ca", "serve", "--config", s.path("site.yaml")}} {
		r := run(t, bin.ibcm, args...)
		if r.code == 0 {
			t.Fatalf("ibcm %s succeeded while ibcm site up serves the same SQLite site", strings.Join(args, " "))
		}
		for _, w := range []string{want, s.path("site.db"), `"ibcm site up"`, "PostgreSQL"} {
			if !strings.Contains(r.stderr, w) {
				t.Errorf("ibcm %s: stderr lacks %q:\n%s", strings.Join(args, " "), w, r.stderr)
			}
		}
		if strings.Contains(r.stdout, "listening on") {
			t.Errorf("ibcm %s listened before it was refused:\n%s", strings.Join(args, " "), r.stdout)
		}
	}
	for _, addr := range []string{mp2In, mp2Out} {
		if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
			c.Close()
			t.Errorf("%s accepts connections: the refused MP listened", addr)
		}
	}
	s.ibcm(t, "site", "status") // admin commands are not affected
	s.ibcm(t, "ca", "list")

	s.stop()
	s.start(t, "mp", "serve", "--config", second)
	if r := run(t, bin.ibcm, "site", "up", "--dir", s.dir); r.code == 0 || !strings.Contains(r.stderr, "already serves site roles") {
		t.Fatalf("ibcm site up while ibcm mp serve serves the site: exit %d\n%s", r.code, r.stderr)
	}
}
