package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
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
//
// /enroll with force replaces the device's identity with one from any CA the caller
// names, so only the agent's own user and root may use the socket. Two locks guard it:
// the socket is bound inside the state directory, which is checked just before to be the
// agent user's and closed to everyone else (so nobody else can reach the socket, not even
// between bind and chmod); and every connection's peer uid is read from the kernel
// (SO_PEERCRED) and anyone else's request is refused with 403.
func (a *Agent) serveControl(ctx context.Context) (func(), error) {
	if err := client.CheckDir(a.o.Dir); err != nil {
		return nil, fmt.Errorf("control socket: %w", err)
	}
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
		writeJSON(w, http.StatusOK, a.Status())
	})
	mux.HandleFunc("POST /report", func(w http.ResponseWriter, r *http.Request) {
		var m reportRequest
		if !decodeControl(w, r, &m) {
			return
		}
		if m.Severity == "" {
			m.Severity = "info"
		}
		if err := a.Report(m.Severity, m.Component, m.Text); err != nil {
			writeError(w, http.StatusBadRequest, "bad_request", err.Error())
			return
		}
		w.WriteHeader(http.StatusAccepted)
	})
	mux.HandleFunc("POST /renew", func(w http.ResponseWriter, r *http.Request) {
		var req renewRequest
		if !decodeControl(w, r, &req) {
			return
		}
		ctx, cancel := context.WithTimeout(r.Context(), writeTimeout)
		defer cancel()
		id, err := a.Renew(ctx, req.KeepKey)
		writeIdentity(w, id, err)
	})
	mux.HandleFunc("POST /enroll", func(w http.ResponseWriter, r *http.Request) {
		var req enrollRequest
		if !decodeControl(w, r, &req) {
			return
		}
		kt, _ := client.ParseKeyType(req.KeyType) // checked by decodeControl
		ctx, cancel := context.WithTimeout(r.Context(), writeTimeout)
		defer cancel()
		id, err := a.Enroll(ctx, client.EnrollOptions{CAURL: req.CAURL, Token: req.Token, RootSHA256: req.RootSHA256,
			Name: req.Name, FQDN: req.FQDN, KeyType: kt, Force: req.Force, Timeout: req.Timeout})
		writeIdentity(w, id, err)
	})
	srv := &http.Server{Handler: a.onlyOwner(mux), ConnContext: withPeer,
		ReadHeaderTimeout: 5 * time.Second, IdleTimeout: time.Minute,
		ErrorLog: log.New(a.log, "control socket: ", 0)} // net/http's own messages, as log lines of the agent's
	go func() { _ = srv.Serve(ln) }()
	return func() {
		_ = srv.Close()
		_ = os.Remove(path)
	}, nil
}

// peer is the process on the other end of a control connection.
type peer struct{ UID, PID int }

type peerKey struct{}

// peerResult is what withPeer found out about a connection.
type peerResult struct {
	peer peer
	err  error
}

func withPeer(ctx context.Context, c net.Conn) context.Context {
	p, err := peerOf(c)
	return context.WithValue(ctx, peerKey{}, peerResult{p, err})
}

// onlyOwner refuses, with 403, every request from a peer that is neither the agent's own
// effective user nor root. The first refusal of each uid is logged.
func (a *Agent) onlyOwner(next http.Handler) http.Handler {
	euid := os.Geteuid()
	who := fmt.Sprintf("uid %d (the agent's user) and root", euid)
	if euid == 0 {
		who = "root"
	}
	var logged sync.Map // uid (or -1: unreadable credentials) → struct{}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		pr, _ := r.Context().Value(peerKey{}).(peerResult)
		if pr.err == nil && (pr.peer.UID == euid || pr.peer.UID == 0) {
			next.ServeHTTP(w, r)
			return
		}
		key := pr.peer.UID
		if pr.err != nil {
			key = -1
		}
		if _, seen := logged.LoadOrStore(key, struct{}{}); !seen {
			if pr.err != nil {
				a.log.Warn().Err(pr.err).Msg("control socket: refused a connection whose peer credentials cannot be read")
			} else {
				a.log.Warn().Int("uid", int(pr.peer.UID)).Int("pid", int(pr.peer.PID)).Str("path", r.URL.Path).Msg("control socket: refused a connection from another user (logged once per uid)")
			}
		}
		w.Header().Set("Connection", "close")
		writeError(w, http.StatusForbidden, "forbidden", "only "+who+" may use the agent's control socket")
	})
}

// Limits of the control requests.
const (
	maxControlBody = 16 << 10
	// MaxControlTimeout bounds the per-request timeout an enrollment through the agent
	// may ask for: the enrollment makes two requests to the CA, and the CLI waits
	// writeTimeout for all of it.
	MaxControlTimeout = time.Minute
	maxURL            = 2048
	maxToken          = 512
	maxName           = 64  // a certificate's common name (RFC 5280 ub-common-name)
	maxFQDN           = 253 // a DNS name
	maxComponent      = 64
)

// checker is a control request that checks its own fields after decoding.
type checker interface{ check() error }

type reportRequest struct {
	Severity  string `json:"severity"`
	Component string `json:"component"`
	Text      string `json:"text"`
}

func (m *reportRequest) check() error {
	switch {
	case m.Text == "":
		return errors.New("text is required")
	case len(m.Text) > wire.MaxStatusText:
		return fmt.Errorf("text exceeds %d bytes", wire.MaxStatusText)
	case len(m.Component) > maxComponent:
		return fmt.Errorf("component exceeds %d bytes", maxComponent)
	case len(m.Severity) > maxComponent:
		return fmt.Errorf("severity exceeds %d bytes", maxComponent)
	}
	return nil
}

type renewRequest struct {
	KeepKey bool `json:"keep_key"`
}

func (*renewRequest) check() error { return nil }

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

// check bounds every field; what is left to check (the URL's form, an empty token) the
// enrollment itself refuses before it sends anything.
func (e *enrollRequest) check() error {
	for _, f := range []struct {
		name, v string
		max     int
	}{{"ca_url", e.CAURL, maxURL}, {"token", e.Token, maxToken}, {"name", e.Name, maxName}, {"fqdn", e.FQDN, maxFQDN}} {
		if len(f.v) > f.max {
			return fmt.Errorf("%s exceeds %d bytes", f.name, f.max)
		}
	}
	if _, err := client.ParseFingerprint(e.RootSHA256); err != nil {
		return fmt.Errorf("root_sha256: %w", err)
	}
	if _, err := client.ParseKeyType(e.KeyType); err != nil {
		return fmt.Errorf("key_type: %w", err)
	}
	if e.Timeout < 0 || e.Timeout > MaxControlTimeout {
		return fmt.Errorf("timeout %s: must be between 0 (the default, %s) and %s", e.Timeout, client.DefaultTimeout, MaxControlTimeout)
	}
	return nil
}

// IdentityResult is the identity a renewal or an enrollment through the agent left.
type IdentityResult struct {
	DeviceID string    `json:"device_id"`
	Name     string    `json:"name"`
	Serial   string    `json:"serial"` // as openssl prints it
	NotAfter time.Time `json:"not_after"`
	Dir      string    `json:"dir"`
}

// controlFailure is the answer when a renewal or enrollment failed; a refusal of the CA
// keeps its HTTP status and code.
type controlFailure struct {
	CAStatus int    `json:"ca_status,omitempty"`
	Code     string `json:"code,omitempty"`
	Message  string `json:"message"`
}

// decodeControl reads one JSON object (at most maxControlBody bytes, no unknown fields,
// nothing after it) into v and checks its fields; otherwise it answers 413 or 400.
func decodeControl(w http.ResponseWriter, r *http.Request, v checker) bool {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxControlBody))
	dec.DisallowUnknownFields()
	err := dec.Decode(v)
	if err == nil {
		if _, terr := dec.Token(); !errors.Is(terr, io.EOF) {
			err = errors.New("data after the JSON object")
			if terr != nil {
				err = terr
			}
		}
	}
	if err == nil {
		err = v.check()
	}
	var mbe *http.MaxBytesError
	switch {
	case errors.As(err, &mbe):
		writeError(w, http.StatusRequestEntityTooLarge, "too_large", fmt.Sprintf("request body exceeds %d bytes", maxControlBody))
		return false
	case err != nil:
		writeError(w, http.StatusBadRequest, "bad_request", "bad request: "+err.Error())
		return false
	}
	return true
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, status int, code, message string) {
	writeJSON(w, status, wire.Error{Error: wire.ErrorDetail{Code: code, Message: message}})
}

// refusal is the error for an answer of the agent other than success or a failed
// renewal or enrollment.
func refusal(status int, body []byte) error {
	var e wire.Error
	if json.Unmarshal(body, &e) == nil && e.Error.Message != "" {
		return fmt.Errorf("%w (HTTP %d, %s): %s", ErrRefused, status, e.Error.Code, e.Error.Message)
	}
	return fmt.Errorf("%w (HTTP %d): %s", ErrRefused, status, strings.TrimSpace(string(body)))
}

func writeIdentity(w http.ResponseWriter, id *client.Identity, err error) {
	if err != nil {
		f := controlFailure{Message: err.Error()}
		var se *client.ServerError
		if errors.As(err, &se) {
			f.CAStatus, f.Code, f.Message = se.Status, se.Code, se.Message
		}
		writeJSON(w, http.StatusBadGateway, f)
		return
	}
	writeJSON(w, http.StatusOK, IdentityResult{DeviceID: id.DeviceID, Name: id.Name, Serial: id.SerialHex(), NotAfter: id.NotAfter.UTC(), Dir: id.Dir})
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
	return out, refusal(resp.StatusCode, data)
}

// Query asks a running agent in dir for its status; ErrNotRunning when none answers.
func Query(ctx context.Context, dir string) (Status, error) {
	var s Status
	resp, err := controlDo(ctx, dir, http.MethodGet, "/status", nil)
	if err != nil {
		return s, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return s, fmt.Errorf("reading the agent's answer: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return s, refusal(resp.StatusCode, data)
	}
	return s, json.Unmarshal(data, &s)
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
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return refusal(resp.StatusCode, msg)
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
