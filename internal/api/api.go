// Package api owns the HTTP conventions every HTTPS API of the site shares: strict JSON
// request decoding with a size limit, and the one place where errors become an HTTP status
// and the JSON body {"error": {"code", "message"}}.
package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"

	"github.com/ibcm-project/ibcm/internal/wire"
)

// Error is an error meant for the caller: an HTTP status, a stable code and a message that
// is safe to show. Anything else that reaches WriteError is reported as an internal error
// and its detail stays in the server log.
type Error struct {
	Status  int
	Code    string
	Message string
	Err     error // the cause, for errors.Is; never shown to the caller
}

func (e *Error) Error() string {
	if e.Err != nil {
		return e.Message + ": " + e.Err.Error()
	}
	return e.Message
}

func (e *Error) Unwrap() error { return e.Err }

// Errorf makes an *Error with a formatted message.
func Errorf(status int, code, format string, args ...any) *Error {
	return &Error{Status: status, Code: code, Message: fmt.Sprintf(format, args...)}
}

// Wrap makes an *Error that keeps err as its cause.
func Wrap(err error, status int, code, message string) *Error {
	return &Error{Status: status, Code: code, Message: message, Err: err}
}

// BadRequest is shorthand for a 400 with code "bad_request".
func BadRequest(format string, args ...any) *Error {
	return Errorf(http.StatusBadRequest, "bad_request", format, args...)
}

// Unavailable is the 503 "unavailable" (sent with Retry-After) for a store that cannot be
// reached right now; err stays the cause, for the log.
func Unavailable(err error) *Error {
	return Wrap(err, http.StatusServiceUnavailable, "unavailable", "the site database is unavailable right now; retry later")
}

// ShedWhen returns fn with each error for which unavailable reports true, and that is not
// already an *Error, sent as Unavailable.
func ShedWhen(unavailable func(error) bool, fn HandlerFunc) HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) error {
		err := fn(w, r)
		var e *Error
		if err != nil && !errors.As(err, &e) && unavailable(err) {
			return Unavailable(err)
		}
		return err
	}
}

// StatusOf returns the status WriteError would send for err.
func StatusOf(err error) int {
	var e *Error
	if errors.As(err, &e) {
		return e.Status
	}
	return http.StatusInternalServerError
}

// WriteError sends err as the JSON error body. Errors that are not *Error become a 500
// "internal" with a generic message.
func WriteError(w http.ResponseWriter, err error) {
	body := wire.Error{Error: wire.ErrorDetail{Code: "internal", Message: "internal error"}}
	status := http.StatusInternalServerError
	var e *Error
	if errors.As(err, &e) {
		status, body.Error.Code, body.Error.Message = e.Status, e.Code, e.Message
	}
	if status == http.StatusServiceUnavailable || status == http.StatusTooManyRequests {
		w.Header().Set("Retry-After", "1")
	}
	WriteJSON(w, status, body)
}

// WriteJSON sends v as JSON with the given status.
func WriteJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// Decode reads one JSON object from the request body into v: at most wire.MaxBody bytes,
// unknown fields rejected, nothing after the object. Its errors are *Error (400 or 413).
func Decode(w http.ResponseWriter, r *http.Request, v any) error {
	body := http.MaxBytesReader(w, r.Body, wire.MaxBody)
	return decode(body, v)
}

// DecodeOptional is Decode for a body that may be left out: an empty body leaves v as it
// is; anything else follows Decode's rules.
func DecodeOptional(w http.ResponseWriter, r *http.Request, v any) error {
	b, err := io.ReadAll(http.MaxBytesReader(w, r.Body, wire.MaxBody))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return tooLarge()
		}
		return BadRequest("reading the request body: %v", err)
	}
	if len(bytes.TrimSpace(b)) == 0 {
		return nil
	}
	return decode(bytes.NewReader(b), v)
}

// DecodeBytes applies the same rules as Decode to a byte slice (used by fuzz targets).
func DecodeBytes(b []byte, v any) error {
	if len(b) > wire.MaxBody {
		return tooLarge()
	}
	return decode(bytes.NewReader(b), v)
}

func decode(r io.Reader, v any) error {
	dec := json.NewDecoder(r)
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return tooLarge()
		}
		if errors.Is(err, io.EOF) {
			return BadRequest("request body is empty: a JSON object is required")
		}
		return BadRequest("request body is not valid JSON for this endpoint: %v", err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return tooLarge()
		}
		return BadRequest("request body has data after the JSON object")
	}
	return nil
}

func tooLarge() error {
	return Errorf(http.StatusRequestEntityTooLarge, "too_large", "request body exceeds %d bytes", wire.MaxBody)
}
