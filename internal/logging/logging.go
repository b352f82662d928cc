// Package logging owns how every long-running process of ibcm logs: the site's roles
// (`ibcm site up`, `ibcm ca|mp serve`) and the device agent (`ibcm-client run`) build their
// zerolog logger here from --log-level and --log-format, so both write the same fields in
// the same format. JSON is the default; a terminal gets zerolog's console writer unless
// --log-format json asks for JSON.
//
// Field names are shared by every component (STYLE.md habit 6): component, request_id,
// device_id, serial (wire.FormatSerial), session_id, location, duration_ms and, through
// .Err, error. Secrets never reach a log line.
package logging

import (
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/mattn/go-isatty"
	"github.com/rs/zerolog"
)

// Formats for --log-format.
const (
	FormatAuto    = "auto"    // console on a terminal, JSON otherwise
	FormatJSON    = "json"    // one JSON object per line
	FormatConsole = "console" // zerolog's human-readable console writer
)

// Levels names the levels --log-level takes.
const Levels = "debug, info, warn or error"

// Field names shared by the site and the agent.
const (
	FieldComponent  = "component"
	FieldRequestID  = "request_id"
	FieldDeviceID   = "device_id"
	FieldSerial     = "serial"
	FieldSessionID  = "session_id"
	FieldLocation   = "location"
	FieldDurationMS = "duration_ms"
)

// New builds the process logger writing to w (os.Stderr in the daemons). level is one of
// Levels; format is one of the Format constants ("" is auto). Bad values are refused with
// the expected form, so a typo in a unit file does not silently log at another level.
func New(w io.Writer, level, format string) (zerolog.Logger, error) {
	lvl, err := ParseLevel(level)
	if err != nil {
		return zerolog.Nop(), err
	}
	console := false
	switch strings.ToLower(strings.TrimSpace(format)) {
	case "", FormatAuto:
		console = isTerminal(w)
	case FormatJSON:
	case FormatConsole:
		console = true
	default:
		return zerolog.Nop(), fmt.Errorf("--log-format %q: want %s, %s or %s", format, FormatAuto, FormatJSON, FormatConsole)
	}
	if console {
		w = zerolog.ConsoleWriter{Out: w, TimeFormat: time.RFC3339}
	}
	return zerolog.New(w).Level(lvl).With().Timestamp().Logger(), nil
}

// ParseLevel reads a --log-level value.
func ParseLevel(s string) (zerolog.Level, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "debug":
		return zerolog.DebugLevel, nil
	case "", "info":
		return zerolog.InfoLevel, nil
	case "warn", "warning":
		return zerolog.WarnLevel, nil
	case "error":
		return zerolog.ErrorLevel, nil
	}
	return zerolog.NoLevel, fmt.Errorf("--log-level %q: want %s", s, Levels)
}

// Component returns the child logger of one component: every line it writes names it.
func Component(l zerolog.Logger, name string) zerolog.Logger {
	return l.With().Str(FieldComponent, name).Logger()
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && (isatty.IsTerminal(f.Fd()) || isatty.IsCygwinTerminal(f.Fd()))
}
