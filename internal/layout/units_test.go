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
