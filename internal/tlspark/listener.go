// Package tlspark owns keeping a long-lived, mostly idle TLS 1.3 server connection cheaply.
//
// A crypto/tls connection keeps about 11 KiB for its whole life whether it carries anything
// or not: the parsed peer certificates, the record and handshake buffers grown during the
// handshake, and two expanded AES-GCM states (golang/go#43563, #81348). An MP holds one
// notification channel per device, so that is most of what 100,000 idle devices cost.
//
// Park moves a connection's TLS 1.3 record layer out of crypto/tls once the handshake and
// the HTTP exchange that asked for a long-lived channel are done. What is left is the TCP
// connection, the two application traffic secrets with their keys and sequence numbers,
// and nothing else while idle: a record is decrypted into a buffer that is dropped once
// read, and an AEAD is built for each record. The wire stays standard TLS 1.3, so any
// client works; KeyUpdate (RFC 8446 §4.6.3) is honoured both ways.
//
// Park needs what crypto/tls does not export, so a Listener collects it while the
// handshake runs: the traffic secrets, through a KeyLogWriter that belongs to the
// connection and writes nowhere, and the number of records sent and received, by reading
// the record headers that pass through. Session tickets are off on a Listener, so that
// after the handshake the server sends only what the application writes, and the count of
// records it has sent under the application key is exact. On the receiving side the client
// decides how many records its own handshake takes, so the count is known within a few
// records; the first record after Park is opened with each sequence number still possible
// and the one that authenticates fixes it (see Conn).
package tlspark

import (
	"crypto/tls"
	"encoding/hex"
	"net"
	"strings"
	"sync"
)

// NewListener is tls.NewListener for connections that may be parked: each accepted
// connection gets its own copy of config with a KeyLogWriter that keeps its traffic
// secrets (and writes nowhere), session tickets off, and VerifyConnection wrapped to note
// where the handshake's records end.
func NewListener(inner net.Listener, config *tls.Config) net.Listener {
	return &listener{Listener: inner, config: config}
}

type listener struct {
	net.Listener
	config *tls.Config
}

func (l *listener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	cc := &countedConn{Conn: c}
	cfg := l.config.Clone()
	cfg.KeyLogWriter = &cc.secrets
	cfg.SessionTicketsDisabled = true
	verify := l.config.VerifyConnection
	cfg.VerifyConnection = func(cs tls.ConnectionState) error {
		// The server has sent its whole flight and the client's certificate is in: every
		// record the server sends from here on is under its application traffic key.
		cc.verified = true
		cc.outAtVerify = cc.out.records
		cc.inAtVerify = cc.in.encrypted
		if verify != nil {
			return verify(cs)
		}
		return nil
	}
	return tls.Server(cc, cfg), nil
}

// countedConn is the TCP connection under a parkable tls.Conn: it counts the records that
// pass each way and keeps the traffic secrets the handshake logs. crypto/tls reads under
// its input lock and writes under its output lock, so each direction has one user at a
// time; the handshake (VerifyConnection, the key log) runs before either is shared.
type countedConn struct {
	net.Conn
	in, out recordCounter
	secrets secretLog

	verified    bool
	outAtVerify uint64 // records sent when VerifyConnection ran
	inAtVerify  uint64 // encrypted records received when VerifyConnection ran
}

func (c *countedConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.in.feed(p[:n])
	return n, err
}

func (c *countedConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	c.out.feed(p[:n])
	return n, err
}

// recordCounter follows a stream of TLS records by their 5-byte headers.
type recordCounter struct {
	hdr       [recordHeaderLen]byte
	hdrN      int    // header bytes seen of the current record
	left      int    // body bytes still to come of the current record
	records   uint64 // records begun
	encrypted uint64 // of them, with the outer type application_data (every encrypted record in TLS 1.3)
}

func (rc *recordCounter) feed(p []byte) {
	for len(p) > 0 {
		if rc.left > 0 {
			k := min(rc.left, len(p))
			rc.left -= k
			p = p[k:]
			continue
		}
		k := copy(rc.hdr[rc.hdrN:], p)
		rc.hdrN += k
		p = p[k:]
		if rc.hdrN == recordHeaderLen {
			rc.hdrN = 0
			rc.left = int(rc.hdr[3])<<8 | int(rc.hdr[4])
			rc.records++
			if rc.hdr[0] == recordTypeApplicationData {
				rc.encrypted++
			}
		}
	}
}

// atBoundary reports whether the stream so far ends where a record ends.
func (rc *recordCounter) atBoundary() bool { return rc.hdrN == 0 && rc.left == 0 }

// secretLog is a connection's KeyLogWriter (NSS key log lines, one per Write): it keeps
// the two TLS 1.3 application traffic secrets and drops every other line. Nothing is
// written anywhere.
type secretLog struct {
	mu             sync.Mutex
	client, server []byte
}

func (s *secretLog) Write(line []byte) (int, error) {
	f := strings.Fields(string(line))
	if len(f) != 3 {
		return len(line), nil
	}
	var dst *[]byte
	switch f[0] {
	case "CLIENT_TRAFFIC_SECRET_0":
		dst = &s.client
	case "SERVER_TRAFFIC_SECRET_0":
		dst = &s.server
	default:
		return len(line), nil
	}
	secret, err := hex.DecodeString(f[2])
	if err != nil {
		return len(line), nil
	}
	s.mu.Lock()
	*dst = secret
	s.mu.Unlock()
	return len(line), nil
}

func (s *secretLog) take() (client, server []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	client, server = s.client, s.server
	s.client, s.server = nil, nil
	return client, server
}
