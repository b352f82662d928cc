package main

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/ibcm-project/ibcm/ca"
	"github.com/ibcm-project/ibcm/ca/catest"
	"github.com/ibcm-project/ibcm/client"
	"github.com/ibcm-project/ibcm/client/agent"
)

// TestRenewAndEnrollThroughRunningAgent: while `ibcm-client run` runs on a directory,
// `renew` and `enroll --force` are done by the agent (its status shows the new identity
// at once, which only its own writes do) and nothing else may take the directory's writer
// lock; once it has stopped, renew works directly.
func TestRenewAndEnrollThroughRunningAgent(t *testing.T) {
	s := catest.Start(t)
	dir := filepath.Join(t.TempDir(), "state")
	t.Setenv("IBCM_CLIENT_TOKEN", s.Token(t, ca.TokenSpec{}))
	if out, err := run(t, "enroll", "--dir", dir, "--ca", s.URL, "--root-sha256", s.Pin, "--name", "pc-01"); err != nil {
		t.Fatalf("enroll: %v\n%s", err, out)
	}
	resolv := filepath.Join(t.TempDir(), "resolv.conf")
	if err := os.WriteFile(resolv, []byte("nameserver 127.0.0.1:9\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	a, err := agent.New(agent.Options{Dir: dir, ResolvConf: resolv, Log: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	defer func() { cancel(); <-done }()
	deadline := time.Now().Add(10 * time.Second)
	var before agent.Status
	for {
		if before, err = agent.Query(context.Background(), dir); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the agent's control socket does not answer: %v", err)
		}
		time.Sleep(20 * time.Millisecond) // polling the readiness condition itself
	}
	if _, err := client.LockDir(dir); !errors.Is(err, client.ErrBusy) {
		t.Errorf("LockDir while the agent runs = %v, want ErrBusy", err)
	}

	out, err := run(t, "renew", "--dir", dir)
	if err != nil || !strings.Contains(out, "through the running agent") {
		t.Fatalf("renew while the agent runs: %v\n%s", err, out)
	}
	after, err := agent.Query(context.Background(), dir)
	if err != nil {
		t.Fatal(err)
	}
	stored, err := client.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	if after.Serial == before.Serial || after.Serial != stored.SerialHex() || !strings.Contains(out, after.Serial) {
		t.Errorf("after renew: agent serial %s (was %s), stored %s, printed %q", after.Serial, before.Serial, stored.SerialHex(), out)
	}

	t.Setenv("IBCM_CLIENT_TOKEN", s.Token(t, ca.TokenSpec{}))
	out, err = run(t, "enroll", "--dir", dir, "--ca", s.URL, "--root-sha256", s.Pin, "--name", "pc-02", "--force")
	if err != nil || !strings.Contains(out, "through the running agent") {
		t.Fatalf("enroll --force while the agent runs: %v\n%s", err, out)
	}
	again, err := agent.Query(context.Background(), dir)
	if err != nil || again.DeviceID == before.DeviceID || again.Subject != "pc-02" {
		t.Errorf("the agent after enroll --force: %+v %v (was device %s)", again, err, before.DeviceID)
	}

	cancel()
	if err := <-done; err != nil {
		t.Errorf("agent Run: %v", err)
	}
	done <- nil
	out, err = run(t, "renew", "--dir", dir)
	if err != nil || strings.Contains(out, "running agent") || !strings.Contains(out, "renewed device "+again.DeviceID) {
		t.Errorf("renew with no agent running: %v\n%s", err, out)
	}
}

// `run --direct-addr` takes IP addresses only, and says which one is not.
func TestRunRefusesABadDirectAddr(t *testing.T) {
	out, err := run(t, "run", "--dir", t.TempDir(), "--direct-addr", "127.0.0.1", "--direct-addr", "host.example")
	if err == nil || !strings.Contains(err.Error()+out, `--direct-addr "host.example"`) {
		t.Fatalf("run --direct-addr host.example: %v\n%s", err, out)
	}
}
