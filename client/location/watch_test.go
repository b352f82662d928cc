package location

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// replaceFile replaces path atomically, the way resolvconf and NetworkManager do.
func replaceFile(t *testing.T, path, content string) {
	t.Helper()
	tmp := path + ".new"
	if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

func TestWatchFile(t *testing.T) {
	const interval = 50 * time.Millisecond
	path := filepath.Join(t.TempDir(), "resolv.conf")
	if err := os.WriteFile(path, []byte("nameserver 192.0.2.1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	fired := make(chan struct{}, 10)
	done := make(chan struct{})
	go func() {
		defer close(done)
		WatchFile(ctx, path, interval, func() { fired <- struct{}{} })
	}()
	defer func() { cancel(); <-done }()
	time.Sleep(interval / 2) // let WatchFile hash the original

	wait := func(what string) {
		t.Helper()
		start := time.Now()
		select {
		case <-fired:
			t.Logf("%s noticed after %s", what, time.Since(start))
		case <-time.After(3 * interval):
			t.Fatalf("%s: fn not called within %s", what, 3*interval)
		}
	}
	quiet := func(what string) {
		t.Helper()
		select {
		case <-fired:
			t.Fatalf("%s: fn called", what)
		case <-time.After(3 * interval):
		}
	}

	replaceFile(t, path, "nameserver 192.0.2.2\n")
	wait("atomic replacement")
	replaceFile(t, path, "nameserver 192.0.2.2\n")
	quiet("replacement with the same content")
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	wait("removal")
	replaceFile(t, path, "nameserver 192.0.2.3\n")
	wait("reappearance")

	cancel()
	select {
	case <-done:
	case <-time.After(time.Second):
		t.Fatal("WatchFile did not return when its context ended")
	}
}
