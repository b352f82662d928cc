// Package listener owns how a site role listens: one TCP listener with a connection limit,
// TLS (or parkable TLS for the MP's notification channels), and an http.Server with hardened
// timeouts against slow clients; and load shedding with 503 + Retry-After once too many
// requests are in flight. The site's roles (CA, MP, DP) all listen through it.
package listener

import (
	"crypto/tls"
	"errors"
	"fmt"
	"log"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/rs/zerolog"

	"github.com/ibcm-project/ibcm/internal/api"
	"github.com/ibcm-project/ibcm/internal/tlspark"
)

// SlowClient are the timeouts that cut a client that is slow to shake hands or send its
// request headers, slow to send a body or read an answer, or idle between requests; tests
// shorten them. A hijacked connection (the MP's notification channel) has its own, and a
// role that streams bulk data moves the read and write deadlines along as bytes flow
// (http.ResponseController) instead of bounding the whole request.
var SlowClient = struct{ Header, Read, Write, Idle time.Duration }{
	Header: 10 * time.Second, Read: 30 * time.Second, Write: 30 * time.Second, Idle: 2 * time.Minute,
}

// Server is one listener of a site role.
type Server struct {
	Role, Addr, URL string
	Handler         http.Handler
	TLS             *tls.Config
	Parkable        bool // MP: a notification channel's TLS may be parked (internal/tlspark)
	MaxConns        int
	Configure       func(*http.Server) // optional: the role's own hooks, after the defaults

	Listener net.Listener // set by Listen
	HTTP     *http.Server // set by Listen
}

// Listen opens the listener and makes the http.Server; Serve runs it.
func (s *Server) Listen() error {
	ln, err := net.Listen("tcp", s.Addr)
	if err != nil {
		return fmt.Errorf("%s listener on %s: %w", s.Role, s.Addr, err)
	}
	if s.MaxConns > 0 {
		ln = LimitListener(ln, s.MaxConns)
	}
	switch {
	case s.TLS != nil && s.Parkable:
		ln = tlspark.NewListener(ln, s.TLS)
	case s.TLS != nil:
		ln = tls.NewListener(ln, s.TLS)
	}
	s.Listener = ln
	s.HTTP = &http.Server{
		Handler:           s.Handler,
		ReadHeaderTimeout: SlowClient.Header, // also bounds the TLS handshake
		ReadTimeout:       SlowClient.Read,
		WriteTimeout:      SlowClient.Write,
		IdleTimeout:       SlowClient.Idle,
		MaxHeaderBytes:    16 << 10,
	}
	if s.Configure != nil {
		s.Configure(s.HTTP)
	}
	return nil
}

// Serve serves until the server is shut down (then it returns nil).
func (s *Server) Serve(log zerolog.Logger) error {
	s.HTTP.ErrorLog = StdLog(log)
	err := s.HTTP.Serve(s.Listener)
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// Close closes the listener (of a server that never served).
func (s *Server) Close() {
	if s.Listener != nil {
		_ = s.Listener.Close()
	}
}

// StdLog routes net/http's internal messages (TLS handshake errors and the like) to
// zerolog at debug level: a failed handshake is the client's problem, not the server's.
func StdLog(l zerolog.Logger) *log.Logger {
	return log.New(writerFunc(func(p []byte) (int, error) {
		l.Debug().Msg(strings.TrimSpace(string(p)))
		return len(p), nil
	}), "", 0)
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }

// Shedder bounds the requests served at once; beyond it a request is answered 503 with
// Retry-After at once rather than queued. The zero value and a nil *Shedder never shed.
type Shedder struct{ slots chan struct{} }

// NewShedder allows n requests at once (no limit when n <= 0).
func NewShedder(n int) *Shedder {
	if n <= 0 {
		return &Shedder{}
	}
	return &Shedder{slots: make(chan struct{}, n)}
}

// Acquire takes a slot; ok is false when none is free. release gives it back.
func (s *Shedder) Acquire() (release func(), ok bool) {
	if s == nil || s.slots == nil {
		return func() {}, true
	}
	select {
	case s.slots <- struct{}{}:
		return func() { <-s.slots }, true
	default:
		return nil, false
	}
}

// Overloaded is the error a shed request gets (503 with Retry-After, internal/api).
func Overloaded(who string) error {
	return api.Errorf(http.StatusServiceUnavailable, "overloaded", "%s is busy; retry after the Retry-After seconds", who)
}
