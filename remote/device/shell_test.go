package device

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ibcm-project/ibcm/internal/wire"
	"github.com/ibcm-project/ibcm/remote/ticket"
)

// SystemdShells hands the agent's PTY to a transient unit by path and kills the unit at
// the end. systemd-run and systemctl are stand-ins here (test machines may not run
// systemd): they check the arguments a real one would get and run the shell on the PTY.
func TestSystemdShellsArguments(t *testing.T) {
	dir := t.TempDir()
	calls := filepath.Join(dir, "calls")
	run := filepath.Join(dir, "systemd-run")
	os.WriteFile(run, []byte(`#!/bin/sh
echo "run $*" >> `+calls+`
tty=""
while [ $# -gt 0 ]; do
  case "$1" in
    -p) case "$2" in TTYPath=*) tty="${2#TTYPath=}";; esac; shift 2;;
    --) shift; break;;
    *) shift;;
  esac
done
echo $$ > `+filepath.Join(dir, "pid")+`
exec "$@" <"$tty" >"$tty" 2>&1
`), 0o755)
	ctl := filepath.Join(dir, "systemctl")
	os.WriteFile(ctl, []byte("#!/bin/sh\necho \"ctl $*\" >> "+calls+"\nkill -KILL $(cat "+filepath.Join(dir, "pid")+") 2>/dev/null || true\n"), 0o755)
	sh, err := SystemdShells{Run: run, Ctl: ctl}.Start(ShellSpec{Account: Account{UID: 0, GID: 0, Name: "root", Home: "/", Shell: "/bin/sh"}, Rows: 30, Cols: 100, Name: "ibcm-0123456789ab-elevated"})
	if err != nil {
		t.Fatal(err)
	}
	sh.PTY.Write([]byte("echo READY$((40+2)); exec sleep 4242\n"))
	buf := make([]byte, 4096)
	var out strings.Builder
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(out.String(), "READY42") && time.Now().Before(deadline) {
		n, err := sh.PTY.Read(buf)
		out.Write(buf[:n])
		if err != nil {
			break
		}
	}
	if !strings.Contains(out.String(), "READY42") {
		t.Fatalf("the shell on the unit's TTY did not answer: %q", out.String())
	}
	sh.Kill()
	select {
	case <-sh.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("the unit's shell did not end")
	}
	b, _ := os.ReadFile(calls)
	got := string(b)
	for _, want := range []string{"--unit ibcm-0123456789ab-elevated.service", "--collect", "--wait", "--uid 0", "TTYPath=/dev/pts/", "StandardInput=tty-force",
		"KillMode=control-group", "-- /bin/sh -l", "ctl kill --signal=SIGKILL ibcm-0123456789ab-elevated.service", "ctl stop ibcm-0123456789ab-elevated.service"} {
		if !strings.Contains(got, want) {
			t.Errorf("no %q in the calls:\n%s", want, got)
		}
	}
}

// idle_timeout ends a session nobody types in or reads from.
func TestIdleTimeout(t *testing.T) {
	rc := defaultRC()
	rc.AllowUnattended, rc.PromptUser, rc.IdleTimeout = true, false, "500ms"
	e := newEnv(t, rc)
	signed, _ := e.ticketFor(ticket.ModeUnattended, ticket.ModeUnattended)
	if err := e.host.Request(context.Background(), signed); err != nil {
		t.Fatal(err)
	}
	if _, err := e.connect(e.alice); err != nil {
		t.Fatal(err)
	}
	if end := e.rep.wait(t, wire.ReportEnded); end.Message != "the session was idle too long" {
		t.Errorf("ended %+v", end)
	}
}
