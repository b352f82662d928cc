package helper

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/ibcm-project/ibcm/internal/wire"
	"github.com/ibcm-project/ibcm/remote/frame"
	"github.com/ibcm-project/ibcm/remote/ticket"
)

// helloTimeout bounds the Hello exchange when the context has no deadline.
const helloTimeout = 30 * time.Second

// EndedError is a session the device ended with an outcome other than completed (or that
// it ended before its Hello).
type EndedError struct {
	Outcome string
	Message string
}

func (e *EndedError) Error() string {
	if e.Message == "" {
		return "the device ended the session: " + e.Outcome
	}
	return fmt.Sprintf("the device ended the session: %s (%s)", e.Message, e.Outcome)
}

// Session is the helper's side of the framed conversation inside the end-to-end TLS. Its
// writes may come from several goroutines; Next is for one reader.
type Session struct {
	conn net.Conn
	tls  *tls.Conn // when Connect made it
	r    *frame.Reader
	wmu  sync.Mutex
	// Device is the device's Greeting: the mode in force, the sharer, the terminal.
	Device frame.Greeting
	// Connection says how Connect reached the device (nil for a session made by Open).
	Connection *Connection

	endOnce sync.Once
}

// Open starts the conversation over conn: it sends the helper's Greeting (its terminal
// size) and reads the device's, which must be the first frame.
func Open(ctx context.Context, conn net.Conn, hello frame.Greeting) (*Session, error) {
	deadline, ok := ctx.Deadline()
	if !ok {
		deadline = time.Now().Add(helloTimeout)
	}
	_ = conn.SetDeadline(deadline)
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	s := &Session{conn: conn, r: frame.NewReader(conn)}
	if err := s.write(func(w io.Writer) error { return frame.WriteJSON(w, frame.Hello, hello) }); err != nil {
		return nil, fmt.Errorf("sending the greeting: %w", err)
	}
	f, err := s.r.Next()
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, fmt.Errorf("reading the device's greeting: %w", err)
	}
	switch f.Type {
	case frame.Hello:
		if err := frame.DecodeJSON(f, &s.Device); err != nil {
			return nil, err
		}
	case frame.End:
		var e frame.Ending
		if err := frame.DecodeJSON(f, &e); err != nil {
			return nil, err
		}
		return nil, &EndedError{Outcome: e.Outcome, Message: e.Message}
	default:
		return nil, fmt.Errorf("%w: the device's first frame is %s, want hello", frame.ErrFrame, f.Type)
	}
	if !stop() {
		return nil, ctx.Err()
	}
	_ = conn.SetDeadline(time.Time{})
	return s, nil
}

// Event is one frame from the device. Data is valid until the next call of Next.
type Event struct {
	Type     frame.Type
	Data     []byte           // frame.Data: terminal output
	Text     string           // frame.Chat
	Mode     frame.ModeChange // frame.Mode: a mode granted, refused, or set by the sharer
	Presence frame.Presence   // frame.Status: who is connected
	Ending   frame.Ending     // frame.End: the session ends; nothing follows
	// frame.Resize: the shared terminal's size changed (the sharer resized their window).
	Rows, Cols uint16
}

// Next reads the next event. A Ping is answered with a Pong and not returned. After an End
// event, or at the end of the stream (io.EOF), the conversation is over.
func (s *Session) Next() (Event, error) {
	for {
		f, err := s.r.Next()
		if err != nil {
			return Event{}, err
		}
		ev := Event{Type: f.Type}
		switch f.Type {
		case frame.Data:
			ev.Data = f.Payload
		case frame.Chat:
			ev.Text = string(f.Payload)
		case frame.Mode:
			err = frame.DecodeJSON(f, &ev.Mode)
		case frame.Status:
			err = frame.DecodeJSON(f, &ev.Presence)
		case frame.End:
			err = frame.DecodeJSON(f, &ev.Ending)
		case frame.Resize:
			ev.Rows, ev.Cols, err = frame.ParseResize(f.Payload)
		case frame.Pong:
		case frame.Ping:
			if err := s.write(func(w io.Writer) error { return frame.Write(w, frame.Pong, nil) }); err != nil {
				return Event{}, err
			}
			continue
		default:
			return Event{}, fmt.Errorf("%w: the device sent %s inside a session", frame.ErrFrame, f.Type)
		}
		if err != nil {
			return Event{}, err
		}
		return ev, nil
	}
}

func (s *Session) write(fn func(io.Writer) error) error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	return fn(s.conn)
}

// Write sends terminal input, in Data frames of at most frame.MaxData bytes.
func (s *Session) Write(p []byte) (int, error) {
	n := 0
	for len(p) > 0 {
		chunk := p[:min(len(p), frame.MaxData)]
		if err := s.write(func(w io.Writer) error { return frame.Write(w, frame.Data, chunk) }); err != nil {
			return n, err
		}
		n += len(chunk)
		p = p[len(chunk):]
	}
	return n, nil
}

// Resize tells the device the helper's terminal size.
func (s *Session) Resize(rows, cols uint16) error {
	if rows == 0 || cols == 0 {
		return fmt.Errorf("resize to %dx%d: a dimension is zero", rows, cols)
	}
	return s.write(func(w io.Writer) error { return frame.Write(w, frame.Resize, frame.ResizePayload(rows, cols)) })
}

// ErrChat is a chat message that cannot be sent.
var ErrChat = errors.New("chat message refused")

// Chat sends one chat message (UTF-8, at most frame.MaxChat bytes).
func (s *Session) Chat(text string) error {
	switch {
	case text == "":
		return fmt.Errorf("%w: empty", ErrChat)
	case !utf8.ValidString(text):
		return fmt.Errorf("%w: not UTF-8", ErrChat)
	case len(text) > frame.MaxChat:
		return fmt.Errorf("%w: %d bytes, at most %d", ErrChat, len(text), frame.MaxChat)
	}
	return s.write(func(w io.Writer) error { return frame.Write(w, frame.Chat, []byte(text)) })
}

// RequestMode asks the device for a mode (view, control, elevated, unattended); the answer
// comes back as a Mode event.
func (s *Session) RequestMode(mode string) error {
	if !ticket.ValidMode(mode) {
		return fmt.Errorf("unknown mode %q: want view, control, elevated or unattended", mode)
	}
	return s.write(func(w io.Writer) error { return frame.WriteJSON(w, frame.Mode, frame.ModeChange{Mode: mode}) })
}

// Ping sends a Ping; the device's Pong comes back as an event (keystroke round trips).
func (s *Session) Ping() error {
	return s.write(func(w io.Writer) error { return frame.Write(w, frame.Ping, nil) })
}

// End tells the device the helper ends the session (outcome completed) and closes the
// writing side; read on until the device's End or io.EOF, then Close.
func (s *Session) End(message string) error {
	var err error
	s.endOnce.Do(func() {
		err = s.write(func(w io.Writer) error {
			return frame.WriteJSON(w, frame.End, frame.Ending{Outcome: wire.OutcomeCompleted, Message: message})
		})
		if cw, ok := s.conn.(interface{ CloseWrite() error }); ok && err == nil {
			err = cw.CloseWrite()
		}
	})
	return err
}

// Close closes the connection.
func (s *Session) Close() error { return s.conn.Close() }

// SetReadDeadline bounds the reads of Next.
func (s *Session) SetReadDeadline(t time.Time) error { return s.conn.SetReadDeadline(t) }
