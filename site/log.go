package site

import (
	"log"
	"strings"

	"github.com/rs/zerolog"
)

// newStdLog routes net/http's internal messages (TLS handshake errors and the like) to
// zerolog at debug level: a failed handshake is the client's problem, not the server's.
func newStdLog(l zerolog.Logger) *log.Logger {
	return log.New(writerFunc(func(p []byte) (int, error) {
		l.Debug().Msg(strings.TrimSpace(string(p)))
		return len(p), nil
	}), "", 0)
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }
