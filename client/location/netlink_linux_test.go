//go:build linux

package location

import (
	"context"
	"os"
	"os/exec"
	"runtime"
	"syscall"
	"testing"
	"time"
)

// TestWatchNetwork brings up the loopback interface of a new network namespace, which
// adds addresses and routes there, and expects the watcher in that namespace to notice.
// It needs CAP_SYS_ADMIN and CAP_NET_ADMIN (root) and the ip command.
func TestWatchNetwork(t *testing.T) {
	ipCmd, err := exec.LookPath("ip")
	if err != nil {
		t.Skip("the ip command is not installed")
	}
	fired := make(chan struct{}, 100)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	errc := make(chan error, 1)
	go func() {
		// This goroutine's thread moves to a new network namespace and is never reused:
		// returning while locked ends the thread.
		runtime.LockOSThread()
		if err := syscall.Unshare(syscall.CLONE_NEWNET); err != nil {
			errc <- err
			return
		}
		if err := WatchNetwork(ctx, func() {
			select {
			case fired <- struct{}{}:
			default:
			}
		}); err != nil {
			errc <- err
			return
		}
		// The child inherits the thread's namespace.
		if out, err := exec.Command(ipCmd, "link", "set", "lo", "up").CombinedOutput(); err != nil {
			errc <- &os.PathError{Op: "ip link set lo up", Path: string(out), Err: err}
			return
		}
		errc <- nil
	}()
	if err := <-errc; err != nil {
		if os.Getuid() != 0 {
			t.Skipf("needs root for a network namespace: %v", err)
		}
		t.Fatal(err)
	}
	select {
	case <-fired:
	case <-time.After(2 * time.Second):
		t.Fatal("WatchNetwork did not report lo coming up in its namespace")
	}
}
