// Package peertest owns the rule for tests that need a real peer (openssl, curl, BIND,
// PostgreSQL, Chromium): when the peer is missing, the test fails under CI=true and is skipped
// otherwise, saying how to get it. `make test` installs the peers (`make deps`).
package peertest

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// Hint says how to get the peers.
const Hint = "run `make deps` as root (Debian: postgresql bind9 bind9-dnsutils openssl curl tmux asciinema bsdutils xvfb x11vnc gvncviewer xterm xfonts-base x11-xserver-utils x11-utils xdotool chromium libnss3-tools)"

// Missing fails t under CI=true and skips it otherwise, with msg.
func Missing(t testing.TB, msg string) {
	t.Helper()
	if os.Getenv("CI") == "true" {
		t.Fatal(msg)
	}
	t.Skip(msg)
}

// Need returns the path of the program name, looked up on PATH and then in /usr/sbin and
// /usr/bin (not on every user's PATH); when it is missing, see Missing.
func Need(t testing.TB, name string) string {
	t.Helper()
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	for _, dir := range []string{"/usr/sbin", "/usr/bin"} {
		p := filepath.Join(dir, name)
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			return p
		}
	}
	Missing(t, name+" not found: "+Hint)
	return ""
}
