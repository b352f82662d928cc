package device

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/creack/pty"
)

// Account is a local user as /etc/passwd says.
type Account struct {
	UID, GID int
	Name     string
	FullName string // the GECOS field's first part
	Home     string
	Shell    string
}

// PasswdFile is where accounts are looked up.
var PasswdFile = "/etc/passwd"

// LookupUID finds the account of uid.
func LookupUID(uid int) (Account, error) {
	f, err := os.Open(PasswdFile)
	if err != nil {
		return Account{}, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		parts := strings.Split(sc.Text(), ":")
		if len(parts) != 7 || parts[2] != strconv.Itoa(uid) {
			continue
		}
		gid, _ := strconv.Atoi(parts[3])
		full, _, _ := strings.Cut(parts[4], ",")
		a := Account{UID: uid, GID: gid, Name: parts[0], FullName: full, Home: parts[5], Shell: parts[6]}
		if a.Shell == "" || strings.HasSuffix(a.Shell, "nologin") || strings.HasSuffix(a.Shell, "/false") {
			a.Shell = "/bin/sh"
		}
		if a.Home == "" {
			a.Home = "/"
		}
		return a, nil
	}
	return Account{}, fmt.Errorf("no account with uid %d", uid)
}

// ShellSpec is a shell to start on a PTY.
type ShellSpec struct {
	Account    Account
	Rows, Cols uint16
	Name       string // names the shell's cgroup or unit: ibcm-<session>-<kind>
}

// Shell is a running shell: its PTY master, and how to wait for it and end it with every
// process it started.
type Shell struct {
	PTY  *os.File
	done chan struct{}
	kill func()
	once sync.Once
}

// Done is closed when the shell's process has exited.
func (s *Shell) Done() <-chan struct{} { return s.done }

// Kill ends every process of the shell and closes its PTY.
func (s *Shell) Kill() {
	s.once.Do(func() {
		s.kill()
		select {
		case <-s.done:
		case <-time.After(5 * time.Second):
		}
		s.PTY.Close()
	})
}

// ShellStarter starts the shells of sessions.
type ShellStarter interface {
	Start(ShellSpec) (*Shell, error)
}

func shellCommand(a Account) *exec.Cmd {
	cmd := exec.Command(a.Shell)
	cmd.Args[0] = "-" + filepath.Base(a.Shell) // a login shell
	cmd.Dir = a.Home
	cmd.Env = []string{"HOME=" + a.Home, "USER=" + a.Name, "LOGNAME=" + a.Name, "SHELL=" + a.Shell,
		"TERM=xterm-256color", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
	return cmd
}

func credential(a Account) *syscall.Credential {
	if a.UID == os.Getuid() && a.UID != 0 {
		return nil
	}
	cred := &syscall.Credential{Uid: uint32(a.UID), Gid: uint32(a.GID)}
	if u, err := user.LookupId(strconv.Itoa(a.UID)); err == nil {
		if gids, err := u.GroupIds(); err == nil {
			for _, g := range gids {
				if n, err := strconv.Atoi(g); err == nil {
					cred.Groups = append(cred.Groups, uint32(n))
				}
			}
		}
	}
	return cred
}

// CgroupRoot is the cgroup v2 hierarchy DirectShells puts each shell in; empty: the first
// of /sys/fs/cgroup and /sys/fs/cgroup/unified (a hybrid system's v2 hierarchy) that is one.
var CgroupRoot = ""

func cgroupRoot() string {
	if CgroupRoot != "" {
		return CgroupRoot
	}
	for _, d := range []string{"/sys/fs/cgroup", "/sys/fs/cgroup/unified"} {
		if _, err := os.Stat(filepath.Join(d, "cgroup.controllers")); err == nil {
			return d
		}
	}
	return ""
}

// DirectShells starts each shell as a child of the agent, in a session and process group
// of its own, and in a cgroup of its own when the cgroup v2 hierarchy is writable (the
// process is born in it: clone3 with CLONE_INTO_CGROUP), so that Kill ends every process
// it started, even those that left its session (cgroup.kill). Without cgroup v2, Kill
// signals the process group.
type DirectShells struct{}

func (DirectShells) Start(sp ShellSpec) (*Shell, error) {
	cmd := shellCommand(sp.Account)
	attr := &syscall.SysProcAttr{Setsid: true, Setctty: true, Credential: credential(sp.Account)}
	cg := ""
	if dir, fd, err := makeCgroup(sp.Name); err == nil {
		cg = dir
		defer fd.Close()
		attr.UseCgroupFD, attr.CgroupFD = true, int(fd.Fd())
	}
	cmd.SysProcAttr = attr
	f, err := pty.StartWithAttrs(cmd, &pty.Winsize{Rows: max(sp.Rows, 1), Cols: max(sp.Cols, 1)}, attr)
	if err != nil {
		if cg != "" {
			_ = os.Remove(cg)
		}
		return nil, fmt.Errorf("starting %s as %s: %w", sp.Account.Shell, sp.Account.Name, err)
	}
	s := &Shell{PTY: f, done: make(chan struct{})}
	go func() { _ = cmd.Wait(); close(s.done) }()
	pid := cmd.Process.Pid
	s.kill = func() {
		if cg != "" {
			killCgroup(cg)
			return
		}
		_ = syscall.Kill(-pid, syscall.SIGKILL)
	}
	return s, nil
}

// CgroupWritable reports whether shells get a cgroup of their own.
func CgroupWritable() bool {
	root := cgroupRoot()
	if root == "" {
		return false
	}
	if _, err := os.Stat(filepath.Join(root, "cgroup.controllers")); err != nil {
		return false
	}
	return syscall.Access(root, 2 /* W_OK */) == nil
}

func makeCgroup(name string) (string, *os.File, error) {
	if name == "" || !CgroupWritable() {
		return "", nil, errors.New("no writable cgroup v2")
	}
	dir := filepath.Join(cgroupRoot(), name)
	if err := os.Mkdir(dir, 0o755); err != nil {
		return "", nil, err
	}
	if _, err := os.Stat(filepath.Join(dir, "cgroup.kill")); err != nil {
		_ = os.Remove(dir)
		return "", nil, err
	}
	fd, err := os.Open(dir)
	if err != nil {
		_ = os.Remove(dir)
		return "", nil, err
	}
	return dir, fd, nil
}

func killCgroup(dir string) {
	_ = os.WriteFile(filepath.Join(dir, "cgroup.kill"), []byte("1"), 0)
	for i := 0; i < 100; i++ {
		if err := os.Remove(dir); err == nil || errors.Is(err, os.ErrNotExist) {
			return
		}
		time.Sleep(20 * time.Millisecond) // the kernel empties the cgroup asynchronously
	}
}

// SystemdShells starts each shell as a transient service of its own (systemd-run), so it
// runs outside the agent unit's sandbox (ProtectSystem and the like apply to the agent,
// not to a root shell) and in its own cgroup, which systemd kills at the end. The PTY is
// opened by the agent and handed to the unit by path (TTYPath).
type SystemdShells struct {
	// Run is systemd-run's path ("systemd-run" when empty); Ctl systemctl's.
	Run, Ctl string
}

func (s SystemdShells) Start(sp ShellSpec) (*Shell, error) {
	run, ctl := s.Run, s.Ctl
	if run == "" {
		run = "systemd-run"
	}
	if ctl == "" {
		ctl = "systemctl"
	}
	ptmx, tty, err := pty.Open()
	if err != nil {
		return nil, err
	}
	if err := pty.Setsize(ptmx, &pty.Winsize{Rows: max(sp.Rows, 1), Cols: max(sp.Cols, 1)}); err != nil {
		ptmx.Close()
		tty.Close()
		return nil, err
	}
	a := sp.Account
	unit := sp.Name + ".service"
	args := []string{"--unit", unit, "--quiet", "--collect", "--wait", "--service-type=exec",
		"--uid", strconv.Itoa(a.UID), "--gid", strconv.Itoa(a.GID),
		"-p", "TTYPath=" + tty.Name(), "-p", "StandardInput=tty-force", "-p", "StandardOutput=tty", "-p", "StandardError=tty",
		"-p", "WorkingDirectory=" + a.Home, "-p", "KillMode=control-group"}
	for _, e := range shellCommand(a).Env {
		args = append(args, "-E", e)
	}
	args = append(args, "--", a.Shell, "-l")
	cmd := exec.Command(run, args...)
	if err := cmd.Start(); err != nil {
		ptmx.Close()
		tty.Close()
		return nil, fmt.Errorf("systemd-run: %w", err)
	}
	sh := &Shell{PTY: ptmx, done: make(chan struct{})}
	go func() { _ = cmd.Wait(); tty.Close(); close(sh.done) }()
	sh.kill = func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = exec.CommandContext(ctx, ctl, "kill", "--signal=SIGKILL", unit).Run()
		_ = exec.CommandContext(ctx, ctl, "stop", unit).Run()
	}
	return sh, nil
}

// UnderSystemd reports whether the agent runs as a systemd service (then shells go
// through SystemdShells).
func UnderSystemd() bool {
	if os.Getenv("INVOCATION_ID") == "" {
		return false
	}
	_, err := os.Stat("/run/systemd/system")
	return err == nil
}

// wall writes a notice to the logged-in terminals.
func wall(text string) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "wall")
	cmd.Stdin = strings.NewReader(text + "\n")
	_ = cmd.Run()
}

var (
	_ ShellStarter = DirectShells{}
	_ ShellStarter = SystemdShells{}
)
