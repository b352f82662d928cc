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
// handshake runs, through a KeyLogWriter that belongs to the connection and writes nowhere
// (the traffic secrets) and a wrapper around the TCP connection that reads the record
// headers passing through (the sequence numbers). Session tickets are off on a Listener, so
// after the handshake the server sends only what the application writes and the count of
// records it has sent under its application key is exact. The client decides how many
// records its own handshake flight takes, so the wrapper opens that flight's records with
// the client handshake key until the Finished, and from there the count is exact too.
//
// The tls.Config given to NewListener must not set GetConfigForClient or KeyLogWriter:
// either would take the place of what the Listener sets, and no connection would park.
//
// The captured secrets live no longer than they may be needed: a connection that is not
// parked within ParkWindow of being accepted (a kept-alive request connection) drops them
// at its next read or write, and every connection drops them when it is closed or when
// Park refuses it. Secrets and keys this package owns are zeroed when they are dropped;
// what crypto/tls and the AEAD implementations keep of them is theirs. Once parked, the
// tls.Conn can no longer read or write: its records would reuse the parked sequence
// numbers, that is, nonces under the same key.
//
// One thing Park cannot see: a KeyUpdate the client sent before Park was handled inside
// crypto/tls, so the parked keys are stale and the client's next record does not
// authenticate. The connection then ends (it fails closed); clients do not update keys at
// the start of a connection.
package tlspark

import (
	"bytes"
	"crypto/cipher"
	"crypto/tls"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// ParkWindow is how long after it was accepted a connection may still be parked. The
// secrets of a connection not parked by then are dropped, so a request connection kept
// alive for hours does not carry them for its life. A device opens its notification
// channel right after its first requests; one that reuses an older connection for it gets
// a channel on crypto/tls, which works at crypto/tls's cost in memory.
const ParkWindow = 2 * time.Minute

// errParked is what the tls.Conn of a parked connection gets when it reads or writes.
var errParked = errors.New("tlspark: the connection is parked: crypto/tls may no longer read or write it")

// NewListener is tls.NewListener for connections that may be parked: each accepted
// connection gets its own copy of config with a KeyLogWriter that keeps its traffic
// secrets (and writes nowhere), session tickets off, and VerifyConnection wrapped to note
// where the handshake's records end.
func NewListener(inner net.Listener, config *tls.Config) net.Listener {
	return &listener{Listener: inner, config: config, now: time.Now}
}

type listener struct {
	net.Listener
	config *tls.Config
	now    func() time.Time
}

func (l *listener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	cc := &countedConn{Conn: c, now: l.now, parkBy: l.now().Add(ParkWindow)}
	cfg := l.config.Clone()
	cfg.KeyLogWriter = &cc.secrets
	cfg.SessionTicketsDisabled = true
	verify := l.config.VerifyConnection
	cfg.VerifyConnection = func(cs tls.ConnectionState) error {
		// The server has sent its whole flight: every record it sends from here on is
		// under its application traffic key.
		cc.verified = true
		cc.outAtVerify = cc.out.records
		if verify != nil {
			return verify(cs)
		}
		return nil
	}
	return tls.Server(cc, cfg), nil
}

// countedConn is the TCP connection under a parkable tls.Conn: it counts the records that
// pass each way, finds where the client's handshake flight ends, and keeps the traffic
// secrets the handshake logs. crypto/tls reads under its input lock and writes under its
// output lock, so each direction has one user at a time; the handshake (VerifyConnection,
// the key log, the flight) runs before either is shared.
type countedConn struct {
	net.Conn
	in, out recordCounter
	secrets secretLog
	flight  clientFlight

	verified    bool
	outAtVerify uint64 // records sent when VerifyConnection ran

	now     func() time.Time
	parkBy  time.Time   // the end of the connection's ParkWindow
	expired atomic.Bool // the window has passed and the secrets are gone
	parked  atomic.Bool // Park took over: crypto/tls may no longer read or write
}

func (c *countedConn) Read(p []byte) (int, error) {
	if c.parked.Load() {
		return 0, errParked
	}
	c.expire()
	n, err := c.Conn.Read(p)
	c.in.feed(p[:n])
	if !c.flight.done {
		c.flight.feed(p[:n], &c.secrets)
	}
	return n, err
}

func (c *countedConn) Write(p []byte) (int, error) {
	if c.parked.Load() {
		return 0, errParked
	}
	c.expire()
	n, err := c.Conn.Write(p)
	c.out.feed(p[:n])
	return n, err
}

// Close drops the secrets of a connection that was never parked, and closes it.
func (c *countedConn) Close() error {
	c.secrets.drop()
	return c.Conn.Close()
}

// expire drops the secrets once the connection's ParkWindow has passed.
func (c *countedConn) expire() {
	if !c.expired.Load() && c.now().After(c.parkBy) {
		c.expired.Store(true)
		c.secrets.drop()
	}
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

// clientFlight opens the client's encrypted handshake records (Certificate,
// CertificateVerify, Finished; RFC 8446 §4.4) as they arrive, only to count them: the
// record that completes the Finished is the last before the client's application key.
// crypto/tls verifies the same records; this keeps nothing of them.
type clientFlight struct {
	done    bool
	records uint64 // the flight's records; valid when ok
	ok      bool   // the Finished was found

	pending []byte // bytes of records not yet complete
	aead    cipher.AEAD
	iv      [12]byte
	msg     [4]byte // the handshake message header being read
	msgN    int     // its bytes so far
	left    int     // bytes of the message body still to come
}

// feed takes bytes the client sent. Records before its flight are plaintext (ClientHello,
// ChangeCipherSpec) and skipped; anything unexpected (TLS 1.2, a record that does not
// open) ends the search without a result, and the connection cannot be parked.
func (f *clientFlight) feed(p []byte, secrets *secretLog) {
	f.pending = append(f.pending, p...)
	for len(f.pending) >= recordHeaderLen {
		n := recordHeaderLen + int(binary.BigEndian.Uint16(f.pending[3:5]))
		if n > recordHeaderLen+maxCiphertext {
			f.stop(false) // crypto/tls refuses it too
			return
		}
		if len(f.pending) < n {
			return
		}
		record := f.pending[:n]
		f.pending = f.pending[n:]
		if record[0] == recordTypeApplicationData && !f.open(record, secrets) {
			f.stop(false)
		}
		if f.done {
			return
		}
	}
	if len(f.pending) == 0 {
		f.pending = nil
	}
}

func (f *clientFlight) open(record []byte, secrets *secretLog) bool {
	hdr, body := record[:recordHeaderLen], record[recordHeaderLen:]
	var plain []byte
	if f.aead == nil {
		secret := secrets.takeClientHandshake()
		if secret == nil {
			return false // no TLS 1.3 handshake secret: TLS 1.2
		}
		defer clear(secret)
		// The secret's length is the suite's hash; of the suites it fits, the one whose
		// key opens the first record is the one negotiated.
		for _, s := range suites {
			if s.hash().Size() != len(secret) {
				continue
			}
			key := s.expandLabel(secret, "key", s.keyLen)
			aead, err := s.aead(key) // keeps its own expanded copy
			clear(key)
			if err != nil {
				continue
			}
			var iv [12]byte
			ivb := s.expandLabel(secret, "iv", 12)
			copy(iv[:], ivb)
			clear(ivb)
			if p, err := aead.Open(nil, nonce(iv, 0), body, hdr); err == nil {
				f.aead, f.iv, plain = aead, iv, p
				break
			}
			clear(iv[:])
		}
		if f.aead == nil {
			return false
		}
	} else {
		var err error
		if plain, err = f.aead.Open(body[:0], nonce(f.iv, f.records), body, hdr); err != nil {
			return false
		}
	}
	f.records++
	typ, content, ok := innerPlaintext(plain)
	switch {
	case !ok:
		return false
	case typ == recordTypeAlert && len(content) == 2 && content[1] == alertUserCanceled:
		return true // ignored, as crypto/tls does; a close_notify follows
	case typ != recordTypeHandshake:
		return false
	}
	for len(content) > 0 {
		if f.left == 0 && f.msgN < len(f.msg) {
			k := copy(f.msg[f.msgN:], content)
			f.msgN += k
			content = content[k:]
			if f.msgN < len(f.msg) {
				break
			}
			f.left = int(f.msg[1])<<16 | int(f.msg[2])<<8 | int(f.msg[3])
		}
		k := min(f.left, len(content))
		f.left -= k
		content = content[k:]
		if f.left == 0 {
			if f.msg[0] == typeFinished {
				// The Finished ends its record (§5.1): the application key follows.
				f.stop(len(content) == 0)
				return true
			}
			f.msgN = 0
		}
	}
	return true
}

// stop ends the search; the handshake key's IV is overwritten and its AEAD let go.
func (f *clientFlight) stop(ok bool) {
	*f = clientFlight{done: true, ok: ok, records: f.records}
}

// secretLog is a connection's KeyLogWriter (NSS key log lines, one per Write): it keeps
// the TLS 1.3 client handshake secret and the two application traffic secrets, and drops
// every other line. Nothing is written anywhere. The line itself belongs to crypto/tls
// (io.Writer may not change it), so only the decoded copies are zeroed.
type secretLog struct {
	mu              sync.Mutex
	clientHandshake []byte
	client, server  []byte
	closed          bool // taken or dropped: later lines are ignored
}

func (s *secretLog) Write(line []byte) (int, error) {
	f := bytes.Fields(line) // slices of line: no copy of the secret's hex
	if len(f) != 3 {
		return len(line), nil
	}
	var dst *[]byte
	switch string(f[0]) {
	case "CLIENT_HANDSHAKE_TRAFFIC_SECRET":
		dst = &s.clientHandshake
	case "CLIENT_TRAFFIC_SECRET_0":
		dst = &s.client
	case "SERVER_TRAFFIC_SECRET_0":
		dst = &s.server
	default:
		return len(line), nil
	}
	secret := make([]byte, hex.DecodedLen(len(f[2])))
	if _, err := hex.Decode(secret, f[2]); err != nil {
		clear(secret)
		return len(line), nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		clear(secret)
		return len(line), nil
	}
	clear(*dst)
	*dst = secret
	return len(line), nil
}

// takeClientHandshake hands over the client handshake secret: the caller zeroes it.
func (s *secretLog) takeClientHandshake() []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	secret := s.clientHandshake
	s.clientHandshake = nil
	return secret
}

// take hands over the traffic secrets (the caller owns and zeroes them) and drops the
// rest: the log is done.
func (s *secretLog) take() (client, server []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	client, server = s.client, s.server
	s.client, s.server = nil, nil
	s.dropLocked()
	return client, server
}

// drop zeroes and forgets every secret, and ignores later lines.
func (s *secretLog) drop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.dropLocked()
}

func (s *secretLog) dropLocked() {
	for _, b := range []*[]byte{&s.clientHandshake, &s.client, &s.server} {
		clear(*b)
		*b = nil
	}
	s.closed = true
}
