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
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/ibcm-project/ibcm/ca"
	"github.com/ibcm-project/ibcm/ca/catest"
	"github.com/ibcm-project/ibcm/client"
	"github.com/ibcm-project/ibcm/internal/wire"
)

// peerEnv switches a re-executed test binary into the other user's control client
// (controlPeer): its value is the state directory, the arguments follow in peerArgsEnv.
const (
	peerEnv     = "IBCM_TEST_CONTROL_PEER"
	peerArgsEnv = "IBCM_TEST_CONTROL_PEER_ENROLL"
)

func TestMain(m *testing.M) {
	if dir := os.Getenv(peerEnv); dir != "" {
		os.Exit(controlPeer(dir))
	}
	os.Exit(m.Run())
}

// controlPeer is the other user: it asks the agent on dir for its status and to enroll
// again with the options in peerArgsEnv (JSON), and prints one line per answer.
func controlPeer(dir string) int {
	ctx := context.Background()
	if _, err := Query(ctx, dir); err != nil {
		fmt.Println("status:", err)
	} else {
		fmt.Println("status: answered")
	}
	var req enrollRequest
	if err := json.Unmarshal([]byte(os.Getenv(peerArgsEnv)), &req); err != nil {
		fmt.Println("bad options:", err)
		return 2
	}
	opts := client.EnrollOptions{CAURL: req.CAURL, Token: req.Token, RootSHA256: req.RootSHA256, Name: req.Name, Force: req.Force}
	if res, err := Enroll(ctx, dir, opts); err != nil {
		fmt.Println("enroll:", err)
	} else {
		fmt.Println("enroll: enrolled as", res.DeviceID)
	}
	return 0
}

// syncBuffer collects the agent's log lines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// enrolled enrolls a device into dir with a real CA.
func enrolled(t *testing.T, s *catest.Server, dir string) *client.Identity {
	t.Helper()
	id, err := client.Enroll(context.Background(), client.EnrollOptions{Dir: dir, CAURL: s.URL, Token: s.Token(t, ca.TokenSpec{}),
		RootSHA256: s.Pin, Name: "pc-01"})
	if err != nil {
		t.Fatalf("Enroll: %v", err)
	}
	return id
}

func newAgent(t *testing.T, dir string, log io.Writer) (*Agent, error) {
	t.Helper()
	resolv := filepath.Join(t.TempDir(), "resolv.conf")
	if err := os.WriteFile(resolv, []byte("nameserver 127.0.0.1:9\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return New(Options{Dir: dir, ResolvConf: resolv, Log: zerolog.New(log)})
}

// runAgent runs an agent on dir until the test ends and waits for its control socket.
func runAgent(t *testing.T, dir string, log io.Writer) {
	t.Helper()
	a, err := newAgent(t, dir, log)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("agent Run: %v", err)
		}
	})
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, err := Query(context.Background(), dir)
		if err == nil {
			return
		}
		select {
		case err := <-done:
			t.Fatalf("the agent stopped: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("the agent's control socket does not answer: %v", err)
		}
		time.Sleep(20 * time.Millisecond) // polling the readiness condition itself
	}
}

// TestControlSocketRefusesOtherUsers: a process of another user that reaches the control
// socket (here the test opens the directory and the socket, as a mistaken chmod would) is
// refused with 403 by its kernel-reported uid, and cannot make the agent enroll with a CA
// and token of its choosing; the refusal is logged once. The agent's own user still gets
// answers.
func TestControlSocketRefusesOtherUsers(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("this test runs a client as user nobody and needs root (make test runs as root)")
	}
	// A tree user nobody can enter: the state directory and a copy of the test binary.
	root, err := os.MkdirTemp("", "ibcm-peer-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(root) })
	if err := os.Chmod(root, 0o755); err != nil {
		t.Fatal(err)
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	bin, err := os.ReadFile(self)
	if err != nil {
		t.Fatal(err)
	}
	peerBin := filepath.Join(root, "agent.test")
	if err := os.WriteFile(peerBin, bin, 0o755); err != nil {
		t.Fatal(err)
	}

	s := catest.Start(t)
	dir := filepath.Join(root, "state")
	before := enrolled(t, s, dir)
	var log syncBuffer
	runAgent(t, dir, &log)
	if err := os.Chmod(dir, 0o711); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(filepath.Join(dir, SocketFile), 0o666); err != nil {
		t.Fatal(err)
	}

	// A valid token and the real CA: were the request served, the agent would replace
	// its identity.
	opts, err := json.Marshal(enrollRequest{CAURL: s.URL, Token: s.Token(t, ca.TokenSpec{}), RootSHA256: s.Pin, Name: "attacker", Force: true})
	if err != nil {
		t.Fatal(err)
	}
	for range 2 {
		cmd := exec.Command(peerBin)
		cmd.Env = append(os.Environ(), peerEnv+"="+dir, peerArgsEnv+"="+string(opts))
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("the client as nobody: %v\n%s", err, out)
		}
		for _, want := range []string{
			"status: the agent refused the request (HTTP 403, forbidden): only root may use the agent's control socket",
			"enroll: the agent refused the request (HTTP 403, forbidden)",
		} {
			if !strings.Contains(string(out), want) {
				t.Errorf("the client as nobody printed\n%s\nwant a line %q", out, want)
			}
		}
	}

	st, err := Query(context.Background(), dir)
	if err != nil {
		t.Fatalf("the agent's own user is refused: %v", err)
	}
	if st.DeviceID != before.DeviceID || st.Serial != before.SerialHex() {
		t.Errorf("the agent's identity changed to device %s serial %s (was %s %s)", st.DeviceID, st.Serial, before.DeviceID, before.SerialHex())
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if id, err := client.Load(dir); err != nil || id.Name != "pc-01" || id.DeviceID != before.DeviceID {
		t.Errorf("stored identity after the attempts: %v %v", id, err)
	}
	if n := strings.Count(log.String(), "control socket: refused a connection from another user"); n != 1 || !strings.Contains(log.String(), `"uid":65534`) {
		t.Errorf("the refusals of uid 65534 were logged %d times, want once naming the uid:\n%s", n, log.String())
	}
}

// TestAgentRefusesOpenStateDir: the agent does not start on a state directory that
// another user can enter, or that is not its user's, and says how to fix it; enroll
// tightens an open directory to 0700 but refuses another user's.
func TestAgentRefusesOpenStateDir(t *testing.T) {
	s := catest.Start(t)
	dir := filepath.Join(t.TempDir(), "state")
	enrolled(t, s, dir)
	for _, tc := range []struct {
		name  string
		mode  os.FileMode
		uid   int
		wants []string
	}{
		{"mode 0755", 0o755, -1, []string{dir + " has mode 0755", "run chmod 700 " + dir}},
		{"mode 0710", 0o710, -1, []string{dir + " has mode 0710", "run chmod 700 " + dir}},
		{"mode 0701", 0o701, -1, []string{dir + " has mode 0701", "run chmod 700 " + dir}},
		{"owned by nobody", 0o700, 65534, []string{dir + " is owned by uid 65534, not by uid 0"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.uid >= 0 && os.Geteuid() != 0 {
				t.Fatal("needs root to give the directory away (make test runs as root)")
			}
			if err := os.Chmod(dir, tc.mode); err != nil {
				t.Fatal(err)
			}
			if err := os.Chown(dir, tc.uid, -1); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() {
				if err := os.Chown(dir, os.Geteuid(), -1); err != nil {
					t.Fatal(err)
				}
				if err := os.Chmod(dir, 0o700); err != nil {
					t.Fatal(err)
				}
			})
			_, err := newAgent(t, dir, io.Discard)
			if !errors.Is(err, client.ErrDirPermissions) {
				t.Fatalf("New on the directory: %v, want ErrDirPermissions", err)
			}
			for _, want := range tc.wants {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("New: %q, want it to say %q", err, want)
				}
			}
			if _, err := os.Stat(filepath.Join(dir, SocketFile)); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("a control socket exists after the refusal: %v", err)
			}
			_, err = client.Enroll(context.Background(), client.EnrollOptions{Dir: dir, CAURL: s.URL, Token: s.Token(t, ca.TokenSpec{}),
				RootSHA256: s.Pin, Name: "pc-01", Force: true})
			switch {
			case tc.uid >= 0 && !errors.Is(err, client.ErrDirPermissions):
				t.Errorf("Enroll into another user's directory: %v, want ErrDirPermissions", err)
			case tc.uid < 0 && err != nil:
				t.Errorf("Enroll into the open directory: %v, want it tightened", err)
			case tc.uid < 0:
				if fi, _ := os.Stat(dir); fi.Mode().Perm() != 0o700 {
					t.Errorf("Enroll left the directory %04o, want 0700", fi.Mode().Perm())
				}
			}
		})
	}

	// The directory opened after New: Run refuses before it binds the socket.
	a, err := newAgent(t, dir, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o750); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second) // ends an agent that did start
	defer cancel()
	if err := a.Run(ctx); !errors.Is(err, client.ErrDirPermissions) || !strings.Contains(err.Error(), "run chmod 700 "+dir) {
		t.Errorf("Run on a directory opened after New: %v, want ErrDirPermissions naming chmod 700", err)
	}
	if _, err := os.Stat(filepath.Join(dir, SocketFile)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a control socket exists after the refusal: %v", err)
	}
}

// post sends a raw request to the control socket and returns the status and the error
// body.
func post(t *testing.T, dir, path string, body []byte) (int, wire.Error) {
	t.Helper()
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", filepath.Join(dir, SocketFile))
	}}}
	defer hc.CloseIdleConnections()
	resp, err := hc.Post("http://agent"+path, "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var e wire.Error
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode >= 400 && resp.StatusCode != http.StatusBadGateway {
		if err := json.Unmarshal(b, &e); err != nil || e.Error.Code == "" || e.Error.Message == "" {
			t.Errorf("POST %s: HTTP %d with body %q, want {\"error\":{\"code\",\"message\"}}", path, resp.StatusCode, b)
		}
	}
	return resp.StatusCode, e
}

// TestControlRequestLimits: every field of a control request is bounded, the JSON is
// strict, and the body is limited; a refused request changes nothing.
func TestControlRequestLimits(t *testing.T) {
	s := catest.Start(t)
	dir := filepath.Join(t.TempDir(), "state")
	before := enrolled(t, s, dir)
	runAgent(t, dir, io.Discard)

	good := func(mod func(m map[string]any)) []byte {
		m := map[string]any{"ca_url": s.URL, "token": s.Token(t, ca.TokenSpec{}), "root_sha256": s.Pin, "name": "pc-02", "force": true}
		mod(m)
		b, _ := json.Marshal(m)
		return b
	}
	for _, tc := range []struct {
		name, path string
		body       []byte
		status     int
		want       string
	}{
		{"timeout an hour", "/enroll", good(func(m map[string]any) { m["timeout"] = int64(time.Hour) }), 400, "timeout 1h0m0s: must be between 0"},
		{"timeout negative", "/enroll", good(func(m map[string]any) { m["timeout"] = -1 }), 400, "timeout -1ns"},
		{"timeout a string", "/enroll", good(func(m map[string]any) { m["timeout"] = "1h" }), 400, "timeout"},
		{"unknown field", "/enroll", good(func(m map[string]any) { m["dir"] = "/etc" }), 400, `unknown field "dir"`},
		{"bad pin", "/enroll", good(func(m map[string]any) { m["root_sha256"] = "00" }), 400, "root_sha256"},
		{"bad key type", "/enroll", good(func(m map[string]any) { m["key_type"] = "dsa" }), 400, "key_type"},
		{"long token", "/enroll", good(func(m map[string]any) { m["token"] = strings.Repeat("t", 513) }), 400, "token exceeds 512 bytes"},
		{"long name", "/enroll", good(func(m map[string]any) { m["name"] = strings.Repeat("n", 65) }), 400, "name exceeds 64 bytes"},
		{"long fqdn", "/enroll", good(func(m map[string]any) { m["fqdn"] = strings.Repeat("a", 254) }), 400, "fqdn exceeds 253 bytes"},
		{"long ca_url", "/enroll", good(func(m map[string]any) { m["ca_url"] = "https://" + strings.Repeat("a", 2048) }), 400, "ca_url exceeds 2048 bytes"},
		{"data after the object", "/enroll", append(good(func(map[string]any) {}), []byte(` {}`)...), 400, "data after the JSON object"},
		{"empty body", "/renew", nil, 400, "EOF"},
		{"renew unknown field", "/renew", []byte(`{"keep_key":true,"dir":"/"}`), 400, `unknown field "dir"`},
		{"oversized body", "/renew", []byte(`{"keep_key":` + strings.Repeat(" ", 17<<10) + `true}`), 413, "exceeds 16384 bytes"},
		{"report without text", "/report", []byte(`{"severity":"info"}`), 400, "text is required"},
		{"report text too long", "/report", []byte(`{"text":"` + strings.Repeat("x", wire.MaxStatusText+1) + `"}`), 400, "text exceeds 4096 bytes"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			status, e := post(t, dir, tc.path, tc.body)
			if status != tc.status || !strings.Contains(e.Error.Message, tc.want) {
				t.Errorf("POST %s: HTTP %d %+v, want %d saying %q", tc.path, status, e, tc.status, tc.want)
			}
		})
	}

	// The CLI's way: a clear refusal, and nothing sent to the CA.
	_, err := Enroll(context.Background(), dir, client.EnrollOptions{CAURL: s.URL, Token: s.Token(t, ca.TokenSpec{}), RootSHA256: s.Pin, Force: true, Timeout: 2 * time.Minute})
	if !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), "HTTP 400") || !strings.Contains(err.Error(), "timeout 2m0s: must be between 0 (the default, 30s) and 1m0s") {
		t.Errorf("Enroll with a 2m timeout: %v, want a 400 refusal naming the bound", err)
	}
	if st, err := Query(context.Background(), dir); err != nil || st.DeviceID != before.DeviceID || st.Serial != before.SerialHex() {
		t.Errorf("after the refused requests the agent is %+v %v, want device %s serial %s", st, err, before.DeviceID, before.SerialHex())
	}
	// A timeout at the bound is served.
	res, err := Enroll(context.Background(), dir, client.EnrollOptions{CAURL: s.URL, Token: s.Token(t, ca.TokenSpec{}), RootSHA256: s.Pin, Name: "pc-02", Force: true, Timeout: MaxControlTimeout})
	if err != nil || res.Name != "pc-02" {
		t.Errorf("Enroll with the largest timeout: %+v %v", res, err)
	}
}

// FuzzControlEnrollRequest: whatever the body, decodeControl answers 400 or 413 with the
// JSON error body, or accepts a request within every bound.
func FuzzControlEnrollRequest(f *testing.F) {
	f.Add([]byte(`{"ca_url":"https://ca.example:8443","token":"t","root_sha256":"` + strings.Repeat("ab", 32) + `","force":true,"timeout":30000000000}`))
	f.Add([]byte(`{"timeout":3600000000000}`))
	f.Add([]byte(`{"key_type":"rsa2048"} {}`))
	f.Add([]byte(`{"name":"` + strings.Repeat("n", 70) + `"}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		w := httptest.NewRecorder()
		var req enrollRequest
		ok := decodeControl(w, httptest.NewRequest(http.MethodPost, "/enroll", bytes.NewReader(body)), &req)
		if ok {
			if req.Timeout < 0 || req.Timeout > MaxControlTimeout || len(req.Token) > maxToken || len(req.CAURL) > maxURL ||
				len(req.Name) > maxName || len(req.FQDN) > maxFQDN {
				t.Fatalf("accepted out of bounds: %+v", req)
			}
			return
		}
		var e wire.Error
		if (w.Code != http.StatusBadRequest && w.Code != http.StatusRequestEntityTooLarge) || json.Unmarshal(w.Body.Bytes(), &e) != nil || e.Error.Code == "" {
			t.Fatalf("refusal HTTP %d %q", w.Code, w.Body.String())
		}
	})
}
