package deploy

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"syscall"
	"time"
)

// Install commands that did not exit by themselves.
var (
	ErrTimeout = errors.New("install command timed out") // and was killed
	ErrKilled  = errors.New("install command killed")    // by a signal
)

// InstallRun is one run of a package's install command.
type InstallRun struct {
	Unit    string // names the transient unit (systemd): ibcm-install-…
	Dir     string // the package directory: the working directory
	Command string // run by /bin/sh -c
	Timeout time.Duration
	Env     []string
}

// Installer runs install commands. Run returns the exit code when the command exited,
// and an error (ErrTimeout, or why it could not run) otherwise; output is the tail of
// what it printed.
type Installer interface {
	Run(ctx context.Context, r InstallRun) (code int, output string, err error)
}

// tail keeps the last n bytes written to it.
type tail struct {
	mu  sync.Mutex
	n   int
	buf []byte
}

func (t *tail) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, p...)
	if len(t.buf) > t.n {
		t.buf = append([]byte(nil), t.buf[len(t.buf)-t.n:]...)
	}
	return len(p), nil
}

func (t *tail) String() string { t.mu.Lock(); defer t.mu.Unlock(); return string(t.buf) }

func baseEnv(r InstallRun) []string {
	env := []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8"}
	if h := os.Getenv("HOME"); h != "" {
		env = append(env, "HOME="+h)
	}
	return append(env, r.Env...)
}

// DirectInstaller runs the command as a child of the agent in a process group of its own,
// and kills the whole group at the timeout (and once the shell exits: nothing it started
// outlives the install).
type DirectInstaller struct{}

func (DirectInstaller) Run(ctx context.Context, r InstallRun) (int, string, error) {
	out := &tail{n: 4096}
	cmd := exec.Command("/bin/sh", "-c", r.Command)
	cmd.Dir, cmd.Env, cmd.Stdout, cmd.Stderr = r.Dir, baseEnv(r), out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Start(); err != nil {
		return -1, "", fmt.Errorf("starting /bin/sh: %w", err)
	}
	pgid := cmd.Process.Pid
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	timer := time.NewTimer(r.Timeout)
	defer timer.Stop()
	var err error
	select {
	case err = <-done:
		_ = syscall.Kill(-pgid, syscall.SIGKILL)
	case <-timer.C:
		_ = syscall.Kill(-pgid, syscall.SIGKILL)
		<-done
		return -1, out.String(), fmt.Errorf("%w after %s: killed", ErrTimeout, r.Timeout)
	case <-ctx.Done():
		_ = syscall.Kill(-pgid, syscall.SIGKILL)
		<-done
		return -1, out.String(), ctx.Err()
	}
	var ee *exec.ExitError
	switch {
	case err == nil:
		return 0, out.String(), nil
	case errors.As(err, &ee) && ee.ExitCode() >= 0:
		return ee.ExitCode(), out.String(), nil
	case errors.As(err, &ee):
		return -1, out.String(), fmt.Errorf("%w: %v", ErrKilled, err)
	default:
		return -1, out.String(), err
	}
}

// SystemdInstaller runs the command as a transient service (systemd-run), outside the
// agent unit's sandbox, as remote/device.SystemdShells does for session shells: its own
// cgroup, killed whole at the timeout (RuntimeMaxSec, and systemctl kill).
type SystemdInstaller struct {
	// SystemdRun is systemd-run's path ("systemd-run" when empty); Systemctl systemctl's.
	SystemdRun, Systemctl string
}

func (s SystemdInstaller) Run(ctx context.Context, r InstallRun) (int, string, error) {
	run, ctl := s.SystemdRun, s.Systemctl
	if run == "" {
		run = "systemd-run"
	}
	if ctl == "" {
		ctl = "systemctl"
	}
	unit := r.Unit + ".service"
	args := []string{"--unit", unit, "--quiet", "--collect", "--wait", "--pipe", "--service-type=exec",
		"-p", "WorkingDirectory=" + r.Dir, "-p", "KillMode=control-group",
		// systemd's own limit is a backstop a little after ours, so a timeout reads as one
		"-p", "RuntimeMaxSec=" + strconv.FormatInt(int64((r.Timeout+5*time.Second)/time.Second), 10)}
	for _, e := range baseEnv(r) {
		args = append(args, "-E", e)
	}
	args = append(args, "--", "/bin/sh", "-c", r.Command)
	out := &tail{n: 4096}
	cmd := exec.Command(run, args...)
	cmd.Stdout, cmd.Stderr = out, out
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Start(); err != nil {
		return -1, "", fmt.Errorf("systemd-run: %w", err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	kill := func() {
		kctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = exec.CommandContext(kctx, ctl, "kill", "--signal=SIGKILL", unit).Run()
		_ = exec.CommandContext(kctx, ctl, "stop", unit).Run()
	}
	timer := time.NewTimer(r.Timeout)
	defer timer.Stop()
	var err error
	select {
	case err = <-done:
	case <-timer.C:
		kill()
		<-done
		return -1, out.String(), fmt.Errorf("%w after %s: unit %s killed", ErrTimeout, r.Timeout, unit)
	case <-ctx.Done():
		kill()
		<-done
		return -1, out.String(), ctx.Err()
	}
	var ee *exec.ExitError
	switch {
	case err == nil:
		return 0, out.String(), nil
	case errors.As(err, &ee) && ee.ExitCode() >= 0:
		// systemd-run --wait exits with the service's exit status.
		return ee.ExitCode(), out.String(), nil
	default:
		return -1, out.String(), err
	}
}
