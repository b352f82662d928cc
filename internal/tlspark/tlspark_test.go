package tlspark

import (
	"bufio"
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ibcm-project/ibcm/internal/peertest"
)

// testPKI is a CA with a server certificate for 127.0.0.1 and a client certificate, as
// tls.Configs and as PEM files for openssl.
type testPKI struct {
	server, client *tls.Config
	dir            string
}

func newTestPKI(t *testing.T) *testPKI {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "tlspark test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	issue := func(serial int64, eku x509.ExtKeyUsage) (tls.Certificate, []byte, []byte) {
		key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: "leaf"},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
			KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{eku},
			IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}}
		for i := range 40 { // a certificate of over 1 KiB: its handshake message spans records when they are small
			tmpl.DNSNames = append(tmpl.DNSNames, fmt.Sprintf("host-%02d.tlspark.test", i))
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		keyDER, _ := x509.MarshalPKCS8PrivateKey(key)
		certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
		keyPEM := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})
		pair, err := tls.X509KeyPair(certPEM, keyPEM)
		if err != nil {
			t.Fatal(err)
		}
		return pair, certPEM, keyPEM
	}
	serverPair, _, _ := issue(2, x509.ExtKeyUsageServerAuth)
	clientPair, clientPEM, clientKey := issue(3, x509.ExtKeyUsageClientAuth)
	dir := t.TempDir()
	for name, b := range map[string][]byte{
		"ca.pem": pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}), "client.pem": clientPEM, "client.key": clientKey,
	} {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return &testPKI{
		server: &tls.Config{Certificates: []tls.Certificate{serverPair}, ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: pool, MinVersion: tls.VersionTLS12},
		client: &tls.Config{Certificates: []tls.Certificate{clientPair}, RootCAs: pool, ServerName: "127.0.0.1"},
		dir:    dir,
	}
}

// acceptOne listens on loopback with a parking Listener and hands over the first
// connection, its handshake done.
func acceptOne(t *testing.T, cfg *tls.Config) (string, <-chan *tls.Conn) {
	t.Helper()
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln := NewListener(inner, cfg)
	t.Cleanup(func() { ln.Close() })
	ch := make(chan *tls.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			close(ch)
			return
		}
		tc := c.(*tls.Conn)
		if err := tc.Handshake(); err != nil {
			tc.Close()
			close(ch)
			return
		}
		ch <- tc
	}()
	return inner.Addr().String(), ch
}

func readN(t *testing.T, r io.Reader, n int) string {
	t.Helper()
	b := make([]byte, n)
	if _, err := io.ReadFull(r, b); err != nil {
		t.Fatalf("reading %d bytes: %v", n, err)
	}
	return string(b)
}

// serveParked answers pre "req?" requests on tc, parks it after "park", says "parked\n"
// and echoes until the client's close_notify. The outcome of Park goes to parked.
func serveParked(tc *tls.Conn, pre int, parked chan<- error) {
	defer tc.NetConn().Close()
	b := make([]byte, 4)
	for range pre {
		if _, err := io.ReadFull(tc, b); err != nil {
			parked <- err
			return
		}
		if _, err := tc.Write([]byte("ok\n")); err != nil {
			parked <- err
			return
		}
	}
	if _, err := io.ReadFull(tc, b); err != nil || string(b) != "park" {
		parked <- errors.New("no park request")
		return
	}
	pc, err := Park(tc)
	parked <- err
	if err != nil {
		if errors.Is(err, ErrNotParkable) {
			_, _ = tc.Write([]byte("kept\n"))
		}
		return
	}
	if _, err := pc.Write([]byte("parked\n")); err != nil {
		return
	}
	if _, err := io.Copy(pc, pc); err != nil {
		return
	}
	pc.Close() // close_notify back
}

func TestParkedConnectionCarriesTLS(t *testing.T) {
	p := newTestPKI(t)
	for _, pre := range []int{0, 1, 7, 40} {
		t.Run(fmt.Sprintf("%d requests first", pre), func(t *testing.T) { parkAndEcho(t, p.server, p.client, pre) })
	}
	t.Run("no client certificate asked", func(t *testing.T) {
		cfg := p.server.Clone()
		cfg.ClientAuth = tls.NoClientCert
		parkAndEcho(t, cfg, p.client, 1)
	})
}

// parkAndEcho has a crypto/tls client make pre requests, ask for Park, and then exchange
// data both ways, three records of it included, before a clean close.
func parkAndEcho(t *testing.T, server, client *tls.Config, pre int) {
	big := make([]byte, 40000) // three records each way
	rand.Read(big)
	addr, conns := acceptOne(t, server)
	parked := make(chan error, 1)
	go func() { serveParked(<-conns, pre, parked) }()
	c, err := tls.Dial("tcp", addr, client)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for range pre {
		c.Write([]byte("req?"))
		if got := readN(t, c, 3); got != "ok\n" {
			t.Fatalf("answer %q", got)
		}
	}
	c.Write([]byte("park"))
	if err := <-parked; err != nil {
		t.Fatalf("Park: %v", err)
	}
	if got := readN(t, c, 7); got != "parked\n" {
		t.Fatalf("after Park: %q", got)
	}
	for _, msg := range [][]byte{[]byte("ping"), big, []byte("x")} {
		if _, err := c.Write(msg); err != nil {
			t.Fatal(err)
		}
		if got := readN(t, c, len(msg)); got != string(msg) {
			t.Fatalf("echo of %d bytes differs", len(msg))
		}
	}
	if err := c.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	if rest, err := io.ReadAll(c); err != nil || len(rest) != 0 {
		t.Fatalf("after close_notify: %q, %v (want a clean EOF)", rest, err)
	}
}

func TestParkRefuses(t *testing.T) {
	p := newTestPKI(t)
	t.Run("TLS 1.2 is left as it is", func(t *testing.T) {
		addr, conns := acceptOne(t, p.server)
		parked := make(chan error, 1)
		go func() { serveParked(<-conns, 0, parked) }()
		cfg := p.client.Clone()
		cfg.MaxVersion = tls.VersionTLS12
		c, err := tls.Dial("tcp", addr, cfg)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.Write([]byte("park"))
		if err := <-parked; !errors.Is(err, ErrNotParkable) {
			t.Fatalf("Park on TLS 1.2: %v, want ErrNotParkable", err)
		}
		if got := readN(t, c, 5); got != "kept\n" {
			t.Fatalf("the connection Park refused does not work: %q", got)
		}
	})
	t.Run("data sent before Park", func(t *testing.T) {
		addr, conns := acceptOne(t, p.server)
		parked := make(chan error, 1)
		go func() { serveParked(<-conns, 0, parked) }()
		c, err := tls.Dial("tcp", addr, p.client)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.Write([]byte("parkand more")) // one record: crypto/tls holds " and more"
		if err := <-parked; !errors.Is(err, ErrPending) {
			t.Fatalf("Park with data held by crypto/tls: %v, want ErrPending", err)
		}
	})
	t.Run("not from a Listener", func(t *testing.T) {
		a, b := net.Pipe()
		defer a.Close()
		defer b.Close()
		if _, err := Park(tls.Server(a, p.server)); !errors.Is(err, ErrNotParkable) {
			t.Fatalf("Park: %v, want ErrNotParkable", err)
		}
	})
}

// TestOpenSSLPeer runs each TLS 1.3 cipher suite against openssl s_client, another record
// layer than ours and crypto/tls's, with KeyUpdate both ways after Park: 'K' makes
// s_client send one that asks for ours back, 'k' one that does not.
func TestOpenSSLPeer(t *testing.T) {
	peertest.Need(t, "openssl")
	p := newTestPKI(t)
	updates := make(chan struct{}, 10)
	testHookKeyUpdate = func() { updates <- struct{}{} }
	t.Cleanup(func() { testHookKeyUpdate = nil })
	for _, tc := range []struct{ suite, maxFrag string }{
		{"TLS_AES_128_GCM_SHA256", "16384"},
		{"TLS_AES_256_GCM_SHA384", "16384"},
		{"TLS_CHACHA20_POLY1305_SHA256", "16384"},
		{"TLS_AES_128_GCM_SHA256", "512"}, // the client's Certificate message in three records
	} {
		t.Run(tc.suite+"/"+tc.maxFrag, func(t *testing.T) {
			addr, conns := acceptOne(t, p.server)
			parked := make(chan error, 1)
			go func() { serveParked(<-conns, 1, parked) }()
			cmd := exec.Command("openssl", "s_client", "-connect", addr, "-tls1_3", "-ciphersuites", tc.suite, "-max_send_frag", tc.maxFrag,
				"-cert", filepath.Join(p.dir, "client.pem"), "-key", filepath.Join(p.dir, "client.key"),
				"-CAfile", filepath.Join(p.dir, "ca.pem"), "-verify_return_error", "-quiet", "-no_ign_eof")
			stdin, _ := cmd.StdinPipe()
			stdout, _ := cmd.StdoutPipe()
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			defer func() { stdin.Close(); _ = cmd.Wait() }()
			out := bufio.NewReader(stdout)
			line := func(want string) {
				t.Helper()
				got, err := out.ReadString('\n')
				if err != nil || got != want {
					t.Fatalf("s_client printed %q (%v), want %q; stderr:\n%s", got, err, want, stderr.String())
				}
			}
			send := func(s string) {
				t.Helper()
				if _, err := io.WriteString(stdin, s); err != nil {
					t.Fatal(err)
				}
			}
			send("req?")
			line("ok\n")
			send("park")
			if err := <-parked; err != nil {
				t.Fatalf("Park: %v", err)
			}
			line("parked\n")
			send("hello\n")
			line("hello\n")
			for _, cmd := range []string{"K\n", "k\n"} {
				send(cmd)
				select {
				case <-updates:
				case <-time.After(10 * time.Second):
					t.Fatalf("no KeyUpdate reached the parked connection after %q; stderr:\n%s", cmd, stderr.String())
				}
				send("after " + cmd)
				line("after " + cmd)
			}
			send("Q\n") // close_notify: the echo ends and the server closes
			if rest, err := io.ReadAll(out); err != nil || len(rest) != 0 {
				t.Fatalf("after Q: %q, %v", rest, err)
			}
		})
	}
}

// newTestConn is one end of a parked connection with known secrets, at sequence 0.
func newTestConn(raw net.Conn, s *suite, in, out []byte) *Conn {
	c := &Conn{raw: raw, suite: s}
	c.in.setSecret(s, bytes.Clone(in)) // the Conn zeroes its secrets when done
	c.out.setSecret(s, bytes.Clone(out))
	return c
}

// testPair is a client and a server Conn over a pipe.
func testPair(t *testing.T, s *suite) (client, server *Conn) {
	t.Helper()
	a, b := net.Pipe()
	t.Cleanup(func() { a.Close(); b.Close() })
	cs, ss := bytes.Repeat([]byte{1}, s.hash().Size()), bytes.Repeat([]byte{2}, s.hash().Size())
	return newTestConn(a, s, ss, cs), newTestConn(b, s, cs, ss)
}

func TestKeyUpdateIsAnswered(t *testing.T) {
	for _, s := range suites {
		t.Run(tls.CipherSuiteName(s.id), func(t *testing.T) {
			var updates atomic.Int32
			testHookKeyUpdate = func() { updates.Add(1) }
			t.Cleanup(func() { testHookKeyUpdate = nil })
			client, server := testPair(t, s)
			clientRead := make(chan string)
			go func() { clientRead <- readN(t, client, 1) }() // takes the server's KeyUpdate, then "y"
			// As a client: KeyUpdate(update_requested), then data under the new key.
			go func() {
				client.wmu.Lock()
				_ = client.writeRecord(recordTypeHandshake, []byte{typeKeyUpdate, 0, 0, 1, 1})
				client.out.update(s)
				client.wmu.Unlock()
				_, _ = client.Write([]byte("x"))
			}()
			if got := readN(t, server, 1); got != "x" {
				t.Fatalf("server read %q after the client's KeyUpdate, want x", got)
			}
			go server.Write([]byte("y"))
			if got := <-clientRead; got != "y" {
				t.Fatalf("client read %q, want y", got)
			}
			if n := updates.Load(); n != 2 {
				t.Fatalf("%d KeyUpdates received in all, want 2: the client's and the server's answer", n)
			}
		})
	}
}

func TestBadRecords(t *testing.T) {
	s := suites[0]
	clientSecret, serverSecret := bytes.Repeat([]byte{1}, 32), bytes.Repeat([]byte{2}, 32)
	valid := func(typ byte, content []byte, more ...[]byte) []byte { // sealed records, as the client sends them
		var b bytes.Buffer
		w := newTestConn(streamConn{w: &b}, s, serverSecret, clientSecret)
		w.wmu.Lock()
		_ = w.writeRecord(typ, content)
		for _, m := range more {
			_ = w.writeRecord(typ, m)
		}
		w.wmu.Unlock()
		return b.Bytes()
	}
	flip := func(r []byte, i int, x byte) []byte { r[i] ^= x; return r }
	for _, tc := range []struct {
		name   string
		stream []byte
		want   string // in the error; "EOF" is a clean io.EOF
	}{
		{"flipped byte", flip(valid(recordTypeApplicationData, []byte("hi")), 7, 1), "does not authenticate"},
		{"plaintext record type", flip(valid(recordTypeApplicationData, []byte("hi")), 0, 23^22), "unexpected record type"},
		{"record too large", []byte{23, 3, 3, 0x48, 0x01}, "record of"},
		{"cut short", valid(recordTypeApplicationData, []byte("hi"))[:10], "unexpected EOF"},
		{"no content type", valid(0, nil), "without a content type"},
		{"unknown content type", valid(99, []byte("x")), "unexpected content type"},
		{"post-handshake message other than KeyUpdate", valid(recordTypeHandshake, []byte{4, 0, 0, 0}), "unexpected post-handshake"},
		{"fatal alert", valid(recordTypeAlert, []byte{2, 40}), "alert 40"},
		{"KeyUpdate with request_update 2", valid(recordTypeHandshake, []byte{typeKeyUpdate, 0, 0, 1, 2}), "request_update 2"},
		{"17 empty records", valid(recordTypeApplicationData, nil, make([][]byte, maxUseless)...), "too many records without data"},
		{"too much padding", valid(0, append([]byte("x\x17"), make([]byte, maxPlaintext+200)...)), "record of"},
		{"empty alert", valid(recordTypeAlert, nil), "empty alert"},
		{"close_notify", valid(recordTypeAlert, []byte{1, 0}), "EOF"},
		{"user_canceled, then close_notify", valid(recordTypeAlert, []byte{1, alertUserCanceled}, []byte{1, 0}), "EOF"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newTestConn(streamConn{r: bytes.NewReader(tc.stream)}, s, clientSecret, serverSecret)
			_, err := r.Read(make([]byte, 10))
			if tc.want == "EOF" {
				if err != io.EOF {
					t.Fatalf("Read: %v, want io.EOF", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Read: %v, want an error with %q", err, tc.want)
			}
			if _, again := r.Read(make([]byte, 1)); again == nil {
				t.Fatal("a failed read side reads again")
			}
		})
	}
}

// TestClientFlightCounts: the handshake follower counts the client's encrypted handshake
// records up to the one that ends the Finished, however the bytes arrive.
func TestClientFlightCounts(t *testing.T) {
	s := suites[0]
	secret := bytes.Repeat([]byte{3}, 32)
	userCanceled := []byte{recordTypeAlert, 1, alertUserCanceled} // an alert record, where a handshake content starts with its type
	sealed := func(contents ...[]byte) []byte {
		var b bytes.Buffer
		w := &Conn{raw: streamConn{w: &b}, suite: s}
		w.out.setSecret(s, bytes.Clone(secret))
		for _, c := range contents {
			typ := byte(recordTypeHandshake)
			if bytes.Equal(c, userCanceled) {
				typ, c = recordTypeAlert, c[1:]
			}
			w.wmu.Lock()
			_ = w.writeRecord(typ, c)
			w.wmu.Unlock()
		}
		return b.Bytes()
	}
	plaintext := []byte{22, 3, 1, 0, 2, 1, 0, 20, 3, 3, 0, 1, 1} // a ClientHello stub, ChangeCipherSpec
	cert := []byte{11, 0, 0, 4, 0, 0, 0, 0}
	finished := append([]byte{20, 0, 0, 32}, make([]byte, 32)...)
	for _, tc := range []struct {
		name    string
		stream  []byte
		secret  []byte
		ok      bool
		records uint64
	}{
		{"a record per message", append(plaintext, sealed(cert, finished)...), secret, true, 2},
		{"Finished split over two records", append(plaintext, sealed(cert, finished[:10], finished[10:])...), secret, true, 3},
		{"user_canceled between (ignored, as crypto/tls does)", sealed(cert, userCanceled, finished), secret, true, 3},
		{"both in one record", sealed(append(append([]byte{}, cert...), finished...)), secret, true, 1},
		{"data after the Finished in its record", sealed(cert, append(append([]byte{}, finished...), 4, 0, 0, 0)), secret, false, 2},
		{"no handshake secret (TLS 1.2)", sealed(cert, finished), nil, false, 0},
		{"another key", sealed(cert, finished), bytes.Repeat([]byte{4}, 32), false, 0},
	} {
		for _, step := range []int{1, 7, 1 << 20} {
			t.Run(fmt.Sprintf("%s/%d", tc.name, step), func(t *testing.T) {
				var fl clientFlight
				log := &secretLog{clientHandshake: bytes.Clone(tc.secret)}
				for b := tc.stream; len(b) > 0 && !fl.done; {
					k := min(step, len(b))
					fl.feed(b[:k], log)
					b = b[k:]
				}
				if !fl.done || fl.ok != tc.ok || (tc.ok && fl.records != tc.records) {
					t.Fatalf("done %v ok %v records %d, want ok %v records %d", fl.done, fl.ok, fl.records, tc.ok, tc.records)
				}
			})
		}
	}
}
