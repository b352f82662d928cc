package helper

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"time"

	"github.com/ibcm-project/ibcm/remote/frame"
	"github.com/ibcm-project/ibcm/remote/rfb"
)

// ScreenPort is the helper's local VNC port of a screen session: a listener on loopback
// that takes one connection, which must pass VNC Authentication with the port's one-time
// Password before anything of the device reaches it; then the viewer's RFB goes through
// the session (the device filters it by mode) and the device's comes back.
type ScreenPort struct {
	ln net.Listener
	// Password is the one-time VNC password to give the viewer (8 characters: VNC uses 8).
	Password string
}

// ListenScreen opens the local port on addr ("127.0.0.1:0" for any free port); only
// loopback addresses are accepted.
func ListenScreen(addr string) (*ScreenPort, error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		return nil, fmt.Errorf("the VNC port must be on a loopback address, not %q", host)
	}
	pw, err := rfb.NewPassword(nil)
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	return &ScreenPort{ln: ln, Password: pw}, nil
}

// Addr is the port's address.
func (p *ScreenPort) Addr() *net.TCPAddr { return p.ln.Addr().(*net.TCPAddr) }

// Close closes the listener (Serve closes it itself once a viewer connected).
func (p *ScreenPort) Close() error { return p.ln.Close() }

// viewerHandshakeTimeout bounds a viewer's RFB handshake.
const viewerHandshakeTimeout = time.Minute

// Serve takes one viewer and carries its RFB through s until the viewer, the device or ctx
// ends it. Frames other than screen bytes (mode answers, status, chat) go to onEvent,
// which may be nil. A viewer with the wrong password ends it with rfb.ErrAuth: the port
// takes one attempt. Serve does not end the session; the caller does (s.End).
func (p *ScreenPort) Serve(ctx context.Context, s *Session, onEvent func(Event)) error {
	pr, pw := io.Pipe()
	// Once Serve returns nobody reads the device's screen bytes: they are dropped (the
	// frames goroutine reads on, for the device's End).
	defer pr.Close()
	ended := make(chan error, 1)
	go func() { // the device's frames
		for {
			ev, err := s.Next()
			if err != nil {
				pw.CloseWithError(err)
				ended <- err
				return
			}
			switch ev.Type {
			case frame.Data:
				if _, err := pw.Write(ev.Data); err != nil {
					// the viewer is gone; read on for the device's End
					continue
				}
			case frame.End:
				var err error
				if ev.Ending.Outcome != "completed" {
					err = &EndedError{Outcome: ev.Ending.Outcome, Message: ev.Ending.Message}
				}
				pw.CloseWithError(io.EOF)
				if onEvent != nil {
					onEvent(ev)
				}
				ended <- err
				return
			default:
				if onEvent != nil {
					onEvent(ev)
				}
			}
		}
	}()
	stop := context.AfterFunc(ctx, func() { p.ln.Close() })
	defer stop()
	type accepted struct {
		c   net.Conn
		err error
	}
	acc := make(chan accepted, 1)
	go func() { c, err := p.ln.Accept(); acc <- accepted{c, err} }()
	var conn net.Conn
	select {
	case a := <-acc:
		p.ln.Close() // one connection
		if a.err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return a.err
		}
		conn = a.c
	case err := <-ended:
		p.ln.Close()
		if err == nil {
			err = errors.New("the device ended the session before a viewer connected")
		}
		return err
	}
	defer conn.Close()
	context.AfterFunc(ctx, func() { conn.Close() })
	_ = conn.SetDeadline(time.Now().Add(viewerHandshakeTimeout))
	if _, err := rfb.Accept(conn, p.Password, func() (rfb.ServerInit, error) { return rfb.ReadServerInit(pr) }, nil); err != nil {
		return fmt.Errorf("the viewer's handshake: %w", err)
	}
	_ = conn.SetDeadline(time.Time{})
	toViewer := make(chan error, 1)
	go func() {
		_, err := io.Copy(conn, pr)
		conn.Close()
		toViewer <- err
	}()
	_, err := io.Copy(s, conn) // the viewer's messages; the device filters them
	if err == nil {
		err = io.EOF
	}
	select {
	case e := <-toViewer: // the device's side ended first
		if e == nil {
			return <-ended
		}
		return e
	default:
		return nil // the viewer closed
	}
}
