package rfb

import (
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// Security types (RFC 6143 §7.1.2).
const (
	SecNone    = 1
	SecVNCAuth = 2
)

// Limits of the handshake's length fields.
const (
	// MaxName is the longest desktop name a ServerInit may carry.
	MaxName = 4096
	// MaxReason is the longest failure reason read from a server.
	MaxReason = 4096
	// MaxSecurityTypes is the most security types a server may offer (the field allows 255).
	MaxSecurityTypes = 32
)

const version38 = "RFB 003.008\n"

// ErrHandshake is wrapped by every error about the form of a handshake.
var ErrHandshake = errors.New("rfb: bad handshake")

// ServerInit is the server's description of its framebuffer, kept as the bytes the server
// sent (2 width, 2 height, 16 pixel format, 4 name length, name) so the helper replays it
// unchanged.
type ServerInit []byte

// Size is the framebuffer's width and height.
func (s ServerInit) Size() (w, h uint16) {
	return binary.BigEndian.Uint16(s[0:2]), binary.BigEndian.Uint16(s[2:4])
}

// Name is the desktop name.
func (s ServerInit) Name() string { return string(s[24:]) }

// ParseServerInit checks the form of a ServerInit carried in one piece.
func ParseServerInit(p []byte) (ServerInit, error) {
	if len(p) < 24 {
		return nil, fmt.Errorf("%w: ServerInit of %d bytes", ErrHandshake, len(p))
	}
	n := binary.BigEndian.Uint32(p[20:24])
	if n > MaxName || int(n) != len(p)-24 {
		return nil, fmt.Errorf("%w: ServerInit name of %d bytes in %d", ErrHandshake, n, len(p))
	}
	return ServerInit(p), nil
}

func readFull(r io.Reader, p []byte) error {
	if _, err := io.ReadFull(r, p); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return err
	}
	return nil
}

func readReason(r io.Reader) string {
	var n [4]byte
	if readFull(r, n[:]) != nil {
		return ""
	}
	l := binary.BigEndian.Uint32(n[:])
	if l > MaxReason {
		return ""
	}
	p := make([]byte, l)
	if readFull(r, p) != nil {
		return ""
	}
	return string(p)
}

// Dial runs the client's side of the RFB 3.8 handshake with a VNC server on rw — the
// agent's, with the VNC server it started — using security None when offered, else VNC
// Authentication with password, asks for a shared session, and returns the ServerInit.
func Dial(rw io.ReadWriter, password string) (ServerInit, error) {
	var v [12]byte
	if err := readFull(rw, v[:]); err != nil {
		return nil, fmt.Errorf("reading the server's version: %w", err)
	}
	if string(v[:]) != version38 {
		return nil, fmt.Errorf("%w: server version %q, want RFB 3.8", ErrHandshake, v[:])
	}
	if _, err := io.WriteString(rw, version38); err != nil {
		return nil, err
	}
	var n [1]byte
	if err := readFull(rw, n[:]); err != nil {
		return nil, fmt.Errorf("reading the security types: %w", err)
	}
	if n[0] == 0 {
		return nil, fmt.Errorf("%w: the server refused: %q", ErrHandshake, readReason(rw))
	}
	if n[0] > MaxSecurityTypes {
		return nil, fmt.Errorf("%w: %d security types", ErrHandshake, n[0])
	}
	types := make([]byte, n[0])
	if err := readFull(rw, types); err != nil {
		return nil, fmt.Errorf("reading the security types: %w", err)
	}
	var chosen byte
	for _, t := range types {
		if t == SecNone {
			chosen = SecNone
		} else if t == SecVNCAuth && chosen == 0 && password != "" {
			chosen = SecVNCAuth
		}
	}
	if chosen == 0 {
		return nil, fmt.Errorf("%w: no usable security type in %v", ErrHandshake, types)
	}
	if _, err := rw.Write([]byte{chosen}); err != nil {
		return nil, err
	}
	if chosen == SecVNCAuth {
		var c [ChallengeSize]byte
		if err := readFull(rw, c[:]); err != nil {
			return nil, fmt.Errorf("reading the challenge: %w", err)
		}
		resp := EncryptChallenge(password, c)
		if _, err := rw.Write(resp[:]); err != nil {
			return nil, err
		}
	}
	var res [4]byte
	if err := readFull(rw, res[:]); err != nil {
		return nil, fmt.Errorf("reading the security result: %w", err)
	}
	if binary.BigEndian.Uint32(res[:]) != 0 {
		return nil, fmt.Errorf("%w: %q", ErrAuth, readReason(rw))
	}
	if _, err := rw.Write([]byte{1}); err != nil { // ClientInit: shared
		return nil, err
	}
	return ReadServerInit(rw)
}

// ReadServerInit reads a ServerInit from r (after ClientInit; on the helper's side, the
// first bytes the device's screen sends).
func ReadServerInit(r io.Reader) (ServerInit, error) {
	init := make([]byte, 24)
	if err := readFull(r, init); err != nil {
		return nil, fmt.Errorf("reading ServerInit: %w", err)
	}
	l := binary.BigEndian.Uint32(init[20:24])
	if l > MaxName {
		return nil, fmt.Errorf("%w: desktop name of %d bytes (limit %d)", ErrHandshake, l, MaxName)
	}
	init = append(init, make([]byte, l)...)
	if err := readFull(r, init[24:]); err != nil {
		return nil, fmt.Errorf("reading ServerInit: %w", err)
	}
	return ServerInit(init), nil
}

// Accept runs the server's side of the RFB handshake with a viewer on rw — the helper's,
// on its local port: RFB 3.8 (or 3.7), VNC Authentication with password and nothing else,
// one attempt. Once the viewer has answered the challenge it calls init for the ServerInit
// to send (the device's, so nothing of the device reaches a viewer without the password),
// and returns the viewer's shared flag. A wrong password gets a failure result and ErrAuth.
func Accept(rw io.ReadWriter, password string, init func() (ServerInit, error), rnd io.Reader) (shared bool, err error) {
	if rnd == nil {
		rnd = rand.Reader
	}
	return accept(rw, SecVNCAuth, password, init, rnd)
}

// AcceptNone is Accept with security type None: for a viewer the caller authenticated
// otherwise (the web console's noVNC, behind the console's cookie, Origin and CSRF checks).
// It must not be offered on a port anyone else can reach.
func AcceptNone(rw io.ReadWriter, init func() (ServerInit, error)) (shared bool, err error) {
	return accept(rw, SecNone, "", init, nil)
}

// accept is the server's handshake offering the one security type sec (SecVNCAuth or
// SecNone).
func accept(rw io.ReadWriter, sec byte, password string, init func() (ServerInit, error), rnd io.Reader) (shared bool, err error) {
	if _, err := io.WriteString(rw, version38); err != nil {
		return false, err
	}
	var v [12]byte
	if err := readFull(rw, v[:]); err != nil {
		return false, fmt.Errorf("reading the viewer's version: %w", err)
	}
	minor := 0
	switch string(v[:]) {
	case version38:
		minor = 8
	case "RFB 003.007\n":
		minor = 7
	default:
		return false, fmt.Errorf("%w: viewer version %q, want RFB 3.7 or 3.8", ErrHandshake, v[:])
	}
	if _, err := rw.Write([]byte{1, sec}); err != nil {
		return false, err
	}
	var t [1]byte
	if err := readFull(rw, t[:]); err != nil {
		return false, fmt.Errorf("reading the viewer's security type: %w", err)
	}
	if t[0] != sec {
		return false, fmt.Errorf("%w: viewer chose security type %d", ErrHandshake, t[0])
	}
	if sec == SecNone {
		// RFB 3.8 sends a SecurityResult for None too; 3.7 goes straight to ClientInit.
		if minor == 8 {
			if _, err := rw.Write([]byte{0, 0, 0, 0}); err != nil {
				return false, err
			}
		}
		return clientInit(rw, init)
	}
	var c, resp [ChallengeSize]byte
	if _, err := io.ReadFull(rnd, c[:]); err != nil {
		return false, err
	}
	if _, err := rw.Write(c[:]); err != nil {
		return false, err
	}
	if err := readFull(rw, resp[:]); err != nil {
		return false, fmt.Errorf("reading the viewer's response: %w", err)
	}
	if !checkResponse(password, c, resp) {
		fail := []byte{0, 0, 0, 1}
		if minor == 8 {
			const reason = "wrong password"
			fail = binary.BigEndian.AppendUint32(fail, uint32(len(reason)))
			fail = append(fail, reason...)
		}
		rw.Write(fail)
		return false, ErrAuth
	}
	if _, err := rw.Write([]byte{0, 0, 0, 0}); err != nil {
		return false, err
	}
	return clientInit(rw, init)
}

// clientInit reads the viewer's ClientInit and answers with init's ServerInit.
func clientInit(rw io.ReadWriter, init func() (ServerInit, error)) (shared bool, err error) {
	var ci [1]byte
	if err := readFull(rw, ci[:]); err != nil {
		return false, fmt.Errorf("reading ClientInit: %w", err)
	}
	si, err := init()
	if err != nil {
		return false, err
	}
	if _, err := rw.Write(si); err != nil {
		return false, err
	}
	return ci[0] != 0, nil
}
