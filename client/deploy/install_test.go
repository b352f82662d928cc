package deploy

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// SystemdInstaller with stand-ins for systemd-run and systemctl: the command goes to a
// transient unit with the package directory as its working directory, the environment
// with -E, the unit's exit status comes back, and at the timeout the unit is killed.
func TestSystemdInstaller(t *testing.T) {
	bin := t.TempDir()
	args := filepath.Join(bin, "args")
	killed := filepath.Join(bin, "killed")
	// systemd-run: record the arguments, run what follows "--" in WorkingDirectory.
	run := "#!/bin/sh\nprintf '%s\\n' \"$@\" > " + args + "\nwd=\nwhile [ \"$1\" != -- ]; do\n  case \"$1\" in WorkingDirectory=*) wd=${1#WorkingDirectory=};; esac\n  shift\ndone\nshift\ncd \"$wd\" && exec \"$@\"\n"
	ctl := "#!/bin/sh\necho \"$@\" >> " + killed + "\n"
	os.WriteFile(filepath.Join(bin, "systemd-run"), []byte(run), 0o755)
	os.WriteFile(filepath.Join(bin, "systemctl"), []byte(ctl), 0o755)
	inst := SystemdInstaller{SystemdRun: filepath.Join(bin, "systemd-run"), Systemctl: filepath.Join(bin, "systemctl")}
	dir := t.TempDir()
	code, out, err := inst.Run(context.Background(), InstallRun{Unit: "ibcm-install-d1-1", Dir: dir, Command: "pwd; exit 3", Timeout: 10 * time.Second, Env: []string{"IBCM_PACKAGE=x"}})
	if err != nil || code != 3 || strings.TrimSpace(out) != dir {
		t.Fatalf("code %d, output %q, %v", code, out, err)
	}
	b, _ := os.ReadFile(args)
	for _, want := range []string{"--unit\nibcm-install-d1-1.service\n", "--wait\n", "KillMode=control-group\n", "RuntimeMaxSec=15\n", "-E\nIBCM_PACKAGE=x\n", "--\n/bin/sh\n-c\npwd; exit 3\n"} {
		if !strings.Contains(string(b), want) {
			t.Errorf("systemd-run arguments lack %q:\n%s", want, b)
		}
	}
	code, _, err = inst.Run(context.Background(), InstallRun{Unit: "ibcm-install-d2-1", Dir: dir, Command: "exec sleep 1", Timeout: 100 * time.Millisecond})
	if !errors.Is(err, ErrTimeout) || code != -1 {
		t.Fatalf("timeout: code %d, %v", code, err)
	}
	if b, _ := os.ReadFile(killed); !strings.Contains(string(b), "kill --signal=SIGKILL ibcm-install-d2-1.service") {
		t.Fatalf("systemctl calls: %q", b)
	}
}
