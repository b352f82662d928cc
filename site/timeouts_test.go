package site

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"testing"
	"time"

	"github.com/ibcm-project/ibcm/internal/listener"
)

// TestSlowClientsAreCut: an MP listener closes a connection that never starts its TLS
// handshake, one that sends half a request header and stops, and a kept-alive one that
// stays idle, each after its timeout.
func TestSlowClientsAreCut(t *testing.T) {
	saved := listener.SlowClient
	t.Cleanup(func() { listener.SlowClient = saved })
	listener.SlowClient.Header, listener.SlowClient.Idle = 300*time.Millisecond, 300*time.Millisecond
	cfg, _ := runSite(t)
	addr := hostPort(cfg.MP.IntranetURL)
	pair, err := tls.LoadX509KeyPair(cfg.Path(AdminCert), cfg.Path(AdminKey))
	if err != nil {
		t.Fatal(err)
	}
	rootPEM, err := os.ReadFile(cfg.Path(cfg.CA.RootCert))
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(rootPEM)
	dialTLS := func(t *testing.T) *tls.Conn {
		t.Helper()
		c, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: roots, Certificates: []tls.Certificate{pair}, ServerName: cfg.Site.IntranetName})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	// closedByServer waits (at most 5 s, far beyond the timeouts, well within the defaults) for
	// the server to end c.
	closedByServer := func(t *testing.T, c net.Conn, r io.Reader) {
		t.Helper()
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, err := io.Copy(io.Discard, r)
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			t.Fatal("the server kept the connection open")
		}
	}

	t.Run("no TLS handshake", func(t *testing.T) {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		closedByServer(t, c, c)
	})
	t.Run("half a request header", func(t *testing.T) {
		c := dialTLS(t)
		if _, err := io.WriteString(c, "GET /healthz HTTP/1.1\r\nHost: mp\r\n"); err != nil {
			t.Fatal(err)
		}
		closedByServer(t, c, c)
	})
	t.Run("idle between requests", func(t *testing.T) {
		c := dialTLS(t)
		br := bufio.NewReader(c)
		if _, err := io.WriteString(c, "GET /healthz HTTP/1.1\r\nHost: mp\r\n\r\n"); err != nil {
			t.Fatal(err)
		}
		resp, err := http.ReadResponse(br, nil)
		if err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("healthz: %v %v", resp, err)
		}
		io.Copy(io.Discard, resp.Body)
		closedByServer(t, c, br)
	})
}
