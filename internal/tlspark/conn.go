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
	"sync/atomic"
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
	typeFinished              = 20
	typeKeyUpdate             = 24

	alertCloseNotify       = 0
	alertUnexpectedMessage = 10
	alertUserCanceled      = 90
	alertBadRecordMAC      = 20
	alertRecordOverflow    = 22
	alertIllegalParameter  = 47
	alertDecodeError       = 50

	// maxUseless is how many records in a row may carry nothing (empty data, KeyUpdate)
	// before the peer is cut off, as crypto/tls does.
	maxUseless = 16
)

// ErrNotParkable means the connection cannot be parked (not TLS 1.3, not from a Listener,
// or its handshake could not be followed); it is untouched and can be used as it is.
var ErrNotParkable = errors.New("tlspark: connection cannot be parked")

// ErrPending means the peer sent data that crypto/tls already holds: the connection is no
// longer usable and should be closed.
var ErrPending = errors.New("tlspark: the peer sent data before the connection was parked")

// Park takes over tc, a TLS 1.3 server connection accepted by a Listener whose handshake is
// complete and which the peer has nothing more in flight on (for a WebSocket: after the
// upgrade request, before the answer), within ParkWindow of its start. tc must not be
// used afterwards, whatever Park returns, unless the error is ErrNotParkable; once Park
// succeeds, tc's reads and writes fail. Park is tried once: whatever it returns, the
// secrets it needs are gone from tc's side, so a connection it refused stays on crypto/tls.
func Park(tc *tls.Conn) (*Conn, error) {
	cc, ok := tc.NetConn().(*countedConn)
	if !ok {
		return nil, fmt.Errorf("%w: not accepted by a tlspark listener", ErrNotParkable)
	}
	cs := tc.ConnectionState()
	if !cs.HandshakeComplete {
		return nil, fmt.Errorf("%w: the handshake is not complete", ErrNotParkable)
	}
	cc.expire()
	clientSecret, serverSecret := cc.secrets.take()
	parked := false
	defer func() {
		if !parked {
			clear(clientSecret)
			clear(serverSecret)
		}
	}()
	if cs.Version != tls.VersionTLS13 {
		return nil, fmt.Errorf("%w: %s", ErrNotParkable, tls.VersionName(cs.Version))
	}
	s := suiteByID(cs.CipherSuite)
	if s == nil || !cc.verified || !cc.flight.ok {
		return nil, fmt.Errorf("%w: the handshake (%s) was not followed", ErrNotParkable, tls.CipherSuiteName(cs.CipherSuite))
	}
	if cc.expired.Load() {
		return nil, fmt.Errorf("%w: not parked within %v of its start, the connection's secrets were dropped", ErrNotParkable, ParkWindow)
	}
	if len(clientSecret) != s.hash().Size() || len(serverSecret) != s.hash().Size() {
		return nil, fmt.Errorf("%w: traffic secrets not logged", ErrNotParkable)
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
	// From here on the records are ours: were crypto/tls to send one, it would reuse a
	// sequence number, a nonce under the same key.
	cc.parked.Store(true)
	parked = true
	_ = cc.Conn.SetDeadline(time.Time{})
	c := &Conn{raw: cc.Conn, suite: s}
	c.in.setSecret(s, clientSecret)
	c.out.setSecret(s, serverSecret)
	// Every record after the client's handshake flight, and every record the server sent
	// after its own, was under the application keys.
	c.in.seq = cc.in.encrypted - cc.flight.records
	c.out.seq = cc.out.records - cc.outAtVerify
	return c, nil
}

// Conn is a parked TLS 1.3 connection: a net.Conn whose records this package seals and
// opens. Read is for one goroutine at a time; Write, Close and CloseWrite may be called
// from any. A read error, a read deadline included, ends the read side. A side's secret
// and keys are zeroed when it ends: the write side with a failed write, CloseWrite or
// Close; the read side with a read error or Close.
type Conn struct {
	raw   net.Conn
	suite *suite

	// Read side, under rmu (held by Read, and by Close to end the side).
	rmu     sync.Mutex
	in      trafficKeys
	hdr     [recordHeaderLen]byte
	plain   []byte // decrypted and not yet read; nil when idle
	useless int    // records in a row that carried no data
	rerr    error  // sticky: the read side has failed or ended

	// Write side, under wmu.
	wmu       sync.Mutex
	out       trafficKeys
	werr      error
	updateOut atomic.Bool // the peer asked for a KeyUpdate: ours goes before our next data
}

var _ net.Conn = (*Conn)(nil)

// trafficKeys is one direction's state (RFC 8446 §7.3).
type trafficKeys struct {
	secret []byte
	key    []byte
	iv     [12]byte
	seq    uint64
}

// setSecret takes secret over (it is zeroed when replaced or wiped) and derives the keys.
func (k *trafficKeys) setSecret(s *suite, secret []byte) {
	k.wipe()
	k.secret = secret
	k.key = s.expandLabel(secret, "key", s.keyLen)
	iv := s.expandLabel(secret, "iv", 12)
	copy(k.iv[:], iv)
	clear(iv)
	k.seq = 0
}

// update moves to the next traffic secret (KeyUpdate); the old one is zeroed.
func (k *trafficKeys) update(s *suite) {
	k.setSecret(s, s.expandLabel(k.secret, "traffic upd", len(k.secret)))
}

// wipe zeroes the secret and keys of a direction that has ended.
func (k *trafficKeys) wipe() {
	clear(k.secret)
	clear(k.key)
	clear(k.iv[:])
	k.secret, k.key = nil, nil
}

// nonce is the per-record nonce: the IV xor the sequence number (RFC 8446 §5.3).
func nonce(iv [12]byte, seq uint64) []byte {
	for i := range 8 {
		iv[4+i] ^= byte(seq >> (56 - 8*i))
	}
	return iv[:]
}

// innerPlaintext splits a decrypted record into its content type and content (§5.2).
func innerPlaintext(plain []byte) (typ byte, content []byte, ok bool) {
	i := len(plain) - 1
	for i >= 0 && plain[i] == 0 {
		i--
	}
	if i < 0 {
		return 0, nil, false
	}
	return plain[i], plain[:i], true
}

// Read returns application data. A close_notify from the peer is io.EOF.
func (c *Conn) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	c.rmu.Lock()
	defer c.rmu.Unlock()
	for len(c.plain) == 0 {
		if c.rerr != nil {
			return 0, c.rerr
		}
		c.plain = nil // drop the record buffer while waiting for the next one
		if err := c.readRecord(); err != nil {
			c.endRead(err)
		}
	}
	n := copy(p, c.plain)
	c.plain = c.plain[n:]
	return n, nil
}

// endRead ends the read side with err and zeroes its keys (under rmu).
func (c *Conn) endRead(err error) {
	if c.rerr == nil {
		c.rerr = err
	}
	c.plain = nil
	c.in.wipe()
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
	aead, err := c.suite.aead(c.in.key)
	if err != nil {
		return err
	}
	plain, err := aead.Open(record[:0], nonce(c.in.iv, c.in.seq), record, c.hdr[:])
	if err != nil {
		return c.fatal(alertBadRecordMAC, "tlspark: record does not authenticate")
	}
	c.in.seq++
	if len(plain) > maxPlaintext+1 {
		return c.fatal(alertRecordOverflow, "tlspark: record of %d bytes", len(plain))
	}
	typ, content, ok := innerPlaintext(plain)
	if !ok {
		return c.fatal(alertUnexpectedMessage, "tlspark: record without a content type")
	}
	if typ != recordTypeApplicationData || len(content) == 0 {
		if c.useless++; c.useless > maxUseless {
			return c.fatal(alertUnexpectedMessage, "tlspark: too many records without data")
		}
	} else {
		c.useless = 0
	}
	switch typ {
	case recordTypeApplicationData:
		c.plain = content
		return nil
	case recordTypeAlert:
		switch {
		case len(content) == 0:
			return c.fatal(alertUnexpectedMessage, "tlspark: empty alert")
		case len(content) != 2:
			return c.fatal(alertDecodeError, "tlspark: malformed alert")
		case content[1] == alertCloseNotify:
			return io.EOF
		case content[1] == alertUserCanceled:
			return nil // ignored, as crypto/tls does; a close_notify follows
		}
		return fmt.Errorf("tlspark: remote error: alert %d", content[1])
	case recordTypeHandshake:
		return c.keyUpdate(content)
	}
	return c.fatal(alertUnexpectedMessage, "tlspark: unexpected content type %d", typ)
}

// keyUpdate handles a post-handshake message: only KeyUpdate is valid from a client, and
// it ends its record (RFC 8446 §5.1); one split over two records, which no client sends,
// ends the connection. Asked for ours, it is sent before our next data
// (§4.6.3), by the next Write: the reader never waits on the write side.
func (c *Conn) keyUpdate(b []byte) error {
	if len(b) != 5 || b[0] != typeKeyUpdate || b[1] != 0 || b[2] != 0 || b[3] != 1 {
		return c.fatal(alertUnexpectedMessage, "tlspark: unexpected post-handshake message")
	}
	if b[4] > 1 {
		return c.fatal(alertIllegalParameter, "tlspark: KeyUpdate with request_update %d", b[4])
	}
	c.in.update(c.suite)
	if b[4] == 1 { // update_requested
		c.updateOut.Store(true)
	}
	if testHookKeyUpdate != nil {
		testHookKeyUpdate()
	}
	return nil
}

// testHookKeyUpdate, when set by a test, runs after each KeyUpdate from the peer.
var testHookKeyUpdate func()

// Write sends p as application data records.
func (c *Conn) Write(p []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.updateOut.Swap(false) { // a request read while this runs is answered by the next Write
		if err := c.writeRecord(recordTypeHandshake, []byte{typeKeyUpdate, 0, 0, 1, 0}); err != nil {
			return 0, err // the write side has ended
		}
		c.out.update(c.suite)
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

// writeRecord seals and sends one record (under wmu). A failed write ends the write side.
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
	b = aead.Seal(b[:recordHeaderLen], nonce(c.out.iv, c.out.seq), inner, b[:recordHeaderLen])
	c.out.seq++
	if _, err := c.raw.Write(b); err != nil {
		c.werr = err
		c.out.wipe()
		return err
	}
	return nil
}

// fatal sends an alert if no write is under way, and returns the error the read side
// ends with.
func (c *Conn) fatal(alert byte, format string, args ...any) error {
	if c.wmu.TryLock() {
		c.endWrite(2, alert) // level fatal
		c.wmu.Unlock()
	}
	return fmt.Errorf(format, args...)
}

// endWrite sends an alert within a second and ends the write side (under wmu).
func (c *Conn) endWrite(level, alert byte) error {
	if c.werr != nil {
		return c.werr
	}
	_ = c.raw.SetWriteDeadline(time.Now().Add(time.Second))
	err := c.writeRecord(recordTypeAlert, []byte{level, alert})
	c.werr = fmt.Errorf("tlspark: write side ended (alert %d sent)", alert)
	c.out.wipe()
	return err
}

// CloseWrite sends close_notify; the TCP connection stays open for reading.
func (c *Conn) CloseWrite() error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	return c.endWrite(1, alertCloseNotify)
}

// Close sends close_notify (within a second, unless a write is under way: crypto/tls does
// the same), closes the TCP connection and ends the read side (a Read under way returns
// first, as the connection under it is closed). A write under way fails and ends the
// write side.
func (c *Conn) Close() error {
	if c.wmu.TryLock() {
		_ = c.endWrite(1, alertCloseNotify)
		c.wmu.Unlock()
	}
	err := c.raw.Close()
	c.rmu.Lock()
	c.endRead(net.ErrClosed)
	c.rmu.Unlock()
	return err
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
