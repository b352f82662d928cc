package integration

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ibcm-project/ibcm/internal/freeport"
	"github.com/ibcm-project/ibcm/internal/peertest"

	"github.com/ibcm-project/ibcm/internal/pgtest"
)

// bin holds the paths of the binaries built for this run.
var bin struct{ ibcm, client string }

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "ibcm-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	bin.ibcm, bin.client = filepath.Join(dir, "ibcm"), filepath.Join(dir, "ibcm-client")
	for out, pkg := range map[string]string{bin.ibcm: "./cli/ibcm", bin.client: "./cli/ibcm-client"} {
		cmd := exec.Command("go", "build", "-tags", "nobadger,nomysql,nopgx,nobbolt", "-o", out, pkg)
		cmd.Dir = ".."
		if b, err := cmd.CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "building %s: %v\n%s", pkg, err, b)
			os.Exit(1)
		}
	}
	code := pgtest.Run(m)
	os.RemoveAll(dir)
	os.Exit(code)
}

// needTool fails the test (under CI) or skips it when a real peer is missing.
func needTool(t *testing.T, name string) { t.Helper(); peertest.Need(t, name) }

func freeAddr(t *testing.T) string {
	t.Helper()
	a, err := freeport.Addr()
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// result is what a finished command printed.
type result struct {
	stdout, stderr string
	code           int
}

// run runs a command to completion (bounded by a minute) and returns what it printed.
func run(t *testing.T, name string, args ...string) result {
	t.Helper()
	return runEnv(t, nil, name, args...)
}

func runEnv(t *testing.T, env []string, name string, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = append(os.Environ(), env...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	r := result{stdout: out.String(), stderr: errb.String()}
	if ee, ok := err.(*exec.ExitError); ok {
		r.code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("%s %v: %v", name, args, err)
	}
	return r
}

// must runs a command that has to succeed and returns its stdout.
func must(t *testing.T, name string, args ...string) string {
	t.Helper()
	r := run(t, name, args...)
	if r.code != 0 {
		t.Fatalf("%s %s: exit %d\nstdout: %s\nstderr: %s", filepath.Base(name), strings.Join(args, " "), r.code, r.stdout, r.stderr)
	}
	return r.stdout
}

// refused runs a command that has to fail and returns what it printed on stderr.
func refused(t *testing.T, name string, args ...string) string {
	t.Helper()
	r := run(t, name, args...)
	if r.code == 0 {
		t.Fatalf("%s %s succeeded, want it refused\nstdout: %s", filepath.Base(name), strings.Join(args, " "), r.stdout)
	}
	return r.stderr
}

// testSite is a site made by `ibcm site init` and running under `ibcm site up`.
type testSite struct {
	dir, caURL, publicURL  string
	mpIntranet, mpInternet string // MP base URLs
	dsn                    string // PostgreSQL store
	cmd                    *exec.Cmd
	stop                   func() // stops `site up` (SIGTERM) and checks it exits cleanly
}

// startSite inits a site (store "sqlite" or "postgres", extra flags of `site init`) and runs
// `ibcm site up` until the test ends; it returns once every listener printed its ready line.
func startSite(t *testing.T, store string, extra ...string) *testSite {
	t.Helper()
	s := initSite(t, store, extra...)
	s.start(t, "site", "up", "--dir", s.dir)
	return s
}

// initSite runs `ibcm site init` on free loopback ports, with extra flags of `site init`.
func initSite(t *testing.T, store string, extra ...string) *testSite {
	t.Helper()
	dsn := ""
	if store == "postgres" {
		dsn = pgtest.DSN(t)
	}
	return initSiteDSN(t, store, dsn, extra...)
}

// initSiteDSN is initSite with the PostgreSQL database given (store "postgres").
func initSiteDSN(t *testing.T, store, dsn string, extra ...string) *testSite {
	t.Helper()
	s := &testSite{dir: filepath.Join(t.TempDir(), "site"), dsn: dsn}
	caAddr, pubAddr, mpIn, mpOut := freeAddr(t), freeAddr(t), freeAddr(t), freeAddr(t)
	s.caURL, s.publicURL = "https://"+caAddr, "http://"+pubAddr
	s.mpIntranet, s.mpInternet = "https://"+mpIn, "https://"+mpOut
	args := []string{"site", "init", "--dir", s.dir, "--site-code", "E2E", "--intranet-name", "ibcm.corp.test",
		"--internet-name", "ibcm.example.test", "--ca-addr", caAddr, "--ca-public-addr", pubAddr,
		"--mp-intranet-addr", mpIn, "--mp-internet-addr", mpOut, "--store", store,
		"--dp-intranet-addr", freeAddr(t), "--dp-internet-addr", freeAddr(t), "--console-addr", freeAddr(t)}
	if store == "postgres" {
		args = append(args, "--dsn", s.dsn)
	}
	must(t, bin.ibcm, append(args, extra...)...)
	return s
}

// start runs an ibcm server command (site up, ca serve, mp serve, dp serve) until the test
// ends; it returns once every listener the command serves printed its ready line
// ("<role> <url> (listening on ...)").
func (s *testSite) start(t *testing.T, args ...string) *proc {
	t.Helper()
	roles := map[string][]string{"site up": {"ca", "ca-public", "mp-intranet", "mp-internet"},
		"ca serve": {"ca", "ca-public"}, "mp serve": {"mp-intranet", "mp-internet"}}[args[0]+" "+args[1]]
	roles = append(roles, dpRoles(t, args)...)
	cmd := exec.Command(bin.ibcm, args...)
	if args[1] == "up" {
		s.cmd = cmd
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var logs bytes.Buffer
	cmd.Stderr = &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	ready := make(chan error, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		seen := map[string]bool{}
		for sc.Scan() {
			if f := strings.Fields(sc.Text()); len(f) > 0 {
				seen[f[0]] = true
			}
			all := true
			for _, r := range roles {
				all = all && seen[r]
			}
			if all {
				ready <- nil
				break
			}
		}
		_, _ = io.Copy(io.Discard, stdout)
		ready <- fmt.Errorf("site up exited before it was ready")
	}()
	select {
	case err := <-ready:
		if err != nil {
			t.Fatalf("%v\n%s", err, logs.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("%v not ready after 30s\n%s", args, logs.String())
	}
	p := newProc(t, cmd, fmt.Sprint(args), logs.String)
	if args[1] == "up" {
		s.stop = p.stop
	}
	t.Cleanup(p.stop)
	return p
}

// ibcm runs an admin command against the site (IBCM_DIR names it) and returns its stdout.
func (s *testSite) ibcm(t *testing.T, args ...string) string {
	t.Helper()
	r := s.try(t, args...)
	if r.code != 0 {
		t.Fatalf("ibcm %s: exit %d\n%s%s", strings.Join(args, " "), r.code, r.stdout, r.stderr)
	}
	return r.stdout
}

// try runs an admin command against the site and returns whatever happened.
func (s *testSite) try(t *testing.T, args ...string) result {
	t.Helper()
	return runEnv(t, []string{"IBCM_DIR=" + s.dir}, bin.ibcm, args...)
}

func (s *testSite) path(p string) string { return filepath.Join(s.dir, p) }

// stopper returns a function (safe to call twice) that ends a started server process the way
// systemd does, SIGTERM, and fails t unless it exits cleanly within 15 s; logs says what the
// process printed, for the failure message.
func stopper(t *testing.T, cmd *exec.Cmd, name string, logs func() string) func() {
	return newProc(t, cmd, name, logs).stop
}

// proc is a started server process. stop ends it the way systemd does (SIGTERM) and fails
// the test unless it exits cleanly within 15 s; kill ends it the way a crash does (SIGKILL).
// Whichever comes first ends it; the other then does nothing.
type proc struct {
	t     *testing.T
	cmd   *exec.Cmd
	name  string
	logs  func() string // what the process printed, for failure messages
	ended bool
}

func newProc(t *testing.T, cmd *exec.Cmd, name string, logs func() string) *proc {
	return &proc{t: t, cmd: cmd, name: name, logs: logs}
}

func (p *proc) stop() {
	if p.ended {
		return
	}
	p.ended = true
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan error, 1)
	go func() { done <- p.cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			p.t.Errorf("%s did not stop cleanly on SIGTERM: %v\n%s", p.name, err, p.logs())
		}
	case <-time.After(15 * time.Second):
		_ = p.cmd.Process.Kill()
		p.t.Errorf("%s did not stop within 15s of SIGTERM", p.name)
	}
}

func (p *proc) kill() {
	if p.ended {
		return
	}
	p.ended = true
	_ = p.cmd.Process.Kill()
	_ = p.cmd.Wait()
}
