package mp

// A minimal server side of RFC 6455 for the notification channel: the channel only carries
// small server → device text frames, so the server needs the opening handshake, writing
// unfragmented frames, and reading the device's control frames (ping, pong, close). Every
// data frame from the device is refused. Keeping it this small is what makes an idle
// channel cheap: no buffered reader or writer, no goroutine but the reader, nothing of the
// HTTP request kept after the upgrade, and the TLS 1.3 record layer parked outside
// crypto/tls.

import (
	"crypto/sha1"
	"crypto/tls"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/rs/zerolog"

	"github.com/ibcm-project/ibcm/internal/api"
	"github.com/ibcm-project/ibcm/internal/tlspark"
)

// Opcodes (RFC 6455 §5.2).
const (
	opContinuation = 0x0
	opText         = 0x1
	opBinary       = 0x2
	opClose        = 0x8
	opPing         = 0x9
	opPong         = 0xA
)

// Close codes (RFC 6455 §7.4.1).
const (
	closeNormal          = 1000
	closeProtocolError   = 1002
	closeNoStatus        = 1005 // never sent: "the close frame had no code"
	closePolicyViolation = 1008
	closeTooBig          = 1009
)

const (
	wsGUID        = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
	wsMaxPayload  = 1024 // any frame from a device larger than this ends the channel
	wsMaxControl  = 125
	wsWriteWait   = 10 * time.Second // each frame written within this
	wsFrameWait   = 10 * time.Second // and read within this once it has begun
	wsLinger      = time.Second      // after our close frame, how long the device may finish
	wsLingerBytes = 64 << 10         // and how much of what it still sends is read and dropped
)

var errChannelClosed = errors.New("notification channel closed")

// headerHasToken reports whether a comma-separated header (all its values) has token,
// ignoring case.
func headerHasToken(h http.Header, name, token string) bool {
	for _, v := range h.Values(name) {
		for t := range strings.SplitSeq(v, ",") {
			if strings.EqualFold(strings.TrimSpace(t), token) {
				return true
			}
		}
	}
	return false
}

// wsAccept is the Sec-WebSocket-Accept answer to a Sec-WebSocket-Key.
func wsAccept(key string) string {
	h := sha1.Sum([]byte(key + wsGUID))
	return base64.StdEncoding.EncodeToString(h[:])
}

// checkUpgrade validates a WebSocket opening handshake (RFC 6455 §4.2.1) and returns the
// Sec-WebSocket-Accept to answer, or an *api.Error to send instead.
func checkUpgrade(w http.ResponseWriter, r *http.Request) (string, error) {
	if r.Method != http.MethodGet {
		w.Header().Set("Allow", http.MethodGet)
		return "", api.Errorf(http.StatusMethodNotAllowed, "method_not_allowed", "the notification channel is opened with GET")
	}
	if !r.ProtoAtLeast(1, 1) || r.ProtoMajor != 1 {
		return "", api.Errorf(http.StatusHTTPVersionNotSupported, "http_version", "the notification channel needs HTTP/1.1, not %s", r.Proto)
	}
	if !headerHasToken(r.Header, "Connection", "upgrade") || !headerHasToken(r.Header, "Upgrade", "websocket") {
		w.Header().Set("Connection", "Upgrade")
		w.Header().Set("Upgrade", "websocket")
		return "", api.Errorf(http.StatusUpgradeRequired, "upgrade_required", "the notification channel is a WebSocket: Connection: Upgrade and Upgrade: websocket are required")
	}
	if v := r.Header.Values("Sec-WebSocket-Version"); len(v) != 1 || strings.TrimSpace(v[0]) != "13" {
		w.Header().Set("Sec-WebSocket-Version", "13")
		return "", api.Errorf(http.StatusUpgradeRequired, "websocket_version", "only WebSocket version 13 is supported (Sec-WebSocket-Version: 13)")
	}
	keys := r.Header.Values("Sec-WebSocket-Key")
	if len(keys) != 1 {
		return "", api.BadRequest("exactly one Sec-WebSocket-Key is required")
	}
	key := strings.TrimSpace(keys[0])
	if b, err := base64.StdEncoding.DecodeString(key); err != nil || len(b) != 16 {
		return "", api.BadRequest("Sec-WebSocket-Key must be 16 bytes in base64")
	}
	// A browser page of another origin must not open the channel with the device's
	// certificate; devices send no Origin.
	if origin := r.Header.Get("Origin"); origin != "" {
		u, err := url.Parse(origin)
		if err != nil || !strings.EqualFold(u.Host, r.Host) {
			return "", api.Errorf(http.StatusForbidden, "origin_refused", "cross-origin notification channels are refused")
		}
	}
	return wsAccept(key), nil
}

// upgrade answers a valid opening handshake with 101 and returns the hijacked connection
// (the TLS connection itself: net/http's buffered reader and writer are dropped, nothing
// of the request is kept). It returns an *api.Error to answer when the request is not a
// valid handshake, and (nil, nil) when the connection was hijacked but is unusable (it is
// then closed).
func upgrade(w http.ResponseWriter, r *http.Request, log zerolog.Logger) (net.Conn, error) {
	accept, err := checkUpgrade(w, r)
	if err != nil {
		return nil, err
	}
	hj, ok := w.(http.Hijacker)
	if !ok {
		return nil, api.Errorf(http.StatusInternalServerError, "internal", "the connection cannot be upgraded")
	}
	conn, brw, err := hj.Hijack()
	if err != nil {
		return nil, api.Wrap(err, http.StatusInternalServerError, "internal", "the connection cannot be upgraded")
	}
	// The device must wait for the 101 before it sends frames (RFC 6455 §4.1): anything
	// already read is a client that does not, and would be lost with the buffer.
	if brw.Reader.Buffered() > 0 {
		conn.Close()
		return nil, nil
	}
	// brw is not kept: net/http's 4 KiB reader and writer go with its conn once the
	// handler returns. Nor is crypto/tls, over TLS 1.3 from an MP listener: the channel's
	// record layer is parked (internal/tlspark), which is what keeps an idle channel small.
	// Anything else (TLS 1.2) stays on crypto/tls.
	if tc, ok := conn.(*tls.Conn); ok {
		switch pc, err := tlspark.Park(tc); {
		case err == nil:
			conn = pc
		case !errors.Is(err, tlspark.ErrNotParkable): // data crypto/tls holds would be lost
			log.Info().Err(err).Msg("notification channel refused")
			_ = rawConn(conn).Close()
			return nil, nil
		default: // it works, at crypto/tls's cost in memory: say so
			log.Info().Err(err).Msg("notification channel not parked")
		}
	}
	// The http.Server's request deadlines stay on a hijacked connection; this one lives on.
	_ = conn.SetDeadline(time.Time{})
	_ = conn.SetWriteDeadline(time.Now().Add(wsWriteWait))
	if _, err := io.WriteString(conn, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: "+accept+"\r\n\r\n"); err != nil {
		conn.Close()
		return nil, nil
	}
	_ = conn.SetWriteDeadline(time.Time{})
	return conn, nil
}

// rawConn is the connection under a TLS one (crypto/tls or parked): closing it ends a
// stuck TLS write or read without sending a close_notify (which could block).
func rawConn(conn net.Conn) net.Conn {
	if tc, ok := conn.(interface{ NetConn() net.Conn }); ok {
		return tc.NetConn()
	}
	return conn
}

// appendFrame appends one unmasked, unfragmented server frame.
func appendFrame(b []byte, op byte, payload []byte) []byte {
	b = append(b, 0x80|op)
	switch n := len(payload); {
	case n <= 125:
		b = append(b, byte(n))
	case n <= 0xFFFF:
		b = append(b, 126)
		b = binary.BigEndian.AppendUint16(b, uint16(n))
	default:
		b = append(b, 127)
		b = binary.BigEndian.AppendUint64(b, uint64(n))
	}
	return append(b, payload...)
}

// closePayload is the body of a close frame: the code, then a reason of at most 123 bytes.
func closePayload(code uint16, reason string) []byte {
	if code == 0 || code == closeNoStatus {
		return nil
	}
	if len(reason) > wsMaxControl-2 {
		reason = reason[:wsMaxControl-2]
	}
	return append(binary.BigEndian.AppendUint16(nil, code), reason...)
}

// wsFrames is the device's side of the channel as the server reads it: a fixed buffer for
// a frame header and a control frame's payload, nothing else.
type wsFrames struct {
	hdr [14]byte // 2 + up to 8 of length + 4 of mask
	buf [wsMaxControl]byte
}

// frameError ends the channel with a close code.
type frameError struct {
	code   uint16
	reason string
}

func (e *frameError) Error() string { return e.reason }

// next reads one frame from r, unmasks it, and returns its opcode and payload (which
// stays valid until the next call). Frames the channel never carries are *frameError.
func (f *wsFrames) next(r io.Reader) (op byte, payload []byte, err error) {
	if _, err := io.ReadFull(r, f.hdr[:1]); err != nil {
		return 0, nil, err
	}
	// Once a frame has begun, the rest must follow within wsFrameWait.
	if c, ok := r.(interface{ SetReadDeadline(time.Time) error }); ok {
		_ = c.SetReadDeadline(time.Now().Add(wsFrameWait))
		defer func() { _ = c.SetReadDeadline(time.Time{}) }()
	}
	return f.rest(r)
}

// rest is next once the frame's first byte is in hdr[0].
func (f *wsFrames) rest(r io.Reader) (op byte, payload []byte, err error) {
	if _, err := io.ReadFull(r, f.hdr[1:2]); err != nil {
		return 0, nil, err
	}
	b0, b1 := f.hdr[0], f.hdr[1]
	fin, op, masked := b0&0x80 != 0, b0&0x0F, b1&0x80 != 0
	if b0&0x70 != 0 {
		return 0, nil, &frameError{closeProtocolError, "reserved bits set: no extension was negotiated"}
	}
	if !masked {
		return 0, nil, &frameError{closeProtocolError, "client frames must be masked"}
	}
	n := uint64(b1 & 0x7F)
	switch n {
	case 126:
		if _, err := io.ReadFull(r, f.hdr[2:4]); err != nil {
			return 0, nil, err
		}
		n = uint64(binary.BigEndian.Uint16(f.hdr[2:4]))
	case 127:
		if _, err := io.ReadFull(r, f.hdr[2:10]); err != nil {
			return 0, nil, err
		}
		n = binary.BigEndian.Uint64(f.hdr[2:10])
	}
	switch {
	case n > wsMaxPayload:
		return 0, nil, &frameError{closeTooBig, "frame too large"}
	case op == opContinuation || op == opText || op == opBinary:
		return 0, nil, &frameError{closePolicyViolation, "the notification channel carries no messages from the device"}
	case op != opClose && op != opPing && op != opPong:
		return 0, nil, &frameError{closeProtocolError, "unknown opcode"}
	case !fin || n > wsMaxControl:
		return 0, nil, &frameError{closeProtocolError, "control frames are unfragmented and at most 125 bytes"}
	}
	mask := f.hdr[10:14]
	if _, err := io.ReadFull(r, mask); err != nil {
		return 0, nil, err
	}
	payload = f.buf[:n]
	if _, err := io.ReadFull(r, payload); err != nil {
		return 0, nil, err
	}
	for i := range payload {
		payload[i] ^= mask[i&3]
	}
	return op, payload, nil
}

// parseClose reads the code of a device's close frame; 0 when it has none.
func parseClose(p []byte) (uint16, error) {
	switch {
	case len(p) == 0:
		return 0, nil
	case len(p) == 1:
		return 0, &frameError{closeProtocolError, "close frame with a 1-byte body"}
	case !utf8.Valid(p[2:]):
		return 0, &frameError{closeProtocolError, "close reason is not UTF-8"}
	}
	code := binary.BigEndian.Uint16(p)
	if code < 1000 || code >= 5000 || code == 1004 || code == closeNoStatus || code == 1006 || code == 1015 || (code >= 1016 && code < 3000) {
		return 0, &frameError{closeProtocolError, "invalid close code"}
	}
	return code, nil
}
