package tlspark

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"io"
	"net"
	"os"
	"sync"
	"time"

	"golang.org/x/crypto/chacha20poly1305"
)

// TLS 1.3 record layer constants (RFC 8446 §5).
const (
	recordHeaderLen           = 5
	recordTypeAlert           = 21
	recordTypeHandshake       = 22
	recordTypeApplicationData = 23
	maxPlaintext              = 1 << 14
	maxCiphertext             = maxPlaintext + 256
	typeKeyUpdate             = 24

	alertCloseNotify       = 0
	alertUnexpectedMessage = 10
	alertBadRecordMAC      = 20
	alertRecordOverflow    = 22
	alertDecodeError       = 50

	// maxCandidates bounds the sequence numbers the first record after Park is tried
	// with; a connection that leaves more open is not parked.
	maxCandidates = 16
)

// ErrNotParkable means the connection cannot be parked (not TLS 1.3, not from a Listener,
// or too much traffic before Park to know the receiving sequence number); it is untouched
// and can be used as it is.
var ErrNotParkable = errors.New("tlspark: connection cannot be parked")

// ErrPending means the peer sent data that crypto/tls already holds: the connection is no
// longer usable and should be closed.
var ErrPending = errors.New("tlspark: the peer sent data before the connection was parked")

// Park takes over tc, a TLS 1.3 server connection accepted by a Listener whose handshake is
// complete and which the peer has nothing more in flight on (for a WebSocket: after the
// upgrade request, before the answer). tc must not be used afterwards, whatever Park
// returns, unless the error is ErrNotParkable.
func Park(tc *tls.Conn) (*Conn, error) {
	cc, ok := tc.NetConn().(*countedConn)
	if !ok {
		return nil, fmt.Errorf("%w: not accepted by a tlspark listener", ErrNotParkable)
	}
	cs := tc.ConnectionState()
	if !cs.HandshakeComplete || cs.Version != tls.VersionTLS13 {
		return nil, fmt.Errorf("%w: %s", ErrNotParkable, tls.VersionName(cs.Version))
	}
	s := suiteByID(cs.CipherSuite)
	if s == nil || !cc.verified {
		return nil, fmt.Errorf("%w: cipher suite %s", ErrNotParkable, tls.CipherSuiteName(cs.CipherSuite))
	}
	// The client's records so far: its handshake took at least one encrypted record and at
	// most the ones received by VerifyConnection and two more (CertificateVerify,
	// Finished); the request that led here took at least one.
	in := cc.in.encrypted
	lo, hi := uint64(1), in-1
	if in > cc.inAtVerify+2 {
		lo = max(lo, in-cc.inAtVerify-2)
	}
	if in < 2 || hi-lo+1 > maxCandidates {
		return nil, fmt.Errorf("%w: %d records received", ErrNotParkable, in)
	}
	if !cc.in.atBoundary() || !cc.out.atBoundary() {
		return nil, ErrPending
	}
	// Nothing the peer sent may wait inside crypto/tls: a read that must not block finds
	// either nothing (a timeout) or data it would lose.
	_ = tc.SetReadDeadline(time.Unix(1, 0))
	var probe [1]byte
	if n, err := tc.Read(probe[:]); n > 0 || !errors.Is(err, os.ErrDeadlineExceeded) || !cc.in.atBoundary() {
		return nil, ErrPending
	}
	_ = cc.Conn.SetDeadline(time.Time{})
	clientSecret, serverSecret := cc.secrets.take()
	if len(clientSecret) != s.hash().Size() || len(serverSecret) != s.hash().Size() {
		return nil, fmt.Errorf("%w: traffic secrets not logged", ErrNotParkable)
	}
	c := &Conn{raw: cc.Conn, suite: s, inLo: lo, inHi: hi}
	c.in.setSecret(s, clientSecret)
	c.out.setSecret(s, serverSecret)
	c.in.seq = lo
	c.out.seq = cc.out.records - cc.outAtVerify
	return c, nil
}

// Conn is a parked TLS 1.3 connection: a net.Conn whose records this package seals and
// opens. Read is for one goroutine at a time; Write may be called from any.
//
// The first record Conn reads is the one place it is weaker than crypto/tls: it is opened
// with each sequence number from the range Park computed (at most maxCandidates), so an
// active attacker on the path could, once, drop up to that many of the peer's records
// unnoticed, or replay one of the peer's last application records from before Park. From
// the second record on, numbering is exact. For the MP's notification channel neither
// matters: the records before Park are HTTP request text, which is never a valid client
// WebSocket frame (the channel closes with a protocol error), and the peer's frames are
// pongs, pings and a close, whose loss the ping timeout covers.
type Conn struct {
	raw   net.Conn
	suite *suite

	// Read side, owned by the reader.
	in         trafficKeys
	inLo, inHi uint64 // until the first record opens: the sequence numbers it may have
	inKnown    bool
	hdr        [recordHeaderLen]byte
	plain      []byte // decrypted and not yet read; nil when idle
	rerr       error  // sticky: the read side has failed or ended

	// Write side.
	wmu       sync.Mutex
	out       trafficKeys
	updateOut bool // the peer asked for a KeyUpdate: send ours before more data
	werr      error
}

var _ net.Conn = (*Conn)(nil)

// trafficKeys is one direction's state (RFC 8446 §7.3).
type trafficKeys struct {
	secret []byte
	key    []byte
	iv     [12]byte
	seq    uint64
}

func (k *trafficKeys) setSecret(s *suite, secret []byte) {
	k.secret = secret
	k.key = s.expandLabel(secret, "key", s.keyLen)
	copy(k.iv[:], s.expandLabel(secret, "iv", 12))
	k.seq = 0
}

// update moves to the next traffic secret (KeyUpdate).
func (k *trafficKeys) update(s *suite) {
	k.setSecret(s, s.expandLabel(k.secret, "traffic upd", len(k.secret)))
}

func (k *trafficKeys) nonce(seq uint64) []byte {
	n := k.iv
	for i := range 8 {
		n[4+i] ^= byte(seq >> (56 - 8*i))
	}
	return n[:]
}

// Read returns application data. A close_notify from the peer is io.EOF.
func (c *Conn) Read(p []byte) (int, error) {
	for len(c.plain) == 0 {
		if c.rerr != nil {
			return 0, c.rerr
		}
		c.plain = nil // drop the record buffer while waiting for the next one
		if err := c.readRecord(); err != nil {
			c.rerr = err
		}
	}
	n := copy(p, c.plain)
	c.plain = c.plain[n:]
	return n, nil
}

// readRecord reads and opens one record, handling alerts and KeyUpdate.
func (c *Conn) readRecord() error {
	if _, err := io.ReadFull(c.raw, c.hdr[:]); err != nil {
		if errors.Is(err, io.EOF) {
			return io.ErrUnexpectedEOF // no close_notify
		}
		return err
	}
	n := int(binary.BigEndian.Uint16(c.hdr[3:]))
	switch {
	case c.hdr[0] != recordTypeApplicationData: // legacy_record_version is ignored (§5.1), but authenticated
		return c.fatal(alertUnexpectedMessage, "tlspark: unexpected record type %d", c.hdr[0])
	case n > maxCiphertext:
		return c.fatal(alertRecordOverflow, "tlspark: record of %d bytes", n)
	}
	record := make([]byte, n)
	if _, err := io.ReadFull(c.raw, record); err != nil {
		return err
	}
	plain, err := c.open(record)
	if err != nil {
		return c.fatal(alertBadRecordMAC, "tlspark: record does not authenticate")
	}
	// TLSInnerPlaintext: content, the real type, then zeros.
	i := len(plain) - 1
	for i >= 0 && plain[i] == 0 {
		i--
	}
	if i < 0 {
		return c.fatal(alertUnexpectedMessage, "tlspark: record without a content type")
	}
	typ, content := plain[i], plain[:i]
	if len(content) > maxPlaintext {
		return c.fatal(alertRecordOverflow, "tlspark: record of %d bytes", len(content))
	}
	switch typ {
	case recordTypeApplicationData:
		c.plain = content
		return nil
	case recordTypeAlert:
		if len(content) != 2 {
			return c.fatal(alertDecodeError, "tlspark: malformed alert")
		}
		if content[1] == alertCloseNotify {
			return io.EOF
		}
		return fmt.Errorf("tlspark: remote error: alert %d", content[1])
	case recordTypeHandshake:
		return c.handshakeMessages(content)
	}
	return c.fatal(alertUnexpectedMessage, "tlspark: unexpected content type %d", typ)
}

// open decrypts a record in place. Until one has opened, each sequence number still
// possible is tried; the tag of the right one authenticates, any other fails.
func (c *Conn) open(record []byte) ([]byte, error) {
	aead, err := c.suite.aead(c.in.key)
	if err != nil {
		return nil, err
	}
	if c.inKnown {
		plain, err := aead.Open(record[:0], c.in.nonce(c.in.seq), record, c.hdr[:])
		if err == nil {
			c.in.seq++
		}
		return plain, err
	}
	for seq := c.inLo; seq <= c.inHi; seq++ {
		// Open on a copy: a failed Open may have overwritten its destination.
		if plain, err := aead.Open(nil, c.in.nonce(seq), record, c.hdr[:]); err == nil {
			c.inKnown, c.in.seq = true, seq+1
			return plain, nil
		}
	}
	return nil, errors.New("no sequence number opens the record")
}

// handshakeMessages handles post-handshake messages: only KeyUpdate is valid from a
// client, and it ends the record (RFC 8446 §5.1).
func (c *Conn) handshakeMessages(b []byte) error {
	if len(b) != 5 || b[0] != typeKeyUpdate || b[1] != 0 || b[2] != 0 || b[3] != 1 || b[4] > 1 {
		return c.fatal(alertUnexpectedMessage, "tlspark: unexpected post-handshake message")
	}
	c.in.update(c.suite)
	c.inKnown = true
	var err error
	if b[4] == 1 { // update_requested
		c.wmu.Lock()
		c.updateOut = true
		err = c.flushKeyUpdate()
		c.wmu.Unlock()
	}
	if testHookKeyUpdate != nil {
		testHookKeyUpdate()
	}
	return err
}

// testHookKeyUpdate, when set by a test, runs after each KeyUpdate from the peer.
var testHookKeyUpdate func()

// Write sends p as application data records.
func (c *Conn) Write(p []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if err := c.flushKeyUpdate(); err != nil {
		return 0, err
	}
	n := 0
	for len(p) > 0 {
		k := min(len(p), maxPlaintext)
		if err := c.writeRecord(recordTypeApplicationData, p[:k]); err != nil {
			return n, err
		}
		n += k
		p = p[k:]
	}
	return n, nil
}

// flushKeyUpdate answers a peer's update_requested (under wmu).
func (c *Conn) flushKeyUpdate() error {
	if !c.updateOut {
		return nil
	}
	if err := c.writeRecord(recordTypeHandshake, []byte{typeKeyUpdate, 0, 0, 1, 0}); err != nil {
		return err
	}
	c.updateOut = false
	c.out.update(c.suite)
	return nil
}

// writeRecord seals and sends one record (under wmu).
func (c *Conn) writeRecord(typ byte, content []byte) error {
	if c.werr != nil {
		return c.werr
	}
	aead, err := c.suite.aead(c.out.key)
	if err != nil {
		return err
	}
	n := len(content) + 1 + aead.Overhead()
	b := make([]byte, recordHeaderLen, recordHeaderLen+n)
	b[0], b[1], b[2] = recordTypeApplicationData, 3, 3
	binary.BigEndian.PutUint16(b[3:], uint16(n))
	inner := append(append(b[recordHeaderLen:], content...), typ)
	b = aead.Seal(b[:recordHeaderLen], c.out.nonce(c.out.seq), inner, b[:recordHeaderLen])
	c.out.seq++
	if _, err := c.raw.Write(b); err != nil {
		c.werr = err
		return err
	}
	return nil
}

// fatal sends an alert, best effort, and returns the error the read side ends with.
func (c *Conn) fatal(alert byte, format string, args ...any) error {
	c.sendAlert(alert)
	return fmt.Errorf(format, args...)
}

func (c *Conn) sendAlert(alert byte) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.werr != nil {
		return
	}
	_ = c.raw.SetWriteDeadline(time.Now().Add(time.Second))
	_ = c.writeRecord(recordTypeAlert, []byte{2, alert}) // fatal
	if alert == alertCloseNotify {
		c.werr = errors.New("tlspark: close_notify sent")
	} else {
		c.werr = fmt.Errorf("tlspark: alert %d sent", alert)
	}
}

// CloseWrite sends close_notify; the TCP connection stays open for reading.
func (c *Conn) CloseWrite() error {
	c.wmu.Lock()
	if c.werr != nil {
		c.wmu.Unlock()
		return c.werr
	}
	_ = c.raw.SetWriteDeadline(time.Now().Add(time.Second))
	err := c.writeRecord(recordTypeAlert, []byte{1, alertCloseNotify})
	c.werr = errors.New("tlspark: close_notify sent")
	c.wmu.Unlock()
	return err
}

// Close sends close_notify (within a second) and closes the TCP connection.
func (c *Conn) Close() error {
	_ = c.CloseWrite()
	return c.raw.Close()
}

// NetConn returns the TCP connection: closing it ends the Conn without a close_notify.
func (c *Conn) NetConn() net.Conn { return c.raw }

func (c *Conn) LocalAddr() net.Addr                { return c.raw.LocalAddr() }
func (c *Conn) RemoteAddr() net.Addr               { return c.raw.RemoteAddr() }
func (c *Conn) SetDeadline(t time.Time) error      { return c.raw.SetDeadline(t) }
func (c *Conn) SetReadDeadline(t time.Time) error  { return c.raw.SetReadDeadline(t) }
func (c *Conn) SetWriteDeadline(t time.Time) error { return c.raw.SetWriteDeadline(t) }

// suite is a TLS 1.3 cipher suite (RFC 8446 §B.4).
type suite struct {
	id     uint16
	keyLen int
	hash   func() hash.Hash
	aead   func(key []byte) (cipher.AEAD, error)
}

var suites = []*suite{
	{tls.TLS_AES_128_GCM_SHA256, 16, sha256.New, aesGCM},
	{tls.TLS_AES_256_GCM_SHA384, 32, sha512.New384, aesGCM},
	{tls.TLS_CHACHA20_POLY1305_SHA256, 32, sha256.New, chacha20poly1305.New},
}

func suiteByID(id uint16) *suite {
	for _, s := range suites {
		if s.id == id {
			return s
		}
	}
	return nil
}

func aesGCM(key []byte) (cipher.AEAD, error) {
	b, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(b)
}

// expandLabel is HKDF-Expand-Label (RFC 8446 §7.1) with an empty context.
func (s *suite) expandLabel(secret []byte, label string, length int) []byte {
	full := "tls13 " + label
	info := make([]byte, 0, 4+len(full))
	info = binary.BigEndian.AppendUint16(info, uint16(length))
	info = append(info, byte(len(full)))
	info = append(info, full...)
	info = append(info, 0)
	out, err := hkdf.Expand(s.hash, secret, string(info), length)
	if err != nil {
		panic("tlspark: HKDF-Expand-Label: " + err.Error()) // only for lengths no suite uses
	}
	return out
}
