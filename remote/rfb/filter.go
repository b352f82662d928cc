package rfb

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// Client message types (RFC 6143 §7.5 and the registered extensions).
const (
	MsgSetPixelFormat           = 0
	MsgSetEncodings             = 2
	MsgFramebufferUpdateRequest = 3
	MsgKeyEvent                 = 4
	MsgPointerEvent             = 5
	MsgClientCutText            = 6
	MsgEnableContinuousUpdates  = 150
	MsgClientFence              = 248
	MsgXvp                      = 250
	MsgSetDesktopSize           = 251
	MsgQEMU                     = 255
)

// Limits of the filter's length fields.
const (
	// MaxEncodings is the most encodings one SetEncodings may list (the field allows 65535;
	// real viewers send about 20).
	MaxEncodings = 256
	// MaxCutText is the longest ClientCutText text (the field allows 4 GiB).
	MaxCutText = 1 << 20
	// MaxFence is the longest ClientFence payload (RFC 6143 extension: 64).
	MaxFence = 64
)

// Mode is what the helper's viewer may do to the device.
type Mode int

const (
	// View passes only what cannot change the device: pixel format, encodings, update
	// requests and the flow-control messages. Key, pointer and clipboard messages are
	// dropped.
	View Mode = iota
	// Control passes every message the filter knows; clipboard text only when the
	// Filter's Clipboard says so.
	Control
)

func (m Mode) String() string {
	if m == Control {
		return "control"
	}
	return "view"
}

// ErrForbidden is wrapped by the error of a message that ends the session: a type the
// filter does not know (RFB messages carry no length, so an unknown one cannot be skipped)
// or one it knows and refuses (QEMU, xvp, SetDesktopSize).
var ErrForbidden = errors.New("rfb: client message not allowed")

// ErrTooLarge is wrapped by the error of a length field over its limit.
var ErrTooLarge = errors.New("rfb: client message too large")

// Encodings are the encodings a SetEncodings keeps; every other one is removed before the
// message reaches the server. The plain encodings change only how the server writes
// rectangles. The pseudo-encodings kept are those that add no client message, or only
// messages the filter parses:
//
//	-223 DesktopSize, -224 LastRect, -239 Cursor: server→client only;
//	-32…-23 Tight JPEG quality, -256…-247 Tight compression level: tuning, no message;
//	-312 Fence: the client answers with ClientFence (248), parsed;
//	-313 ContinuousUpdates: the client sends EnableContinuousUpdates (150), parsed.
//
// Removed among others: ExtendedDesktopSize (-308, which enables SetDesktopSize), QEMU
// extended key and audio (-258, -259), xvp (-309), the extended clipboard (0xC0A1E5CE,
// which changes ClientCutText's form).
func Allowed(enc int32) bool {
	switch enc {
	case 0, 1, 2, 5, 7, 8, 15, 16: // Raw, CopyRect, RRE, Hextile, Tight, ZlibHex, TRLE, ZRLE
		return true
	case -223, -224, -239, -312, -313:
		return true
	}
	return (enc >= -32 && enc <= -23) || (enc >= -256 && enc <= -247)
}

// Filter is the client→server half of an RFB 3.8 stream after the handshake: written to
// (Write, or Copy from a reader), it writes to the server those messages its mode allows,
// each complete message in one Write. The mode is read as each message completes, in the
// writer's goroutine: a mode change made between two Writes applies from the next message.
// After an error every Write returns it.
type Filter struct {
	// Dst is the server.
	Dst io.Writer
	// Mode is read for each message; nil means View.
	Mode func() Mode
	// Clipboard decides, in control mode, whether a ClientCutText reaches the server (the
	// sharer's prompt); nil drops every one.
	Clipboard func(text []byte) bool
	// Dropped, if set, is told the type of each message the filter dropped.
	Dropped func(msgType byte)

	pending []byte
	err     error
}

// Write takes the next bytes of the viewer's stream. It returns an error wrapping
// ErrForbidden or ErrTooLarge when a message ends the session, or the server's error.
func (f *Filter) Write(p []byte) (int, error) {
	if f.err != nil {
		return 0, f.err
	}
	f.pending = append(f.pending, p...)
	for len(f.pending) > 0 {
		n, err := messageLen(f.pending)
		if err != nil {
			f.err = err
			return 0, err
		}
		if n == 0 || len(f.pending) < n {
			break // need more
		}
		if err := f.message(f.pending[:n]); err != nil {
			f.err = err
			return 0, err
		}
		f.pending = f.pending[n:]
	}
	if len(f.pending) == 0 {
		f.pending = f.pending[:0:0] // let a large message's buffer go
	}
	return len(p), nil
}

// Close reports a stream that ended inside a message (io.ErrUnexpectedEOF).
func (f *Filter) Close() error {
	if f.err == nil && len(f.pending) > 0 {
		f.err = io.ErrUnexpectedEOF
	}
	return f.err
}

// Copy filters src into dst until src ends (nil at the boundary of a message), a write
// fails, or a message ends the session (an error wrapping ErrForbidden or ErrTooLarge).
func (f *Filter) Copy(dst io.Writer, src io.Reader) error {
	f.Dst = dst
	if _, err := io.Copy(f, src); err != nil {
		return err
	}
	return f.Close()
}

// messageLen returns the length of the message at the start of p, 0 when p is too short
// to tell, or the error of a message that ends the session.
func messageLen(p []byte) (int, error) {
	switch p[0] {
	case MsgSetPixelFormat: // 3 padding, 16 pixel format
		return 20, nil
	case MsgFramebufferUpdateRequest, MsgEnableContinuousUpdates: // 9 bytes of fields
		return 10, nil
	case MsgKeyEvent: // down, 2 padding, key
		return 8, nil
	case MsgPointerEvent: // buttons, x, y
		return 6, nil
	case MsgSetEncodings: // padding, count, encodings
		if len(p) < 4 {
			return 0, nil
		}
		n := int(binary.BigEndian.Uint16(p[2:4]))
		if n > MaxEncodings {
			return 0, fmt.Errorf("%w: SetEncodings of %d encodings (limit %d)", ErrTooLarge, n, MaxEncodings)
		}
		return 4 + 4*n, nil
	case MsgClientCutText: // 3 padding, length, text
		if len(p) < 8 {
			return 0, nil
		}
		n := binary.BigEndian.Uint32(p[4:8])
		if n > MaxCutText {
			return 0, fmt.Errorf("%w: ClientCutText of %d bytes (limit %d)", ErrTooLarge, n, MaxCutText)
		}
		return 8 + int(n), nil
	case MsgClientFence: // 3 padding, flags, length, payload
		if len(p) < 9 {
			return 0, nil
		}
		n := int(p[8])
		if n > MaxFence {
			return 0, fmt.Errorf("%w: ClientFence payload of %d bytes (limit %d)", ErrTooLarge, n, MaxFence)
		}
		return 9 + n, nil
	case MsgQEMU:
		return 0, fmt.Errorf("%w: QEMU message (255)", ErrForbidden)
	case MsgXvp:
		return 0, fmt.Errorf("%w: xvp (250)", ErrForbidden)
	case MsgSetDesktopSize:
		return 0, fmt.Errorf("%w: SetDesktopSize (251)", ErrForbidden)
	}
	return 0, fmt.Errorf("%w: unknown type %d", ErrForbidden, p[0])
}

// message passes or drops one complete message m.
func (f *Filter) message(m []byte) error {
	mode := View
	if f.Mode != nil {
		mode = f.Mode()
	}
	pass := true
	switch m[0] {
	case MsgSetEncodings:
		m = keepEncodings(m)
	case MsgKeyEvent, MsgPointerEvent:
		pass = mode == Control
	case MsgClientCutText:
		pass = mode == Control && f.Clipboard != nil && f.Clipboard(m[8:])
	}
	if !pass {
		if f.Dropped != nil {
			f.Dropped(m[0])
		}
		return nil
	}
	_, err := f.Dst.Write(m)
	return err
}

// keepEncodings returns a SetEncodings with only the encodings Allowed keeps, its count
// rewritten.
func keepEncodings(m []byte) []byte {
	out := make([]byte, 4, len(m))
	copy(out, m[:4])
	for e := m[4:]; len(e) >= 4; e = e[4:] {
		if Allowed(int32(binary.BigEndian.Uint32(e))) {
			out = append(out, e[:4]...)
		}
	}
	binary.BigEndian.PutUint16(out[2:4], uint16((len(out)-4)/4))
	return out
}
