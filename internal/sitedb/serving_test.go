package sitedb

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"
)

// The serving-lock tests run this test binary again as the "other process": with
// servingChildEnv set to a store path, TestServingLockChild takes LockServing there, prints
// "locked" or the error, and (locked) holds the lock until its stdin closes.
const servingChildEnv = "IBCM_SITEDB_SERVING_CHILD"

func TestServingLockChild(t *testing.T) {
	path := os.Getenv(servingChildEnv)
	if path == "" {
		t.Skip("only run as the other process of the serving-lock tests")
	}
	db, err := Open(testContext(t), SQLite, path)
	if err != nil {
		fmt.Println("open:", err)
		os.Exit(3)
	}
	if _, err := db.LockServing(); err != nil {
		fmt.Printf("refused: %v (ErrServedElsewhere %v)\n", err, errors.Is(err, ErrServedElsewhere))
		os.Exit(2)
	}
	fmt.Println("locked")
	_, _ = bufio.NewReader(os.Stdin).ReadString('\n') // until the parent closes stdin or kills us
	os.Exit(0)
}

// otherProcess is the test binary started as another process serving on path.
type otherProcess struct {
	cmd   *exec.Cmd
	stdin interface{ Close() error }
	line  string // the first line it printed
}

func startOther(t *testing.T, path string) *otherProcess {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestServingLockChild$", "-test.count=1")
	cmd.Env = append(os.Environ(), servingChildEnv+"="+path)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	lines := make(chan string, 1)
	go func() {
		l, _ := bufio.NewReader(stdout).ReadString('\n')
		lines <- strings.TrimSpace(l)
	}()
	select {
	case l := <-lines:
		return &otherProcess{cmd: cmd, stdin: stdin, line: l}
	case <-time.After(30 * time.Second):
		t.Fatal("the other process printed nothing within 30s")
		return nil
	}
}

// exit waits for the other process and returns its exit code.
func (p *otherProcess) exit(t *testing.T) int {
	t.Helper()
	_ = p.stdin.Close()
	err := p.cmd.Wait()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &ee):
		return ee.ExitCode()
	}
	t.Fatalf("waiting for the other process: %v", err)
	return -1
}

func TestLockServing(t *testing.T) {
	db := openFresh(t, SQLite)
	path := db.hub.path
	release, err := db.LockServing()
	if err != nil {
		t.Fatalf("LockServing: %v", err)
	}
	// another DB of this process on the same file shares the lock (and the events)
	release2, err := reopen(t, db).LockServing()
	if err != nil {
		t.Fatalf("LockServing of a second DB in the same process: %v", err)
	}
	fi, err := os.Stat(path + ServingLockSuffix)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("lock file mode %v, want 0600", fi.Mode().Perm())
	}
	if b, _ := os.ReadFile(path + ServingLockSuffix); strings.TrimSpace(string(b)) != strconv.Itoa(os.Getpid()) {
		t.Errorf("lock file holds %q, want this pid %d", b, os.Getpid())
	}

	other := startOther(t, path)
	want := fmt.Sprintf("another process (pid %d) already serves site roles on the SQLite store %s", os.Getpid(), path)
	if !strings.Contains(other.line, want) || !strings.Contains(other.line, "ibcm site up") ||
		!strings.Contains(other.line, "PostgreSQL") || !strings.HasSuffix(other.line, "(ErrServedElsewhere true)") {
		t.Errorf("the other process printed %q, want the refusal %q naming site up and PostgreSQL", other.line, want)
	}
	if code := other.exit(t); code != 2 {
		t.Errorf("other process exit %d, want 2 (refused)", code)
	}

	release()
	release() // once only
	if other := startOther(t, path); other.line == "locked" {
		t.Fatal("the lock went while a second DB of this process still held it")
	}
	release2()
	other = startOther(t, path)
	if other.line != "locked" {
		t.Fatalf("after release the other process printed %q, want locked", other.line)
	}
	// ... and now this process is the second one
	if _, err := db.LockServing(); !errors.Is(err, ErrServedElsewhere) || !strings.Contains(err.Error(), fmt.Sprintf("(pid %d)", other.cmd.Process.Pid)) {
		t.Fatalf("LockServing while another process holds it: %v, want ErrServedElsewhere naming pid %d", err, other.cmd.Process.Pid)
	}
	// SIGKILL leaves no stale lock: the kernel drops it with the process
	if err := other.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = other.cmd.Wait()
	release, err = db.LockServing()
	if err != nil {
		t.Fatalf("LockServing after the holder was killed: %v", err)
	}
	release()
}

func TestLockServingRefusesSymlink(t *testing.T) {
	db := openFresh(t, SQLite)
	victim := db.hub.path + ".victim"
	if err := os.WriteFile(victim, []byte("keep me"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(victim, db.hub.path+ServingLockSuffix); err != nil {
		t.Fatal(err)
	}
	if _, err := db.LockServing(); err == nil {
		t.Fatal("LockServing followed a symlink at the lock file")
	}
	if b, _ := os.ReadFile(victim); string(b) != "keep me" {
		t.Fatalf("the symlink's target was changed: %q", b)
	}
}

func TestLockServingPostgres(t *testing.T) {
	db := openFresh(t, Postgres)
	release, err := db.LockServing()
	if err != nil {
		t.Fatalf("LockServing on PostgreSQL: %v", err)
	}
	release2, err := reopen(t, db).LockServing()
	if err != nil {
		t.Fatalf("a second LockServing on PostgreSQL: %v (LISTEN/NOTIFY reaches every process)", err)
	}
	release()
	release2()
}
