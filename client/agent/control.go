package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/ibcm-project/ibcm/client/spool"
	"github.com/ibcm-project/ibcm/internal/wire"
)

// serveControl answers `ibcm-client status` (GET /status) and `ibcm-client report`
// (POST /report) on a Unix socket in the state directory, 0600.
func (a *Agent) serveControl(ctx context.Context) (func(), error) {
	path := filepath.Join(a.o.Dir, SocketFile)
	if c, err := net.Dial("unix", path); err == nil {
		c.Close()
		return nil, fmt.Errorf("an agent is already running on %s", a.o.Dir)
	}
	_ = os.Remove(path)
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("control socket: %w", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, err
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(a.Status())
	})
	mux.HandleFunc("POST /report", func(w http.ResponseWriter, r *http.Request) {
		var m struct {
			Severity  string `json:"severity"`
			Component string `json:"component"`
			Text      string `json:"text"`
		}
		dec := json.NewDecoder(io.LimitReader(r.Body, 8<<10))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&m); err != nil || m.Text == "" {
			http.Error(w, "want {severity, component, text}", http.StatusBadRequest)
			return
		}
		if m.Severity == "" {
			m.Severity = "info"
		}
		if err := a.Report(m.Severity, m.Component, m.Text); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		w.WriteHeader(http.StatusAccepted)
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	return func() {
		_ = srv.Close()
		_ = os.Remove(path)
	}, nil
}

// Query asks a running agent in dir for its status; ErrNotRunning when none answers.
func Query(ctx context.Context, dir string) (Status, error) {
	var s Status
	resp, err := controlDo(ctx, dir, http.MethodGet, "/status", nil)
	if err != nil {
		return s, err
	}
	defer resp.Body.Close()
	return s, json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&s)
}

// SendReport hands a status message to a running agent; ErrNotRunning when none answers.
func SendReport(ctx context.Context, dir, severity, component, text string) error {
	b, _ := json.Marshal(map[string]string{"severity": severity, "component": component, "text": text})
	resp, err := controlDo(ctx, dir, http.MethodPost, "/report", b)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
		return fmt.Errorf("%w: %s", ErrRefused, strings.TrimSpace(string(msg)))
	}
	return nil
}

// ErrRefused means the running agent refused a report (it names why).
var ErrRefused = errors.New("the agent refused the report")

// ErrNotRunning means no agent answers on the state directory's control socket.
var ErrNotRunning = errors.New("no agent running for this state directory")

func controlDo(ctx context.Context, dir, method, path string, body []byte) (*http.Response, error) {
	sock := filepath.Join(dir, SocketFile)
	hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", sock)
		},
	}}
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://agent"+path, rd)
	if err != nil {
		return nil, err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("%w (%v)", ErrNotRunning, err)
	}
	return resp, nil
}

// SpoolReport adds a status message to the spool of a state directory whose agent is not
// running; the next run delivers it.
func SpoolReport(dir, severity, component, text string) error {
	sp, err := spool.Open(filepath.Join(dir, SpoolDir), 0)
	if err != nil {
		return err
	}
	_, err = sp.Add(wire.StatusMessage{Time: time.Now().UTC(), Severity: severity, Component: component, Text: text})
	return err
}

// CachedPolicy returns the policy the agent last fetched into dir.
func CachedPolicy(dir string) (wire.Policy, bool) {
	b, err := os.ReadFile(filepath.Join(dir, PolicyFile))
	if err != nil {
		return wire.Policy{}, false
	}
	var p cachedPolicy
	if json.Unmarshal(b, &p) != nil {
		return wire.Policy{}, false
	}
	return p.Policy, true
}
