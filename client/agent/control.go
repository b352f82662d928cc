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
	"sync/atomic"
	"time"

	"github.com/ibcm-project/ibcm/client"
	"github.com/ibcm-project/ibcm/client/spool"
	"github.com/ibcm-project/ibcm/internal/wire"
)

// serveControl answers `ibcm-client status` (GET /status), `ibcm-client report`
// (POST /report), `ibcm-client renew` (POST /renew) and `ibcm-client enroll` (POST /enroll)
// on a Unix socket in the state directory, 0600. Renewals and enrollments asked for here
// are done by the agent, so the state directory has one writer.
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
	mux.HandleFunc("POST /renew", func(w http.ResponseWriter, r *http.Request) {
		var req renewRequest
		if !decodeControl(w, r, &req) {
			return
		}
		id, err := a.Renew(r.Context(), req.KeepKey)
		writeIdentity(w, id, err)
	})
	mux.HandleFunc("POST /enroll", func(w http.ResponseWriter, r *http.Request) {
		var req enrollRequest
		if !decodeControl(w, r, &req) {
			return
		}
		kt, err := client.ParseKeyType(req.KeyType)
		if err != nil {
			writeIdentity(w, nil, err)
			return
		}
		id, err := a.Enroll(r.Context(), client.EnrollOptions{CAURL: req.CAURL, Token: req.Token, RootSHA256: req.RootSHA256,
			Name: req.Name, FQDN: req.FQDN, KeyType: kt, Force: req.Force, Timeout: req.Timeout})
		writeIdentity(w, id, err)
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	return func() {
		_ = srv.Close()
		_ = os.Remove(path)
	}, nil
}

type renewRequest struct {
	KeepKey bool `json:"keep_key"`
}

// enrollRequest carries an enrollment token: it crosses only the 0600 socket and is never
// logged.
type enrollRequest struct {
	CAURL      string        `json:"ca_url"`
	Token      string        `json:"token"`
	RootSHA256 string        `json:"root_sha256"`
	Name       string        `json:"name"`
	FQDN       string        `json:"fqdn"`
	KeyType    string        `json:"key_type"`
	Force      bool          `json:"force"`
	Timeout    time.Duration `json:"timeout"`
}

// IdentityResult is the identity a renewal or an enrollment through the agent left.
type IdentityResult struct {
	DeviceID  string    `json:"device_id"`
	Name      string    `json:"name"`
	SerialHex string    `json:"serial_hex"`
	NotAfter  time.Time `json:"not_after"`
	Dir       string    `json:"dir"`
}

// controlFailure is the answer when a renewal or enrollment failed; a refusal of the CA
// keeps its HTTP status and code.
type controlFailure struct {
	CAStatus int    `json:"ca_status,omitempty"`
	Code     string `json:"code,omitempty"`
	Message  string `json:"message"`
}

func decodeControl(w http.ResponseWriter, r *http.Request, v any) bool {
	dec := json.NewDecoder(io.LimitReader(r.Body, 16<<10))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		http.Error(w, "bad request: "+err.Error(), http.StatusBadRequest)
		return false
	}
	return true
}

func writeIdentity(w http.ResponseWriter, id *client.Identity, err error) {
	w.Header().Set("Content-Type", "application/json")
	if err != nil {
		f := controlFailure{Message: err.Error()}
		var se *client.ServerError
		if errors.As(err, &se) {
			f.CAStatus, f.Code, f.Message = se.Status, se.Code, se.Message
		}
		w.WriteHeader(http.StatusBadGateway)
		_ = json.NewEncoder(w).Encode(f)
		return
	}
	_ = json.NewEncoder(w).Encode(IdentityResult{DeviceID: id.DeviceID, Name: id.Name, SerialHex: id.SerialHex(), NotAfter: id.NotAfter.UTC(), Dir: id.Dir})
}

// Renew has the agent running on dir renew its certificate; ErrNotRunning when no agent
// answers there (renew directly then, under client.LockDir). A refusal of the CA is a
// *client.ServerError, as from client.Renew.
func Renew(ctx context.Context, dir string, keepKey bool) (IdentityResult, error) {
	b, _ := json.Marshal(renewRequest{KeepKey: keepKey})
	return identityCall(ctx, dir, "/renew", b)
}

// Enroll has the agent running on dir enroll again (opts.Dir is ignored: the agent's
// directory); ErrNotRunning when no agent answers there.
func Enroll(ctx context.Context, dir string, opts client.EnrollOptions) (IdentityResult, error) {
	b, _ := json.Marshal(enrollRequest{CAURL: opts.CAURL, Token: opts.Token, RootSHA256: opts.RootSHA256, Name: opts.Name,
		FQDN: opts.FQDN, KeyType: string(opts.KeyType), Force: opts.Force, Timeout: opts.Timeout})
	return identityCall(ctx, dir, "/enroll", b)
}

// writeTimeout bounds a renewal or enrollment through the agent: key generation and the
// CA's answer, each request of which has its own timeout.
const writeTimeout = 3 * time.Minute

func identityCall(ctx context.Context, dir, path string, body []byte) (IdentityResult, error) {
	var out IdentityResult
	resp, err := controlCall(ctx, dir, http.MethodPost, path, body, writeTimeout)
	if err != nil {
		return out, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return out, fmt.Errorf("reading the agent's answer: %w", err)
	}
	switch resp.StatusCode {
	case http.StatusOK:
		return out, json.Unmarshal(data, &out)
	case http.StatusBadGateway:
		var f controlFailure
		if err := json.Unmarshal(data, &f); err != nil {
			return out, fmt.Errorf("the agent failed: %s", strings.TrimSpace(string(data)))
		}
		if f.CAStatus != 0 {
			return out, &client.ServerError{Status: f.CAStatus, Code: f.Code, Message: f.Message}
		}
		return out, fmt.Errorf("the running agent: %s", f.Message)
	}
	return out, fmt.Errorf("%w: %s", ErrRefused, strings.TrimSpace(string(data)))
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

// ErrRefused means the running agent refused a request (it names why).
var ErrRefused = errors.New("the agent refused the request")

// ErrNotRunning means no agent answers on the state directory's control socket.
var ErrNotRunning = errors.New("no agent running for this state directory")

func controlDo(ctx context.Context, dir, method, path string, body []byte) (*http.Response, error) {
	resp, err := controlCall(ctx, dir, method, path, body, 5*time.Second)
	if err != nil && !errors.Is(err, ErrNotRunning) {
		return nil, fmt.Errorf("%w (%v)", ErrNotRunning, err)
	}
	return resp, err
}

// controlCall sends one request to the control socket. It returns ErrNotRunning only when
// nothing listens there; any later failure is another error, since the agent may have
// acted on the request.
func controlCall(ctx context.Context, dir, method, path string, body []byte, timeout time.Duration) (*http.Response, error) {
	sock := filepath.Join(dir, SocketFile)
	var dialFailed atomic.Bool
	hc := &http.Client{Timeout: timeout, Transport: &http.Transport{
		DisableKeepAlives: true,
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			c, err := (&net.Dialer{}).DialContext(ctx, "unix", sock)
			dialFailed.Store(err != nil)
			return c, err
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
	switch {
	case err != nil && dialFailed.Load():
		return nil, fmt.Errorf("%w (%v)", ErrNotRunning, err)
	case err != nil:
		return nil, fmt.Errorf("asking the agent on %s: %w", sock, err)
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
