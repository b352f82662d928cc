package device

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// The sharer owns the screen session's directory (x11vnc runs as them and removes the
// password file), so a name in it may already be their symlink when the root agent writes
// the password there: the write must neither follow it (clobbering, say, /etc/shadow) nor
// chown its target to the sharer.
func TestWriteSecretRefusesAPlantedSymlink(t *testing.T) {
	dir := t.TempDir()
	victim := filepath.Join(dir, "victim")
	if err := os.WriteFile(victim, []byte("keep"), 0o600); err != nil {
		t.Fatal(err)
	}
	pw := filepath.Join(dir, "passwd")
	if err := os.Symlink(victim, pw); err != nil {
		t.Fatal(err)
	}
	if err := writeSecret(pw, []byte("secret\n"), &syscall.Credential{Uid: 65534, Gid: 65534}); err == nil {
		t.Error("the password was written through the sharer's symlink")
	}
	if b, _ := os.ReadFile(victim); string(b) != "keep" {
		t.Errorf("the symlink's target now holds %q", b)
	}
	fi, err := os.Stat(victim)
	if err != nil {
		t.Fatal(err)
	}
	if st := fi.Sys().(*syscall.Stat_t); int(st.Uid) != os.Geteuid() {
		t.Errorf("the symlink's target now belongs to uid %d", st.Uid)
	}
}

// x11vnc run as the sharer by a root agent keeps none of root's supplementary groups (the
// sharer could ptrace it and use them).
func TestStartScreenDropsTheAgentsGroups(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to run x11vnc as another user")
	}
	dir, err := os.MkdirTemp("", "ibcm-standin-") // t.TempDir's parent is root's only
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	stand := filepath.Join(dir, "x11vnc")
	if err := os.WriteFile(stand, []byte("#!/bin/sh\necho groups: $(id -G) >&2\nexit 3\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	// The agent as a systemd service has root's groups; here the test process gets them.
	groups, err := syscall.Getgroups()
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Setgroups([]int{0}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = syscall.Setgroups(groups) })
	old := X11VNCBinary
	X11VNCBinary = stand
	t.Cleanup(func() { X11VNCBinary = old })
	var log bytes.Buffer
	_, err = StartScreen(context.Background(), ScreenSpec{Display: ":99", As: &Account{UID: 65534, GID: 65534}, Log: &log})
	if err == nil {
		t.Fatal("the stand-in started")
	}
	line := log.String()
	if !strings.Contains(line, "groups:") {
		t.Fatalf("the stand-in said %q (%v)", line, err)
	}
	for _, g := range strings.Fields(strings.TrimPrefix(strings.TrimSpace(line), "groups:")) {
		if g == "0" {
			t.Errorf("x11vnc as uid 65534 has root's group: %s", line)
		}
	}
}
