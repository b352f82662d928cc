package integration

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/ibcm-project/ibcm/internal/wire"
)

// Remote-control tests drive both ends on real terminals: tmux runs the sharer's
// `ibcm-client share` and the helper's `ibcm remote start`, the test types with send-keys
// and reads the screens with capture-pane.

var tmuxServers atomic.Int64

// terminals is one tmux server of a test; each window name is one terminal.
type terminals struct {
	t      *testing.T
	server string
}

func newTerminals(t *testing.T) *terminals {
	t.Helper()
	needTool(t, "tmux")
	tm := &terminals{t: t, server: fmt.Sprintf("ibcm-it-%d-%d", os.Getpid(), tmuxServers.Add(1))}
	t.Cleanup(func() { _ = exec.Command("tmux", "-L", tm.server, "kill-server").Run() })
	return tm
}

func (tm *terminals) tmux(args ...string) string {
	out, err := exec.Command("tmux", append([]string{"-L", tm.server, "-u"}, args...)...).CombinedOutput()
	if err != nil && args[0] != "capture-pane" && args[0] != "has-session" {
		tm.t.Logf("tmux %s: %v %s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// open starts command (a shell line) in a new 160×30 terminal named name, with env added.
// The command's exit status is written to the file exitFile(name) when it ends.
func (tm *terminals) open(name string, env []string, command string) {
	tm.t.Helper()
	line := fmt.Sprintf("%s; echo $? > %s; sleep 600", command, tm.exitFile(name))
	args := []string{"new-session", "-d", "-s", name, "-x", "160", "-y", "30"}
	for _, e := range append([]string{"LANG=C.UTF-8", "LC_ALL=C.UTF-8", "TERM=xterm-256color"}, env...) {
		args = append(args, "-e", e)
	}
	tm.tmux(append(args, line)...)
}

func (tm *terminals) exitFile(name string) string {
	return filepath.Join(os.TempDir(), tm.server+"-"+name+".exit")
}

// keys types keys (tmux key names: "Enter", "C-]") into a terminal.
func (tm *terminals) keys(name string, keys ...string) {
	tm.tmux(append([]string{"send-keys", "-t", name}, keys...)...)
}

// text types text literally.
func (tm *terminals) text(name, s string) { tm.tmux("send-keys", "-t", name, "-l", s) }

func (tm *terminals) screen(name string) string {
	return tm.tmux("capture-pane", "-p", "-J", "-S", "-200", "-t", name)
}

// wait polls a terminal's screen (the screen has no readiness signal) until cond holds.
func (tm *terminals) wait(name, what string, limit time.Duration, cond func(screen string) bool) string {
	tm.t.Helper()
	deadline := time.Now().Add(limit)
	for {
		s := tm.screen(name)
		if cond(s) {
			return s
		}
		if time.Now().After(deadline) {
			tm.t.Fatalf("%s: %s not within %v; screen %q:\n%s", name, what, limit, name, s)
		}
		time.Sleep(25 * time.Millisecond)
	}
}

func (tm *terminals) waitFor(name, text string, limit time.Duration) string {
	tm.t.Helper()
	return tm.wait(name, fmt.Sprintf("%q on the screen", text), limit, func(s string) bool { return strings.Contains(s, text) })
}

// exited waits for a terminal's command to end and returns its exit status.
func (tm *terminals) exited(name string, limit time.Duration) int {
	tm.t.Helper()
	var code int
	waitFor(tm.t, limit, name+" to exit", func() bool {
		b, err := os.ReadFile(tm.exitFile(name))
		if err != nil || len(b) == 0 {
			return false
		}
		_, err = fmt.Sscan(string(b), &code)
		return err == nil
	})
	return code
}

func (tm *terminals) close(name string) { tm.tmux("kill-session", "-t", name) }

// helperUser is a user logged in with `ibcm login` on their own (fresh) home.
type helperUser struct {
	name string
	env  []string
}

// addHelper adds a user with a role (and scopes) and logs them in without a passphrase on
// a fresh home; their commands go to mp (an MP URL) unless it is empty.
func addHelper(t *testing.T, s *testSite, name, role, display, mp string, scopes ...string) helperUser {
	t.Helper()
	args := []string{"user", "add", name, "--role", role, "--display-name", display, "--title", "Service Desk", "--org", "Contoso IT"}
	for _, sc := range scopes {
		args = append(args, "--scope", sc)
	}
	tok := strings.TrimSpace(s.ibcm(t, args...))
	home := t.TempDir()
	env := []string{"HOME=" + home, "XDG_CONFIG_HOME=" + filepath.Join(home, "config")}
	if mp != "" {
		env = append(env, "IBCM_MP_URL="+mp)
	}
	if r := runEnv(t, env, bin.ibcm, "login", "--ca", s.caURL, "--root-sha256", fingerprint(t, s.path("ca/root.crt")), "--token", tok); r.code != 0 {
		t.Fatalf("ibcm login %s: exit %d\n%s%s", name, r.code, r.stdout, r.stderr)
	}
	return helperUser{name: name, env: env}
}

// as runs ibcm as the user.
func (u helperUser) as(t *testing.T, args ...string) result {
	t.Helper()
	return runEnv(t, u.env, bin.ibcm, args...)
}

// sessions lists the site's sessions as the site's admin sees them.
func (s *testSite) sessions(t *testing.T, args ...string) []wire.Session {
	t.Helper()
	var out []wire.Session
	if err := json.Unmarshal([]byte(s.ibcm(t, append([]string{"remote", "sessions", "--json"}, args...)...)), &out); err != nil {
		t.Fatal(err)
	}
	return out
}

// session waits until a session of the device satisfies cond and returns it (the newest
// such one: requested_at counts seconds, so "newest" alone is ambiguous).
func (s *testSite) session(t *testing.T, device, what string, cond func(wire.Session) bool) wire.Session {
	t.Helper()
	var found wire.Session
	waitFor(t, 15*time.Second, what, func() bool {
		for _, x := range s.sessions(t, "--device", device) {
			if cond(x) {
				found = x
				return true
			}
		}
		return false
	})
	return found
}

// setPolicy edits the default policy's remote_control section.
func (s *testSite) setRemotePolicy(t *testing.T, edit func(rc map[string]any)) {
	t.Helper()
	var doc map[string]any
	if err := yaml.Unmarshal([]byte(s.ibcm(t, "policy", "show")), &doc); err != nil {
		t.Fatal(err)
	}
	rc, _ := doc["remote_control"].(map[string]any)
	edit(rc)
	f := filepath.Join(t.TempDir(), "policy.yaml")
	b, err := yaml.Marshal(doc)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(f, b, 0o600); err != nil {
		t.Fatal(err)
	}
	s.ibcm(t, "policy", "set", "--file", f, "default")
}

// startSharingAgent runs an agent with its share socket in a directory of its own (root's,
// 0755) and returns the socket's path.
func startSharingAgent(t *testing.T, dev, resolv string, extra ...string) (sock string, stop func()) {
	t.Helper()
	dir, err := os.MkdirTemp("", "ibcm-share-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	sock = filepath.Join(dir, "share.sock")
	stop = startAgentArgs(t, dev, resolv, append([]string{"--share-socket", sock}, extra...)...)
	return sock, stop
}
