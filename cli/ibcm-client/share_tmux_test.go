package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/ibcm-project/ibcm/internal/peertest"
	"github.com/ibcm-project/ibcm/remote/device"
)

// `ibcm-client share` on a real terminal (tmux): the user's shell runs and answers, the
// last row is the status line, and leaving the shell ends the sharing.
func TestShareOnARealTerminal(t *testing.T) {
	peertest.Need(t, "tmux")
	if os.Getuid() != 0 {
		peertest.Missing(t, "the share socket must be root's: run the tests as root")
	}
	bin := filepath.Join(t.TempDir(), "ibcm-client")
	build := exec.Command("go", "build", "-tags", "nobadger,nomysql,nopgx,nobbolt", "-o", bin, ".")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	sockDir, err := os.MkdirTemp("", "ibcm-share-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(sockDir)
	os.Chmod(sockDir, 0o755)
	sock := filepath.Join(sockDir, "share.sock")
	h, err := device.New(device.Config{StateDir: t.TempDir(), Log: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := device.ListenShare(sock)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go h.ServeShare(ctx, ln)

	server := fmt.Sprintf("ibcm-test-%d", os.Getpid())
	tmux := func(args ...string) string {
		out, _ := exec.Command("tmux", append([]string{"-L", server}, args...)...).CombinedOutput()
		return string(out)
	}
	defer tmux("kill-server")
	tmux("new-session", "-d", "-s", "share", "-x", "80", "-y", "24",
		bin+" share --share-socket "+sock+" --shell /bin/sh; sleep 30")
	screen := func() []string {
		return strings.Split(strings.TrimRight(tmux("capture-pane", "-p", "-t", "share"), "\n"), "\n")
	}
	waitScreen := func(what string, ok func([]string) bool) {
		t.Helper()
		deadline := time.Now().Add(15 * time.Second)
		for time.Now().Before(deadline) {
			if ok(screen()) {
				return
			}
			time.Sleep(20 * time.Millisecond) // polling the screen itself
		}
		t.Fatalf("%s; screen:\n%s", what, strings.Join(screen(), "\n"))
	}
	waitScreen("no status line on the last row", func(s []string) bool {
		return len(s) == 24 && strings.Contains(s[23], "ibcm: connected to the ibcm agent")
	})
	tmux("send-keys", "-t", "share", "echo HI$((20+22))", "Enter")
	waitScreen("the shell did not answer", func(s []string) bool {
		return strings.Contains(strings.Join(s[:len(s)-1], "\n"), "HI42")
	})
	tmux("send-keys", "-t", "share", "exit", "Enter")
	waitScreen("share did not end with its shell", func(s []string) bool {
		for _, l := range s {
			if strings.Contains(l, "ibcm:") {
				return false
			}
		}
		return true
	})
}
