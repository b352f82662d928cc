package rfb

import (
	"bufio"
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

// Filter reads the client→server messages of an RFB 3.8 stream after the handshake and
// writes to the server those its mode allows, each message in one Write.
type Filter struct {
	// Mode is read before each message; nil means View.
	Mode func() Mode
	// Clipboard decides, in control mode, whether a ClientCutText reaches the server (the
	// sharer's prompt); nil drops every one.
	Clipboard func(text []byte) bool
	// Dropped, if set, is told the type of each message the filter dropped.
	Dropped func(msgType byte)
}

// Copy filters src into dst until src ends (nil at the boundary of a message), a write
// fails, or a message ends the session (an error wrapping ErrForbidden or ErrTooLarge).
func (f *Filter) Copy(dst io.Writer, src io.Reader) error {
	r := bufio.NewReaderSize(src, 4096)
	buf := make([]byte, 0, 64)
	for {
		t, err := r.ReadByte()
		if err != nil {
			if err == io.EOF {
				return nil
			}
			return err
		}
		mode := View
		if f.Mode != nil {
			mode = f.Mode()
		}
		buf = append(buf[:0], t)
		pass := true
		switch t {
		case MsgSetPixelFormat: // 3 padding, 16 pixel format
			buf, err = readN(r, buf, 19)
		case MsgSetEncodings:
			buf, err = setEncodings(r, buf)
		case MsgFramebufferUpdateRequest: // incremental, x, y, w, h
			buf, err = readN(r, buf, 9)
		case MsgEnableContinuousUpdates: // enable, x, y, w, h
			buf, err = readN(r, buf, 9)
		case MsgClientFence: // 3 padding, flags, length, payload
			if buf, err = readN(r, buf, 8); err == nil {
				n := int(buf[8])
				if n > MaxFence {
					return fmt.Errorf("%w: ClientFence payload of %d bytes (limit %d)", ErrTooLarge, n, MaxFence)
				}
				buf, err = readN(r, buf, n)
			}
		case MsgKeyEvent: // down, 2 padding, key
			buf, err = readN(r, buf, 7)
			pass = mode == Control
		case MsgPointerEvent: // buttons, x, y
			buf, err = readN(r, buf, 5)
			pass = mode == Control
		case MsgClientCutText: // 3 padding, length, text
			if buf, err = readN(r, buf, 7); err == nil {
				n := binary.BigEndian.Uint32(buf[4:8])
				if n > MaxCutText {
					return fmt.Errorf("%w: ClientCutText of %d bytes (limit %d)", ErrTooLarge, n, MaxCutText)
				}
				if mode == Control && f.Clipboard != nil {
					if buf, err = readN(r, buf, int(n)); err == nil {
						pass = f.Clipboard(buf[8:])
					}
				} else {
					pass = false
					if _, err = r.Discard(int(n)); err == io.EOF {
						err = io.ErrUnexpectedEOF
					}
				}
			}
		case MsgQEMU:
			return fmt.Errorf("%w: QEMU message (255)", ErrForbidden)
		case MsgXvp:
			return fmt.Errorf("%w: xvp (250)", ErrForbidden)
		case MsgSetDesktopSize:
			return fmt.Errorf("%w: SetDesktopSize (251)", ErrForbidden)
		default:
			return fmt.Errorf("%w: unknown type %d", ErrForbidden, t)
		}
		if err != nil {
			return err
		}
		if !pass {
			if f.Dropped != nil {
				f.Dropped(t)
			}
			continue
		}
		if _, err := dst.Write(buf); err != nil {
			return err
		}
	}
}

// readN appends the next n bytes of r to buf; a stream cut inside is io.ErrUnexpectedEOF.
func readN(r *bufio.Reader, buf []byte, n int) ([]byte, error) {
	l := len(buf)
	buf = append(buf, make([]byte, n)...)
	if _, err := io.ReadFull(r, buf[l:]); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return buf, err
	}
	return buf, nil
}

// setEncodings reads a SetEncodings after its type and appends it with the encodings
// Allowed keeps and its count rewritten.
func setEncodings(r *bufio.Reader, buf []byte) ([]byte, error) {
	var hdr [3]byte // padding, count
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return buf, err
	}
	n := int(binary.BigEndian.Uint16(hdr[1:]))
	if n > MaxEncodings {
		return buf, fmt.Errorf("%w: SetEncodings of %d encodings (limit %d)", ErrTooLarge, n, MaxEncodings)
	}
	buf = append(buf, 0, 0, 0)
	kept := 0
	var e [4]byte
	for i := 0; i < n; i++ {
		if _, err := io.ReadFull(r, e[:]); err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return buf, err
		}
		if Allowed(int32(binary.BigEndian.Uint32(e[:]))) {
			buf = append(buf, e[:]...)
			kept++
		}
	}
	binary.BigEndian.PutUint16(buf[2:4], uint16(kept))
	return buf, nil
}
