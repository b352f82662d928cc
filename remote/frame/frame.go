// Package frame is the framing of every remote-control stream: inside the end-to-end TLS
// between helper and device, and on the share socket between the agent and the sharer's
// `ibcm-client share` or `consent`. A frame is one byte of type, four bytes of big-endian
// length, then the payload. Each type has its own size limit, and a frame of an unknown
// type, over its limit, or with a payload its type cannot have ends the stream: the
// reader returns an error and reads nothing more. It imports only the standard library.
package frame

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"unicode/utf8"
)

// Type is what a frame carries.
type Type byte

// The frame types. JSON payloads are the structs of the same name below.
const (
	Data   Type = 1  // terminal bytes: output to the helper and sharer, input to the shell
	Resize Type = 2  // 4 bytes: rows, cols (uint16 big-endian)
	Chat   Type = 3  // UTF-8 text
	Mode   Type = 4  // JSON ModeChange: asked for (helper → device), granted or refused (device → helper)
	End    Type = 5  // JSON Ending: the session (or this leg) ends; the sender closes after it
	Hello  Type = 6  // JSON Greeting: the first frame each side sends
	Status Type = 7  // JSON Presence: who is connected, in which mode (device → helper, agent → sharer)
	Prompt Type = 8  // JSON ConsentPrompt: the agent asks the local user for consent (share socket)
	Answer Type = 9  // JSON ConsentAnswer: the local user's answer to a ConsentPrompt (share socket)
	Ping   Type = 10 // empty, answered by Pong: keystroke round trips and liveness
	Pong   Type = 11 // empty
)

// Limits of a payload, by type.
const (
	MaxData    = 32 << 10
	MaxChat    = 4 << 10
	MaxJSON    = 8 << 10
	headerSize = 5
)

func (t Type) String() string {
	switch t {
	case Data:
		return "data"
	case Resize:
		return "resize"
	case Chat:
		return "chat"
	case Mode:
		return "mode"
	case End:
		return "end"
	case Hello:
		return "hello"
	case Status:
		return "status"
	case Prompt:
		return "prompt"
	case Answer:
		return "answer"
	case Ping:
		return "ping"
	case Pong:
		return "pong"
	}
	return fmt.Sprintf("type %d", byte(t))
}

// limit is the largest payload of t, or -1 for an unknown type.
func limit(t Type) int {
	switch t {
	case Data:
		return MaxData
	case Resize:
		return 4
	case Chat:
		return MaxChat
	case Mode, End, Hello, Status, Prompt, Answer:
		return MaxJSON
	case Ping, Pong:
		return 0
	}
	return -1
}

// ErrFrame is wrapped by every error about a frame's form.
var ErrFrame = errors.New("bad frame")

// Frame is one message. Payload belongs to the Reader until its next call.
type Frame struct {
	Type    Type
	Payload []byte
}

// Reader reads frames from a stream with one buffer that grows to the largest frame read.
type Reader struct {
	r   io.Reader
	hdr [headerSize]byte
	buf []byte
}

// NewReader reads frames from r.
func NewReader(r io.Reader) *Reader { return &Reader{r: r} }

// Next reads the next frame. At the end of the stream it returns io.EOF (a stream cut
// inside a frame is io.ErrUnexpectedEOF).
func (r *Reader) Next() (Frame, error) {
	if _, err := io.ReadFull(r.r, r.hdr[:]); err != nil {
		return Frame{}, err
	}
	t := Type(r.hdr[0])
	n := binary.BigEndian.Uint32(r.hdr[1:])
	max := limit(t)
	switch {
	case max < 0:
		return Frame{}, fmt.Errorf("%w: unknown %s", ErrFrame, t)
	case n > uint32(max):
		return Frame{}, fmt.Errorf("%w: %s of %d bytes, at most %d", ErrFrame, t, n, max)
	case t == Resize && n != 4:
		return Frame{}, fmt.Errorf("%w: resize of %d bytes, want 4", ErrFrame, n)
	}
	if cap(r.buf) < int(n) {
		r.buf = make([]byte, n)
	}
	p := r.buf[:n]
	if _, err := io.ReadFull(r.r, p); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return Frame{}, err
	}
	if t == Chat && !utf8.Valid(p) {
		return Frame{}, fmt.Errorf("%w: chat is not UTF-8", ErrFrame)
	}
	return Frame{Type: t, Payload: p}, nil
}

// Append appends one frame to b.
func Append(b []byte, t Type, payload []byte) []byte {
	b = append(b, byte(t))
	b = binary.BigEndian.AppendUint32(b, uint32(len(payload)))
	return append(b, payload...)
}

// Write writes one frame in one Write call (a TLS record, when w is TLS). It refuses a
// payload its type cannot have, as the reader would.
func Write(w io.Writer, t Type, payload []byte) error {
	if max := limit(t); max < 0 || len(payload) > max {
		return fmt.Errorf("%w: cannot send %s of %d bytes", ErrFrame, t, len(payload))
	}
	_, err := w.Write(Append(make([]byte, 0, headerSize+len(payload)), t, payload))
	return err
}

// WriteJSON writes a JSON frame.
func WriteJSON(w io.Writer, t Type, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return Write(w, t, b)
}

// DecodeJSON reads a JSON payload strictly (no unknown fields).
func DecodeJSON(f Frame, v any) error {
	if err := decodeStrict(f.Payload, v); err != nil {
		return fmt.Errorf("%w: %s: %v", ErrFrame, f.Type, err)
	}
	return nil
}

// ResizePayload is the payload of a Resize frame.
func ResizePayload(rows, cols uint16) []byte {
	return binary.BigEndian.AppendUint16(binary.BigEndian.AppendUint16(nil, rows), cols)
}

// ParseResize reads a Resize payload; a zero dimension is refused.
func ParseResize(p []byte) (rows, cols uint16, err error) {
	if len(p) != 4 {
		return 0, 0, fmt.Errorf("%w: resize of %d bytes", ErrFrame, len(p))
	}
	rows, cols = binary.BigEndian.Uint16(p), binary.BigEndian.Uint16(p[2:])
	if rows == 0 || cols == 0 {
		return 0, 0, fmt.Errorf("%w: resize to %dx%d", ErrFrame, rows, cols)
	}
	return rows, cols, nil
}

// Greeting is the first frame of each side. The device's names the sharer (empty for a new
// shell nobody shares) and the terminal; the helper's gives its terminal size.
type Greeting struct {
	Session    string `json:"session,omitempty"`
	Mode       string `json:"mode,omitempty"`        // the mode in force
	Sharer     string `json:"sharer,omitempty"`      // local user name
	SharerName string `json:"sharer_name,omitempty"` // full name (GECOS)
	Terminal   string `json:"terminal,omitempty"`    // "shared" or "new-shell"
	Rows       uint16 `json:"rows,omitempty"`
	Cols       uint16 `json:"cols,omitempty"`
	// Display and XAuthority: the X display a share client offers for screen sessions
	// (`ibcm-client share --screen`, from its environment); share socket only.
	Display    string `json:"display,omitempty"`
	XAuthority string `json:"xauthority,omitempty"`
}

// ModeChange asks for a mode (helper → device, or the sharer's drop to view), or says
// which mode is now in force or that the request was refused (Granted false, Reason).
type ModeChange struct {
	Mode    string `json:"mode"`
	Granted bool   `json:"granted,omitempty"`
	Reason  string `json:"reason,omitempty"` // denied, consent-timeout, not-permitted, …
}

// Ending says why a session or leg ends: an outcome (completed, denied, consent-timeout,
// failed, …) and a message for people.
type Ending struct {
	Outcome string `json:"outcome"`
	Message string `json:"message,omitempty"`
}

// Presence tells who is connected.
type Presence struct {
	Session string `json:"session,omitempty"`
	Mode    string `json:"mode,omitempty"`
	Helpers []Peer `json:"helpers,omitempty"`
	Message string `json:"message,omitempty"`
}

// Peer is one connected helper or viewer.
type Peer struct {
	User         string `json:"user"`
	DisplayName  string `json:"display_name,omitempty"`
	Title        string `json:"title,omitempty"`
	Organization string `json:"organization,omitempty"`
	Role         string `json:"role"` // helper or viewer
	Mode         string `json:"mode,omitempty"`
	// Console: the helper works in the web console (the session ends at the MP, which
	// holds the end-to-end TLS for them).
	Console bool `json:"console,omitempty"`
}

// ConsentPrompt asks the local user to consent (share socket). ID names the question.
type ConsentPrompt struct {
	ID      string `json:"id"`
	Session string `json:"session"`
	Helper  Peer   `json:"helper"`
	Mode    string `json:"mode"`
	Kind    string `json:"kind,omitempty"` // "screen" for a screen session
	Reason  string `json:"reason,omitempty"`
	Timeout int    `json:"timeout_s"`
}

// ConsentAnswer is the local user's answer to ConsentPrompt ID.
type ConsentAnswer struct {
	ID     string `json:"id"`
	Accept bool   `json:"accept"`
}
