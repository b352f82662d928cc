package integration

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"gopkg.in/yaml.v3"

	"github.com/ibcm-project/ibcm/internal/bindtest"
	"github.com/ibcm-project/ibcm/internal/wire"
)

// enrollDevice enrolls a device with ibcm-client and returns its state directory.
func enrollDevice(t *testing.T, s *testSite, name string) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), name)
	tok := strings.TrimSpace(s.ibcm(t, "ca", "token", "create", "--profile", "client", "--subject", name))
	r := runEnv(t, []string{"IBCM_CLIENT_TOKEN=" + tok}, bin.client, "enroll", "--dir", dir, "--ca", s.caURL,
		"--root-sha256", fingerprint(t, s.path("ca/root.crt")), "--name", name, "--fqdn", name+".corp.test")
	if r.code != 0 {
		t.Fatalf("enroll %s: %s%s", name, r.stdout, r.stderr)
	}
	return dir
}

func deviceIDOf(t *testing.T, dev string) string {
	t.Helper()
	var st map[string]any
	if err := json.Unmarshal([]byte(must(t, bin.client, "status", "--dir", dev, "--json")), &st); err != nil {
		t.Fatal(err)
	}
	return st["device_id"].(string)
}

// curlMP calls the MP with curl and the device's certificate.
func curlMP(t *testing.T, s *testSite, dev, url string, extra ...string) result {
	t.Helper()
	args := append([]string{"-sS", "--max-time", "5", "--cacert", s.path("ca/root.crt")}, extra...)
	if dev != "" {
		args = append(args, "--cert", filepath.Join(dev, "cert.pem"), "--key", filepath.Join(dev, "key.pem"))
	}
	return run(t, "curl", append(args, url)...)
}

// TestManagementPoint: a device reaches the MP on both listeners with its certificate,
// nothing else gets in, the admin manages devices, groups and policy, and a revocation cuts
// the device off within a second.
func TestManagementPoint(t *testing.T) {
	needTool(t, "curl")
	s := startSite(t, "sqlite")
	dev := enrollDevice(t, s, "pc-7")
	id := deviceIDOf(t, dev)

	for base, want := range map[string]string{s.mpIntranet: wire.Intranet, s.mpInternet: wire.Internet} {
		r := curlMP(t, s, dev, base+"/v1/whoami")
		var who wire.Whoami
		if r.code != 0 || json.Unmarshal([]byte(r.stdout), &who) != nil || who.Location != want || who.DeviceID != id {
			t.Errorf("curl whoami on %s: exit %d %s%s", base, r.code, r.stdout, r.stderr)
		}
		if r := curlMP(t, s, "", base+"/v1/whoami"); r.code == 0 {
			t.Errorf("curl without a client certificate got in: %s", r.stdout)
		}
	}
	// the MP staples a fresh OCSP response for its own certificate
	needTool(t, "openssl")
	waitFor(t, 5*time.Second, "an OCSP staple saying good", func() bool {
		r := runEnv(t, nil, "openssl", "s_client", "-connect", strings.TrimPrefix(s.mpInternet, "https://"), "-status",
			"-CAfile", s.path("ca/root.crt"), "-cert", filepath.Join(dev, "cert.pem"), "-key", filepath.Join(dev, "key.pem"), "-verify_return_error")
		return strings.Contains(r.stdout, "OCSP Response Status: successful") && strings.Contains(r.stdout, "Cert Status: good")
	})
	if r := curlMP(t, s, dev, s.mpIntranet+"/v1/checkin", "-d", `{"location":"intranet","compliance":"compliant"}`); r.code != 0 || !strings.Contains(r.stdout, "policy_etag") {
		t.Errorf("check-in: %s%s", r.stdout, r.stderr)
	}

	if list := s.ibcm(t, "device", "list"); !strings.Contains(list, id) || !strings.Contains(list, "pc-7") {
		t.Errorf("device list:\n%s", list)
	}
	var d wire.Device
	if err := json.Unmarshal([]byte(s.ibcm(t, "device", "show", "--json", id)), &d); err != nil || d.Name != "pc-7" || d.LastLocation != wire.Intranet {
		t.Errorf("device show: %+v %v", d, err)
	}

	// policy from YAML: errors name the key; a good file makes a new version
	policyFile := filepath.Join(t.TempDir(), "kiosks.yaml")
	shown := s.ibcm(t, "policy", "show")
	bad := strings.Replace(shown, "checkin_interval: 15m", "checkin_interval: 2s", 1)
	if err := os.WriteFile(policyFile, []byte(bad), 0o600); err != nil {
		t.Fatal(err)
	}
	if r := s.try(t, "policy", "set", "--file", policyFile, "kiosks"); r.code == 0 || !strings.Contains(r.stderr, "client.checkin_interval") {
		t.Errorf("bad policy: exit %d %s", r.code, r.stderr)
	}
	if err := os.WriteFile(policyFile, []byte(shown+"colour: blue\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if r := s.try(t, "policy", "set", "--file", policyFile, "kiosks"); r.code == 0 || !strings.Contains(r.stderr, "kiosks.yaml:") || !strings.Contains(r.stderr, ": colour: unknown key") {
		t.Errorf("unknown key: exit %d %s", r.code, r.stderr)
	}
	good := strings.Replace(shown, "checkin_interval: 15m", "checkin_interval: 5m", 1)
	if err := os.WriteFile(policyFile, []byte(good), 0o600); err != nil {
		t.Fatal(err)
	}
	if out := s.ibcm(t, "policy", "set", "--file", policyFile, "kiosks"); !strings.Contains(out, "version 1") {
		t.Errorf("policy set: %s", out)
	}
	s.ibcm(t, "group", "create", "--policy", "kiosks", "--priority", "10", "kiosks")
	s.ibcm(t, "group", "add", "kiosks", id)
	if out := s.ibcm(t, "group", "list"); !strings.Contains(out, "kiosks") {
		t.Errorf("group list:\n%s", out)
	}
	var pol wire.Policy
	waitFor(t, time.Second, "the device's policy is kiosks", func() bool { // the MP hears of the change by event
		r := curlMP(t, s, dev, s.mpInternet+"/v1/policy")
		return json.Unmarshal([]byte(r.stdout), &pol) == nil && pol.Name == "kiosks" && pol.Client.CheckinInterval == "5m"
	})

	// revoke at the CA: the MP refuses the device within a second
	serial := strings.TrimPrefix(strings.TrimSpace(must(t, "openssl", "x509", "-in", filepath.Join(dev, "cert.pem"), "-noout", "-serial")), "serial=")
	start := time.Now()
	s.ibcm(t, "ca", "revoke", "--reason", "keyCompromise", serial)
	for curlMP(t, s, dev, s.mpInternet+"/v1/whoami").code == 0 {
		if time.Since(start) > time.Second {
			t.Fatal("the MP still accepts the device a second after ibcm ca revoke")
		}
		time.Sleep(10 * time.Millisecond) // polling the condition itself
	}
	t.Logf("MP refused the revoked certificate %v after ibcm ca revoke started", time.Since(start))
}

// TestDNSPublishing: the MP publishes its SRV records to a real BIND 9 with TSIG-signed
// RFC 2136 updates while it runs, and removes them when it stops.
func TestDNSPublishing(t *testing.T) {
	dns := bindtest.Start(t, "corp.test.")
	s := initSite(t, "sqlite")
	secret := filepath.Join(s.dir, "dns.key")
	if err := os.WriteFile(secret, []byte(dns.Secret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	editConfig(t, s.path("site.yaml"), s.path("site.yaml"), func(mp map[string]any) {
		mp["dns"] = map[string]any{"server": dns.Addr, "zone": "corp.test", "key_name": dns.KeyName,
			"secret_file": "dns.key", "ttl": "60s", "cm_name": true}
	})
	s.start(t, "site", "up", "--dir", s.dir)
	port := s.mpIntranet[strings.LastIndex(s.mpIntranet, ":")+1:]
	want := fmt.Sprintf("0 0 %s ibcm.corp.test.", port)
	waitFor(t, 15*time.Second, "SRV records published", func() bool {
		ibcm, cm := dns.Dig(t, "SRV", "_ibcm-mp._tcp.corp.test"), dns.Dig(t, "SRV", "_mssms_mp_e2e._tcp.corp.test")
		return len(ibcm) == 1 && ibcm[0] == want && len(cm) == 1 && cm[0] == want
	})
	s.stop()
	if got := dns.Dig(t, "SRV", "_ibcm-mp._tcp.corp.test"); len(got) != 0 {
		t.Errorf("SRV record still published after the MP stopped: %v", got)
	}
}

// TestBlockAcrossMPProcesses: two MP processes on one PostgreSQL; a block issued through
// one (ibcm device block) closes the device's notification channel on the other within a
// second, and its certificate is revoked.
func TestBlockAcrossMPProcesses(t *testing.T) {
	s := initSite(t, "postgres")
	s.start(t, "site", "up", "--dir", s.dir)
	mp2In, mp2Out := freeAddr(t), freeAddr(t)
	second := s.path("site-mp2.yaml")
	editConfig(t, s.path("site.yaml"), second, func(mp map[string]any) {
		mp["id"] = "mp2"
		mp["intranet_listen"], mp["intranet_url"] = mp2In, "https://"+mp2In
		mp["internet_listen"], mp["internet_url"] = mp2Out, "https://"+mp2Out
	})
	s.start(t, "mp", "serve", "--config", second)

	dev := enrollDevice(t, s, "pc-12")
	id := deviceIDOf(t, dev)
	pair, err := tls.LoadX509KeyPair(filepath.Join(dev, "cert.pem"), filepath.Join(dev, "key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	rootPEM, _ := os.ReadFile(s.path("ca/root.crt"))
	roots.AppendCertsFromPEM(rootPEM)
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{Certificates: []tls.Certificate{pair}, RootCAs: roots}}}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ws, _, err := websocket.Dial(ctx, "wss://"+mp2Out+"/v1/notify", &websocket.DialOptions{HTTPClient: client})
	if err != nil {
		t.Fatalf("notification channel on MP 2: %v", err)
	}
	defer ws.CloseNow()
	waitFor(t, 5*time.Second, "the channel recorded", func() bool {
		var d wire.Device
		return json.Unmarshal([]byte(s.ibcm(t, "device", "show", "--json", id)), &d) == nil && d.Connected == 1
	})
	var listed []wire.Device
	if err := json.Unmarshal([]byte(s.ibcm(t, "device", "list", "--json")), &listed); err != nil || len(listed) != 1 || listed[0].ID != id || listed[0].Connected != 1 {
		t.Errorf("device list --json = %+v (%v), want the device with its 1 live channel, as device show says", listed, err)
	}

	// an event pushed through MP 1 reaches the device on MP 2
	s.ibcm(t, "device", "notify", "--event", "renew-cert", id)
	_, msg, err := ws.Read(ctx)
	if err != nil || !strings.Contains(string(msg), wire.EventRenewCert) {
		t.Fatalf("event through the other MP: %q %v", msg, err)
	}

	start := time.Now()
	out := s.ibcm(t, "device", "block", id)
	if !strings.Contains(out, "revoked certificate") {
		t.Errorf("device block did not revoke the certificate:\n%s", out)
	}
	readCtx, stop := context.WithTimeout(context.Background(), time.Second)
	defer stop()
	if _, _, err := ws.Read(readCtx); err == nil || readCtx.Err() != nil {
		t.Fatalf("the channel on MP 2 is still open a second after ibcm device block (%v)", err)
	}
	t.Logf("channel on MP 2 closed %v after ibcm device block started", time.Since(start))
	if _, err := client.Get("https://" + mp2In + "/v1/whoami"); err == nil {
		t.Error("MP 2 still accepts the blocked device")
	}
	var d wire.Device
	if err := json.Unmarshal([]byte(s.ibcm(t, "device", "show", "--json", id)), &d); err != nil || !d.Blocked {
		t.Errorf("device after block: %+v %v", d, err)
	}
}

// editConfig rewrites the mp section of a site.yaml into out.
func editConfig(t *testing.T, in, out string, edit func(mp map[string]any)) {
	t.Helper()
	editSection(t, in, out, "mp", func(mp map[string]any) {
		if in != out { // another MP of the site: the web console's listener stays the first's
			delete(mp, "console_listen")
			delete(mp, "console_url")
		}
		edit(mp)
	})
}

// editSection rewrites one section (mp, dp, ...) of a site.yaml into out.
func editSection(t *testing.T, in, out, section string, edit func(sec map[string]any)) {
	t.Helper()
	b, err := os.ReadFile(in)
	if err != nil {
		t.Fatal(err)
	}
	var cfg map[string]any
	if err := yaml.Unmarshal(b, &cfg); err != nil {
		t.Fatal(err)
	}
	sec, ok := cfg[section].(map[string]any)
	if !ok {
		t.Fatalf("%s has no %s section", in, section)
	}
	edit(sec)
	b, _ = yaml.Marshal(cfg)
	if err := os.WriteFile(out, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// waitFor polls cond until it holds or the time is up.
func waitFor(t *testing.T, limit time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, limit)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
