package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ibcm-project/ibcm/internal/cliapp"
	"github.com/ibcm-project/ibcm/internal/wire"
	"github.com/ibcm-project/ibcm/remote/e2e"
	"github.com/ibcm-project/ibcm/remote/frame"
)

// remoteSite is a fake MP for `ibcm remote`: a root, the MP's certificate, alice's
// identity in files (the --mp/--cert/--key/--ca-root flags), and a device behind the relay
// that echoes what it is sent.
type remoteSite struct {
	srv       *httptest.Server
	flags     []string
	alice     *x509.Certificate
	device    tls.Certificate
	roots     *x509.CertPool
	sessions  []wire.Session
	query     chan url.Values
	startErr  *wire.Error // the answer to a start, when set
	relayErr  *wire.Error
	errStatus int
	mux       *http.ServeMux // more routes may be added (ibcm content, deploy)
}

func newRemoteSite(t *testing.T) *remoteSite {
	t.Helper()
	dir := t.TempDir()
	rootKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	rootTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "root"}, NotBefore: time.Now().Add(-time.Hour),
		NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	rootDER, _ := x509.CreateCertificate(rand.Reader, rootTmpl, rootTmpl, rootKey.Public(), rootKey)
	root, _ := x509.ParseCertificate(rootDER)
	leaf := func(uri string, usage ...x509.ExtKeyUsage) tls.Certificate {
		key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		u, _ := url.Parse(uri)
		n, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
		der, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{SerialNumber: n, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
			URIs: []*url.URL{u}, ExtKeyUsage: usage, KeyUsage: x509.KeyUsageDigitalSignature, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}}, root, key.Public(), rootKey)
		if err != nil {
			t.Fatal(err)
		}
		c, _ := x509.ParseCertificate(der)
		return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: c}
	}
	mp := leaf("urn:ibcm:site:TST:role:mp", x509.ExtKeyUsageServerAuth)
	alice := leaf("urn:ibcm:user:alice", x509.ExtKeyUsageClientAuth)
	s := &remoteSite{alice: alice.Leaf, device: leaf("urn:ibcm:device:dev-1", x509.ExtKeyUsageClientAuth), roots: x509.NewCertPool(), query: make(chan url.Values, 4)}
	s.roots.AddCert(root)
	keyDER, _ := x509.MarshalPKCS8PrivateKey(alice.PrivateKey)
	files := map[string][]byte{
		"root.pem":  pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: rootDER}),
		"alice.crt": pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: alice.Certificate[0]}),
		"alice.key": pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}),
	}
	for name, b := range files {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}

	mux := http.NewServeMux()
	s.mux = mux
	mux.HandleFunc("GET /v1/admin/sessions", func(w http.ResponseWriter, r *http.Request) {
		s.query <- r.URL.Query()
		if r.URL.Query().Get("format") == "csv" { // the MP writes the report (mp/console.go)
			w.Header().Set("Content-Type", "text/csv")
			_, _ = io.WriteString(w, cannedCSV)
			return
		}
		_ = json.NewEncoder(w).Encode(s.sessions)
	})
	mux.HandleFunc("GET /v1/admin/sessions/{id}", func(w http.ResponseWriter, r *http.Request) {
		for _, ss := range s.sessions {
			if ss.ID == r.PathValue("id") {
				_ = json.NewEncoder(w).Encode(ss)
				return
			}
		}
		w.WriteHeader(http.StatusNotFound)
		_ = json.NewEncoder(w).Encode(wire.Error{Error: wire.ErrorDetail{Code: "not_found", Message: "no such session"}})
	})
	mux.HandleFunc("POST /v1/admin/sessions/{id}/end", func(w http.ResponseWriter, r *http.Request) {
		s.query <- url.Values{"ended": {r.PathValue("id")}}
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("GET /v1/admin/sessions/{id}/recording", func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "{\"version\": 2, \"width\": 80, \"height\": 24}\n[0.5, \"o\", \"你好\\r\\n\"]\n")
	})
	mux.HandleFunc("POST /v1/admin/sessions", func(w http.ResponseWriter, r *http.Request) {
		var req wire.SessionStartRequest
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil || req.Mode != "control" || req.Device != "kiosk" {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		if s.startErr != nil {
			w.WriteHeader(s.errStatus)
			_ = json.NewEncoder(w).Encode(s.startErr)
			return
		}
		_ = json.NewEncoder(w).Encode(wire.SessionStart{
			Session:  wire.Session{ID: "0123456789abcdef0123456789abcdef", Device: "dev-1", Mode: "control", State: wire.SessionRequested},
			TicketID: "fedcba9876543210fedcba9876543210", Role: "helper", Modes: []string{"view", "control"},
			Device:            wire.DeviceCard{ID: "dev-1", Name: "kiosk-1", FQDN: "kiosk-1.corp.example", Location: "intranet"},
			ComplianceWarning: "the disk is not encrypted\x1b]0;pwned\x07",
		})
	})
	mux.HandleFunc("GET /v1/admin/sessions/{id}/relay", func(w http.ResponseWriter, r *http.Request) {
		if s.relayErr != nil {
			w.WriteHeader(s.errStatus)
			_ = json.NewEncoder(w).Encode(s.relayErr)
			return
		}
		conn, brw, err := w.(http.Hijacker).Hijack()
		if err != nil {
			return
		}
		defer conn.Close()
		_, _ = brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: ibcm-relay\r\n\r\n")
		_ = brw.Flush()
		s.serveDevice(conn)
	})
	s.srv = httptest.NewUnstartedServer(mux)
	s.srv.TLS = &tls.Config{Certificates: []tls.Certificate{mp}, ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: s.roots}
	s.srv.StartTLS()
	t.Cleanup(s.srv.Close)
	s.flags = []string{"--mp", s.srv.URL, "--cert", filepath.Join(dir, "alice.crt"), "--key", filepath.Join(dir, "alice.key"), "--ca-root", filepath.Join(dir, "root.pem")}
	return s
}

// serveDevice is the device at the other end of the relay: it echoes data and chat, and
// ends when the helper ends.
func (s *remoteSite) serveDevice(raw net.Conn) {
	conn := tls.Server(raw, e2e.DeviceConfig(s.device, e2e.HelperExpect{Roots: s.roots, User: "alice", KeyHash: wire.PublicKeyHash(s.alice)}))
	if conn.Handshake() != nil {
		return
	}
	r := frame.NewReader(conn)
	if f, err := r.Next(); err != nil || f.Type != frame.Hello {
		return
	}
	_ = frame.WriteJSON(conn, frame.Hello, frame.Greeting{Mode: "control", Sharer: "bob", SharerName: "Bob \x1b[31mDupont", Terminal: "shared"})
	for {
		f, err := r.Next()
		if err != nil {
			return
		}
		switch f.Type {
		case frame.Data:
			_ = frame.Write(conn, frame.Data, f.Payload)
		case frame.Chat:
			_ = frame.Write(conn, frame.Chat, f.Payload)
		case frame.Mode:
			var m frame.ModeChange
			_ = frame.DecodeJSON(f, &m)
			_ = frame.WriteJSON(conn, frame.Mode, frame.ModeChange{Mode: m.Mode, Granted: m.Mode != "elevated", Reason: map[bool]string{true: "denied"}[m.Mode == "elevated"]})
		case frame.Resize:
			rows, cols, _ := frame.ParseResize(f.Payload)
			_ = frame.WriteJSON(conn, frame.Status, frame.Presence{Message: fmt.Sprintf("resize %dx%d", rows, cols)})
			_ = frame.Write(conn, frame.Resize, frame.ResizePayload(40, 90)) // the sharer's window
		case frame.End:
			_ = frame.WriteJSON(conn, frame.End, frame.Ending{Outcome: wire.OutcomeCompleted})
			return
		}
	}
}

// runIBCM runs ibcm with stdin.
func runIBCM(t *testing.T, stdin string, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	app := newApp()
	var out, errOut bytes.Buffer
	app.Reader, app.Writer, app.ErrWriter = strings.NewReader(stdin), &out, &errOut
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err = cliapp.Run(ctx, app, append([]string{"ibcm"}, args...))
	return out.String(), errOut.String(), err
}

func TestRemoteUsageErrors(t *testing.T) {
	cases := []struct {
		name string
		args []string
		want string
	}{
		{"unknown mode", []string{"remote", "start", "kiosk", "--mode", "root"}, `--mode: must be view, control, elevated or unattended (got "root")`},
		{"unknown mode from the environment", []string{"remote", "start", "kiosk"}, "IBCM_REMOTE_MODE"},
		{"bad since", []string{"remote", "sessions", "--since", "last week"}, `--since: must be a duration such as 36h or 7d, a date such as 2026-12-01, or an RFC 3339 time (got "last week")`},
		{"negative since", []string{"remote", "sessions", "--since", "-2h"}, "--since"},
		{"json and csv", []string{"remote", "sessions", "--json", "--csv"}, "--json or --csv, not both"},
		{"reason too long", []string{"remote", "start", "kiosk", "--reason", strings.Repeat("x", 513)}, "--reason: must be at most 512 bytes"},
		{"start without device", []string{"remote", "start", "--mode", "view"}, "needs DEVICE"},
		{"unknown remote command", []string{"remote", "list"}, `unknown command "list" for "ibcm remote"`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if tc.name == "unknown mode from the environment" {
				t.Setenv("IBCM_REMOTE_MODE", "admin")
			}
			stdout, stderr, err := runIBCM(t, "", tc.args...)
			if err == nil || exitCode(err) != exitUsage {
				t.Fatalf("err = %v (exit %d), want exit %d", err, exitCode(err), exitUsage)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("err = %v, want it to say %s", err, tc.want)
			}
			if stdout != "" || stderr != "" {
				t.Errorf("printed besides the error: %q %q", stdout, stderr)
			}
		})
	}
}

func TestSessionsSince(t *testing.T) {
	now := time.Date(2026, 12, 7, 10, 0, 0, 0, time.UTC)
	for in, want := range map[string]time.Time{
		"36h":                  now.Add(-36 * time.Hour),
		"7d":                   now.AddDate(0, 0, -7),
		"2026-12-01T08:00:00Z": time.Date(2026, 12, 1, 8, 0, 0, 0, time.UTC),
	} {
		if got, err := sessionsSince(in, now); err != nil || !got.Equal(want) {
			t.Errorf("%s: %v %v, want %v", in, got, err, want)
		}
	}
	if got, err := sessionsSince("2026-12-01", now); err != nil || got.Day() != 1 || got.Month() != 12 {
		t.Errorf("a date: %v %v", got, err)
	}
	for _, bad := range []string{"", "yesterday", "-1d", "7 d", "99999999d", "2026-13-01"} {
		if _, err := sessionsSince(bad, now); err == nil {
			t.Errorf("%q was taken", bad)
		}
	}
}

// cannedCSV stands for the MP's CSV report.
const cannedCSV = "id,device,state\n0123456789abcdef0123456789abcdef,dev-1,ended\n"

func cannedSessions() []wire.Session {
	req := time.Date(2026, 12, 7, 9, 0, 0, 0, time.UTC)
	started, ended := req.Add(5*time.Second), req.Add(10*time.Minute)
	return []wire.Session{
		{ID: "0123456789abcdef0123456789abcdef", Device: "dev-1", DeviceName: "kiosk-1", Helper: "alice", Sharer: "bob", SharerName: "Bob, \"the\" user",
			Mode: "control", State: wire.SessionEnded, Outcome: wire.OutcomeCompleted, Transport: wire.TransportRelay, DirectError: wire.DirectTimeout, E2E: true, MP: "mp1",
			RequestedAt: req, StartedAt: &started, EndedAt: &ended, BytesIn: 120, BytesOut: 4096},
		{ID: "fedcba9876543210fedcba9876543210", Device: "dev-2", Helper: "alice", Mode: "view", Kind: "screen", State: wire.SessionEnded,
			Outcome: wire.OutcomeDenied, Error: "denied", MP: "mp1", RequestedAt: req.Add(time.Hour)},
	}
}

func TestRemoteSessionsOutput(t *testing.T) {
	site := newRemoteSite(t)
	site.sessions = cannedSessions()

	// --csv is the MP's report (the web console's export), asked with the same filter.
	stdout, _, err := runIBCM(t, "", append([]string{"remote", "sessions", "--csv", "--active", "--device", "kiosk", "--helper", "alice", "--since", "2026-12-01T00:00:00Z"}, site.flags...)...)
	if err != nil {
		t.Fatal(err)
	}
	q := <-site.query
	if q.Get("format") != "csv" || q.Get("active") != "1" || q.Get("device") != "kiosk" || q.Get("helper") != "alice" || q.Get("since") != "2026-12-01T00:00:00Z" {
		t.Errorf("query %v", q)
	}
	if stdout != cannedCSV {
		t.Errorf("csv:\n%s\nwant\n%s", stdout, cannedCSV)
	}

	stdout, _, err = runIBCM(t, "", append([]string{"remote", "sessions", "--json"}, site.flags...)...)
	if err != nil {
		t.Fatal(err)
	}
	<-site.query
	var got []wire.Session
	if err := json.Unmarshal([]byte(stdout), &got); err != nil || len(got) != 2 || got[0].SharerName != "Bob, \"the\" user" || got[1].Outcome != "denied" {
		t.Errorf("json: %v\n%s", err, stdout)
	}

	stdout, _, err = runIBCM(t, "", append([]string{"remote", "sessions"}, site.flags...)...)
	if err != nil {
		t.Fatal(err)
	}
	<-site.query
	lines := strings.Split(strings.TrimSpace(stdout), "\n")
	if len(lines) != 3 || !strings.HasPrefix(lines[0], "ID") || !strings.Contains(lines[0], "KIND") || !strings.Contains(lines[1], "kiosk-1") ||
		!strings.Contains(lines[1], "completed") || !strings.Contains(lines[1], "terminal") ||
		!strings.Contains(lines[2], "denied") || !strings.Contains(lines[2], "dev-2") || !strings.Contains(lines[2], "screen") {
		t.Errorf("table:\n%s", stdout)
	}

	site.sessions = nil
	stdout, _, err = runIBCM(t, "", append([]string{"remote", "sessions", "--json"}, site.flags...)...)
	if err != nil || strings.TrimSpace(stdout) != "[]" {
		t.Errorf("no sessions: %q %v", stdout, err)
	}
	<-site.query
}

// TestRemoteStartPiped: with stdin not a terminal the session still runs: the input
// reaches the device, its output comes back on stdout, the end of stdin ends the session
// and the command exits 0; the card, the warning and the sharer are on stderr, with the
// control characters the other side put in them removed.
func TestRemoteStartPiped(t *testing.T) {
	site := newRemoteSite(t)
	stdout, stderr, err := runIBCM(t, "uptime\nexit\n", append([]string{"remote", "start", "kiosk", "--mode", "control"}, site.flags...)...)
	if err != nil {
		t.Fatalf("%v\n%s", err, stderr)
	}
	if stdout != "uptime\nexit\n" {
		t.Errorf("stdout %q", stdout)
	}
	for _, want := range []string{"device kiosk-1, kiosk-1.corp.example, on the intranet, id dev-1", "WARNING: the disk is not encrypted]0;pwned",
		"connected over relay", "sharer bob (Bob [31mDupont) on a shared terminal; mode control", "session ended"} {
		if !strings.Contains(stderr, want) {
			t.Errorf("stderr lacks %q:\n%s", want, stderr)
		}
	}
	if strings.ContainsAny(stderr, "\x1b\x07") {
		t.Errorf("stderr carries control characters from the other side: %q", stderr)
	}
}

func TestRemoteStartRefused(t *testing.T) {
	cases := []struct {
		name   string
		status int
		code   string
		relay  bool // refused on the relay leg, not at the start
	}{
		{"device offline", http.StatusConflict, "device_offline", false},
		{"forbidden", http.StatusForbidden, "forbidden", false},
		{"denied by the user", http.StatusForbidden, "denied", true},
		{"no answer", http.StatusRequestTimeout, "consent_timeout", true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			site := newRemoteSite(t)
			e := &wire.Error{Error: wire.ErrorDetail{Code: tc.code, Message: "refused here"}}
			site.errStatus = tc.status
			if tc.relay {
				site.relayErr = e
			} else {
				site.startErr = e
			}
			_, _, err := runIBCM(t, "", append([]string{"remote", "start", "kiosk", "--mode", "control"}, site.flags...)...)
			if err == nil || exitCode(err) != exitRefused || !strings.Contains(err.Error(), tc.code) {
				t.Errorf("err = %v (exit %d), want exit %d naming %s", err, exitCode(err), exitRefused, tc.code)
			}
		})
	}
}

func TestCleanDropsControls(t *testing.T) {
	for in, want := range map[string]string{
		"plain":                 "plain",
		"你好 مرحبا":              "你好 مرحبا",
		"a\x1b[2Jb":             "a[2Jb",
		"title\x1b]0;x\x07":     "title]0;x",
		"tab\tnew\nline\r":      "tab newline",
		"bad \xff utf8":         "bad ? utf8",
		"c1 \u009b31m controls": "c1 31m controls",
		"line\u2028separator":   "lineseparator",
	} {
		if got := frame.Printable(in); got != want {
			t.Errorf("Printable(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestRemoteShowEndRecording(t *testing.T) {
	site := newRemoteSite(t)
	site.sessions = cannedSessions()
	id := site.sessions[0].ID

	stdout, _, err := runIBCM(t, "", append([]string{"remote", "show", id}, site.flags...)...)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"kiosk-1 (dev-1)", "bob (Bob, \"the\" user)", "completed", "relay (direct: timeout)", "2026-12-07T09:00:05Z", "4096", "terminal"} {
		if !strings.Contains(stdout, want) {
			t.Errorf("show lacks %q:\n%s", want, stdout)
		}
	}
	stdout, _, err = runIBCM(t, "", append([]string{"remote", "show", "--json", id}, site.flags...)...)
	var got wire.Session
	if err != nil || json.Unmarshal([]byte(stdout), &got) != nil || got.ID != id || got.BytesOut != 4096 || got.DirectError != wire.DirectTimeout {
		t.Errorf("show --json: %v\n%s", err, stdout)
	}
	if _, _, err := runIBCM(t, "", append([]string{"remote", "show", "nope"}, site.flags...)...); err == nil || !strings.Contains(err.Error(), "not_found") || exitCode(err) != exitRefused {
		t.Errorf("an unknown session: %v (exit %d)", err, exitCode(err))
	}

	if stdout, _, err := runIBCM(t, "", append([]string{"remote", "end", id}, site.flags...)...); err != nil || !strings.Contains(stdout, "ended session "+id) {
		t.Errorf("end: %q %v", stdout, err)
	}
	if q := <-site.query; q.Get("ended") != id {
		t.Errorf("the MP was asked to end %v", q)
	}

	stdout, _, err = runIBCM(t, "", append([]string{"remote", "recording", id}, site.flags...)...)
	if err != nil || !strings.HasPrefix(stdout, `{"version": 2`) || !strings.Contains(stdout, "你好") {
		t.Errorf("recording to stdout: %v\n%s", err, stdout)
	}
	out := filepath.Join(t.TempDir(), "s.cast")
	if _, _, err := runIBCM(t, "", append([]string{"remote", "recording", "--out", out, id}, site.flags...)...); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(out); err != nil || string(b) != stdout {
		t.Errorf("recording --out: %q %v", b, err)
	}
	if fi, err := os.Stat(out); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("recording file mode: %v %v", fi, err)
	}
	if _, _, err := runIBCM(t, "", append([]string{"remote", "recording", "--out", "/nonexistent/dir/s.cast", id}, site.flags...)...); err == nil || exitCode(err) != exitUsage {
		t.Errorf("recording into a missing directory: %v", err)
	}
}
