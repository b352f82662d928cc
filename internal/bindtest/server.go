package bindtest

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ibcm-project/ibcm/internal/freeport"
	"github.com/ibcm-project/ibcm/internal/peertest"

	"github.com/miekg/dns"
)

const (
	readyTimeout = 10 * time.Second // named must answer a SOA query within this
	stopTimeout  = 5 * time.Second  // SIGTERM grace before SIGKILL
	startTries   = 3                // new ports tried when the picked one was taken meanwhile
)

// Server is a running named serving one zone that accepts TSIG-signed updates.
type Server struct {
	Addr      string // 127.0.0.1:PORT, UDP and TCP
	Zone      string // the zone it is primary for, fully qualified ("corp.test.")
	KeyName   string // TSIG key allowed to update Zone: "mp-key."
	Algorithm string // TSIG algorithm of KeyName: dns.HmacSHA256
	Secret    string // base64 TSIG secret of KeyName

	dir     string // temporary directory holding config, zone, journal, log
	keyFile string // the key in named.conf syntax, also read by nsupdate -k
	logFile string
	cmd     *exec.Cmd
	exited  chan struct{} // closed when named has exited
	waitErr error         // set before exited is closed
}

// Start starts named as primary for zone (fully qualified or not) and stops it
// when t ends. It fails t, with named's log, when named does not come up.
func Start(t testing.TB, zone string) *Server {
	t.Helper()
	named := lookBinary(t, "named")
	secret := make([]byte, 32)
	if _, err := rand.Read(secret); err != nil {
		t.Fatalf("bindtest: making TSIG secret: %v", err)
	}
	dir, err := os.MkdirTemp("", "bindtest-")
	if err != nil {
		t.Fatalf("bindtest: %v", err)
	}
	s := &Server{
		Zone:      dns.Fqdn(zone),
		KeyName:   "mp-key.",
		Algorithm: dns.HmacSHA256,
		Secret:    base64.StdEncoding.EncodeToString(secret),
		dir:       dir,
		keyFile:   filepath.Join(dir, "mp-key.conf"),
		logFile:   filepath.Join(dir, "named.log"),
	}
	t.Cleanup(func() {
		if err := s.stop(); err != nil {
			t.Errorf("bindtest: %v", err)
		}
		if err := os.RemoveAll(s.dir); err != nil {
			t.Errorf("bindtest: removing %s: %v", s.dir, err)
		}
	})
	for try := 1; ; try++ {
		err = s.start(named)
		if err == nil {
			return s
		}
		// The port was free when picked; another process may have taken it
		// before named bound it. Only then is another port worth a try.
		if try == startTries || !strings.Contains(s.logTail(), "address in use") {
			t.Fatalf("bindtest: %v", err)
		}
		_ = s.stop()
	}
}

// start writes the configuration for a newly picked port, starts named and
// waits until it answers a SOA query for the zone.
func (s *Server) start(named string) error {
	port, err := freePort()
	if err != nil {
		return fmt.Errorf("picking a port for named: %w", err)
	}
	s.Addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	conf := filepath.Join(s.dir, "named.conf")
	if err := s.writeConfig(conf, port); err != nil {
		return fmt.Errorf("writing named configuration: %w", err)
	}
	logf, err := os.Create(s.logFile)
	if err != nil {
		return fmt.Errorf("creating named log: %w", err)
	}
	defer logf.Close() // named holds its own descriptor
	// -g: foreground, log to stderr; -n 1: one worker thread; -4: IPv4 only.
	// named keeps the user it is started as (root included) without -u.
	s.cmd = exec.Command(named, "-g", "-4", "-n", "1", "-c", conf)
	s.cmd.Dir = s.dir
	s.cmd.Stdout, s.cmd.Stderr = logf, logf
	if err := s.cmd.Start(); err != nil {
		s.cmd = nil
		return fmt.Errorf("starting %s: %w", named, err)
	}
	s.exited = make(chan struct{})
	go func(cmd *exec.Cmd, exited chan struct{}) {
		s.waitErr = cmd.Wait()
		close(exited)
	}(s.cmd, s.exited)
	if err := s.waitReady(); err != nil {
		return fmt.Errorf("%w\nnamed log %s:\n%s", err, s.logFile, s.logTail())
	}
	return nil
}

// writeConfig writes named.conf, the key file and the zone file into s.dir.
func (s *Server) writeConfig(conf string, port int) error {
	key := fmt.Sprintf("key %q {\n\talgorithm %s;\n\tsecret %q;\n};\n",
		s.KeyName, strings.TrimSuffix(s.Algorithm, "."), s.Secret)
	if err := os.WriteFile(s.keyFile, []byte(key), 0o600); err != nil {
		return err
	}
	zoneFile := filepath.Join(s.dir, "db.zone")
	zone := fmt.Sprintf(`$TTL 300
@	IN SOA	ns.%[1]s hostmaster.%[1]s ( 1 3600 600 86400 60 )
@	IN NS	ns.%[1]s
ns	IN A	127.0.0.1
`, s.Zone)
	if err := os.WriteFile(zoneFile, []byte(zone), 0o600); err != nil {
		return err
	}
	named := fmt.Sprintf(`// bindtest: a throwaway primary for %[3]s
options {
	directory %[1]q;
	listen-on port %[2]d { 127.0.0.1; };
	listen-on-v6 { none; };
	pid-file %[4]q;
	session-keyfile %[5]q;
	managed-keys-directory %[1]q;
	recursion no;
	dnssec-validation no;
	notify no;
};
controls { };
include %[6]q;
zone %[3]q {
	type primary;
	file %[7]q;
	allow-update { key %[8]q; };
};
`, s.dir, port, s.Zone, filepath.Join(s.dir, "named.pid"), filepath.Join(s.dir, "session.key"),
		s.keyFile, zoneFile, s.KeyName)
	return os.WriteFile(conf, []byte(named), 0o600)
}

// waitReady polls named with SOA queries for the zone until it answers
// authoritatively, named exits, or readyTimeout passes.
func (s *Server) waitReady() error {
	c := &dns.Client{Net: "udp", Timeout: 200 * time.Millisecond}
	q := new(dns.Msg)
	q.SetQuestion(s.Zone, dns.TypeSOA)
	deadline := time.Now().Add(readyTimeout)
	var last error
	for time.Now().Before(deadline) {
		select {
		case <-s.exited:
			return fmt.Errorf("named exited before answering: %v", s.waitErr)
		default:
		}
		r, _, err := c.Exchange(q, s.Addr)
		switch {
		case err != nil:
			last = err
		case r.Rcode != dns.RcodeSuccess || !r.Authoritative || len(r.Answer) == 0:
			last = fmt.Errorf("SOA %s answered %s", s.Zone, dns.RcodeToString[r.Rcode])
		default:
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("named on %s did not answer a SOA query for %s within %s: %v", s.Addr, s.Zone, readyTimeout, last)
}

// stop ends named: SIGTERM, then SIGKILL after stopTimeout.
func (s *Server) stop() error {
	if s.cmd == nil {
		return nil
	}
	defer func() { s.cmd = nil }()
	select {
	case <-s.exited:
		return nil
	default:
	}
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.exited:
		return nil
	case <-time.After(stopTimeout):
	}
	_ = s.cmd.Process.Kill()
	<-s.exited
	return fmt.Errorf("named did not stop within %s of SIGTERM; killed", stopTimeout)
}

// logTail returns the last lines of named's log.
func (s *Server) logTail() string {
	b, err := os.ReadFile(s.logFile)
	if err != nil {
		return fmt.Sprintf("(no log: %v)", err)
	}
	lines := bytes.Split(bytes.TrimRight(b, "\n"), []byte("\n"))
	if len(lines) > 30 {
		lines = lines[len(lines)-30:]
	}
	return string(bytes.Join(lines, []byte("\n")))
}

// Dig asks the server for name's records of type qtype (such as "SRV") with
// the real dig binary and returns the answers as dig +short prints them, one
// per element, sorted as dig printed them; none when the name has no such
// records.
func (s *Server) Dig(t testing.TB, qtype, name string) []string {
	t.Helper()
	host, port, _ := net.SplitHostPort(s.Addr)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, lookBinary(t, "dig"), "@"+host, "-p", port,
		"+short", "+tcp", "+tries=2", "+time=5", qtype, name)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("bindtest: dig %s %s: %v\n%s%s", qtype, name, err, out, stderr.Bytes())
	}
	var answers []string
	for line := range strings.Lines(string(out)) {
		if line = strings.TrimSpace(line); line != "" {
			answers = append(answers, line)
		}
	}
	return answers
}

// NSUpdate sends one update made of the given nsupdate commands (such as
// "update delete _ibcm-mp._tcp.corp.test. SRV") with the real nsupdate
// binary, signed with the server's key. The server and zone commands and the
// final send are added.
func (s *Server) NSUpdate(t testing.TB, commands ...string) {
	t.Helper()
	host, port, _ := net.SplitHostPort(s.Addr)
	var script strings.Builder
	fmt.Fprintf(&script, "server %s %s\nzone %s\n", host, port, s.Zone)
	for _, c := range commands {
		script.WriteString(c + "\n")
	}
	script.WriteString("send\n")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// TCP (-v): one exchange that waits for the answer, instead of UDP retries that gave
	// up after 3 s once on a loaded CI machine.
	cmd := exec.CommandContext(ctx, lookBinary(t, "nsupdate"), "-v", "-k", s.keyFile, "-t", "20")
	cmd.Stdin = strings.NewReader(script.String())
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("bindtest: nsupdate: %v\n%s\nscript:\n%s", err, out, script.String())
	}
}

// lookBinary finds a BIND binary (see peertest.Need).
func lookBinary(t testing.TB, name string) string {
	t.Helper()
	return peertest.Need(t, name)
}

// freePort returns a port that is free on 127.0.0.1 for both UDP and TCP.
func freePort() (int, error) { return freeport.Pick() }
