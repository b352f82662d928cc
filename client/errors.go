package client

import (
	"errors"
	"fmt"
	"strings"
)

// Outcomes callers act on.
var (
	// ErrNotEnrolled means the state directory holds no identity: enroll first.
	ErrNotEnrolled = errors.New("not enrolled")
	// ErrAlreadyEnrolled means Enroll found an identity and was not told to replace it.
	ErrAlreadyEnrolled = errors.New("already enrolled")
	// ErrPinMismatch means the CA's TLS chain does not contain the pinned root.
	ErrPinMismatch = errors.New("the CA did not present the pinned root certificate")
	// ErrKeyPermissions means key.pem can be read or written by group or others.
	ErrKeyPermissions = errors.New("private key file is accessible by group or others")
	// ErrDirPermissions means the state directory is open to group or others, or is not
	// the effective user's.
	ErrDirPermissions = errors.New("the state directory is not private to its owner")
)

// ServerError is an error answer of the CA or of an MP: the HTTP status and the JSON body
// {"error": {"code", "message"}}. Code is a stable machine code such as token_used,
// token_expired, certificate_revoked or certificate_expired.
type ServerError struct {
	Status  int
	Code    string
	Message string
	Server  string // who answered, for the message: "the management point"; "" is the CA
}

// ManagementPoint is the Server of an MP's answer.
const ManagementPoint = "the management point"

func (e *ServerError) Error() string {
	code := e.Code
	if code == "" {
		code = "no error code"
	}
	who := e.Server
	if who == "" {
		who = "the CA"
	}
	return fmt.Sprintf("%s refused the request (HTTP %d, %s): %s", who, e.Status, code, e.Message)
}

// PinError says which root was expected and what the CA presented instead.
type PinError struct {
	Host      string
	Expected  string   // colon-separated upper-case hex SHA-256
	Presented []string // "CN=...: <sha256>" for every certificate the server presented
}

func (e *PinError) Error() string {
	return fmt.Sprintf("%s presented no certificate with SHA-256 %s (the pinned root); it presented: %s",
		e.Host, e.Expected, strings.Join(e.Presented, "; "))
}

// Unwrap lets errors.Is(err, ErrPinMismatch) match.
func (e *PinError) Unwrap() error { return ErrPinMismatch }
