package site

import (
	"context"
	"errors"
	"io"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ibcm-project/ibcm/internal/freeport"

	"github.com/rs/zerolog"
)

// Run serves every listener; Status reports them healthy while it runs and down after it
// stopped, and Run returns cleanly when its context ends.
func TestRunAndStatus(t *testing.T) {
	cfg, stop := runSite(t)
	hs, err := Status(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range hs {
		if !h.Healthy {
			t.Errorf("%s not healthy while running: %s", h.Role, h.Error)
		}
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	hs, _ = Status(context.Background(), cfg)
	for _, h := range hs {
		if h.Healthy || h.Error == "" {
			t.Errorf("%s reported healthy after shutdown", h.Role)
		}
	}
}

// runSite initialises a site on free ports and runs it until every listener is up. stop
// ends it and returns what Run did; it runs at the end of the test too.
func runSite(t *testing.T) (cfg *Config, stop func() error) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "site")
	o := initOptions(dir)
	o.CAAddr, o.CAPublicAddr, o.MPIntranetAddr, o.MPInternetAddr = freeAddr(t), freeAddr(t), freeAddr(t), freeAddr(t)
	o.DPIntranetAddr, o.DPInternetAddr = freeAddr(t), freeAddr(t)
	o.ConsoleAddr = freeAddr(t)
	cfg, err := Init(context.Background(), o, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan string, 8)
	done := make(chan error, 1)
	go func() { done <- Run(ctx, cfg, lineWriter(ready), zerolog.Nop()) }()
	for seen := 0; seen < len(cfg.Listeners()); {
		select {
		case line := <-ready:
			if strings.Contains(line, "listening on") {
				seen++
			}
		case err := <-done:
			t.Fatalf("Run returned early: %v", err)
		case <-time.After(20 * time.Second):
			t.Fatal("listeners not ready after 20s")
		}
	}
	var once sync.Once
	var runErr error
	stop = func() error {
		once.Do(func() {
			cancel()
			select {
			case runErr = <-done:
			case <-time.After(15 * time.Second):
				runErr = errors.New("Run did not return after its context ended")
			}
		})
		return runErr
	}
	t.Cleanup(func() { _ = stop() })
	return cfg, stop
}

func freeAddr(t *testing.T) string {
	t.Helper()
	a, err := freeport.Addr()
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// lineWriter sends each written line to ch.
type lineWriter chan string

func (w lineWriter) Write(p []byte) (int, error) {
	for _, l := range strings.Split(strings.TrimSpace(string(p)), "\n") {
		w <- l
	}
	return len(p), nil
}
