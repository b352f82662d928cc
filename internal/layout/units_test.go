package layout

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// Every systemd unit under etc/ starts a command that exists with flags it knows: the unit's
// ExecStart is run with --help appended, through the real binary.
func TestSystemdUnitsStartRealCommands(t *testing.T) {
	units, _ := filepath.Glob("../../etc/*.service")
	if len(units) == 0 {
		t.Fatal("no systemd units under etc/")
	}
	bin := t.TempDir()
	for _, main := range []string{"ibcm", "ibcm-client"} {
		cmd := exec.Command("go", "build", "-tags", tags, "-o", filepath.Join(bin, main), "./cli/"+main)
		cmd.Dir = "../.."
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("building %s: %v\n%s", main, err, out)
		}
	}
	for _, u := range units {
		t.Run(filepath.Base(u), func(t *testing.T) {
			f, err := os.Open(u)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			var exec_ string
			sections := map[string]bool{}
			sc := bufio.NewScanner(f)
			for sc.Scan() {
				line := strings.TrimSpace(sc.Text())
				if strings.HasPrefix(line, "[") {
					sections[line] = true
				}
				if v, ok := strings.CutPrefix(line, "ExecStart="); ok {
					exec_ = v
				}
			}
			for _, s := range []string{"[Unit]", "[Service]", "[Install]"} {
				if !sections[s] {
					t.Errorf("no %s section", s)
				}
			}
			args := strings.Fields(exec_)
			if len(args) < 2 {
				t.Fatalf("ExecStart %q", exec_)
			}
			// check the flags: run the same command line with --help (parses the flags, runs nothing)
			cmd := exec.Command(filepath.Join(bin, filepath.Base(args[0])), append(args[1:], "--help")...)
			if out, err := cmd.CombinedOutput(); err != nil || strings.Contains(string(out), "flag provided but not defined") {
				t.Errorf("%s: %v\n%s", exec_, err, out)
			}
		})
	}
}

// The agent's unit keeps its sandbox, and session shells run outside it: they start as
// transient units of their own (--session-shells systemd), the share socket's directory is
// a runtime directory open to local users, and nothing in the unit would hide the PTY or
// systemd's socket from the agent. Test machines may not run systemd, so the unit file is
// read.
func TestAgentUnitSandboxAndShellsOutsideIt(t *testing.T) {
	b, err := os.ReadFile("../../etc/ibcm-client.service")
	if err != nil {
		t.Fatal(err)
	}
	set := map[string][]string{}
	for _, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(line)
		if k, v, ok := strings.Cut(line, "="); ok && !strings.HasPrefix(line, "#") {
			set[k] = append(set[k], v)
		}
	}
	one := func(k string) string {
		if v := set[k]; len(v) > 0 {
			return v[len(v)-1]
		}
		return ""
	}
	for k, want := range map[string]string{"NoNewPrivileges": "true", "ProtectSystem": "strict", "ProtectHome": "true", "PrivateTmp": "true",
		"UMask": "0077", "StateDirectoryMode": "0700", "RuntimeDirectory": "ibcm-client", "RuntimeDirectoryMode": "0755"} {
		if got := one(k); got != want {
			t.Errorf("%s=%q, want %q", k, got, want)
		}
	}
	args := strings.Fields(one("ExecStart"))
	flag := func(name string) string {
		for i, a := range args {
			if a == name && i+1 < len(args) {
				return args[i+1]
			}
			if v, ok := strings.CutPrefix(a, name+"="); ok {
				return v
			}
		}
		return ""
	}
	if flag("--session-shells") != "systemd" {
		t.Errorf("ExecStart %q: session shells must start as units of their own (--session-shells systemd)", one("ExecStart"))
	}
	if s := flag("--share-socket"); filepath.Dir(s) != "/run/"+one("RuntimeDirectory") {
		t.Errorf("the share socket %q is not in the unit's runtime directory", s)
	}
	// The PTY is handed to the shell's unit by its /dev/pts path, and systemd-run talks
	// to systemd over its Unix socket: neither may be hidden from the agent.
	for _, k := range []string{"PrivateDevices", "PrivateUsers", "ProtectControlGroups", "RestrictNamespaces"} {
		if v := one(k); v == "true" || v == "yes" {
			t.Errorf("%s=%s would keep session shells from starting outside the sandbox", k, v)
		}
	}
	if v := one("RestrictAddressFamilies"); v != "" && !strings.Contains(v, "AF_UNIX") {
		t.Errorf("RestrictAddressFamilies=%s: the share socket and systemd-run need AF_UNIX", v)
	}
	if v := one("DevicePolicy"); v == "closed" || v == "strict" {
		t.Errorf("DevicePolicy=%s hides /dev/ptmx", v)
	}
}
