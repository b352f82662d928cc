package ca

import "errors"

// Outcomes callers act on. The CA's HTTP API maps each to its own status and error code
// (see httpError in http.go).
var (
	ErrBadCSR          = errors.New("invalid certificate request")
	ErrWeakKey         = errors.New("key not accepted")
	ErrForbiddenSAN    = errors.New("subject alternative name not allowed by the profile")
	ErrForbiddenUsage  = errors.New("key usage or extension not allowed by the profile")
	ErrBadSubject      = errors.New("invalid subject")
	ErrSubjectMismatch = errors.New("subject does not match the token")
	ErrBadProfile      = errors.New("unknown or unusable profile")
	ErrWrongProfile    = errors.New("token is for another profile")
	ErrTokenInvalid    = errors.New("enrollment token not valid")
	ErrTokenUsed       = errors.New("enrollment token already used")
	ErrTokenExpired    = errors.New("enrollment token expired")
	ErrTokenRevoked    = errors.New("enrollment token revoked")
	ErrNotFound        = errors.New("not found")
	ErrAlreadyRevoked  = errors.New("certificate already revoked")
	ErrBadReason       = errors.New("unknown revocation reason")
	ErrRevoked         = errors.New("certificate revoked")
	ErrExpired         = errors.New("certificate expired")
	// ErrDeviceBlocked means the certificate names a device an admin blocked (the MP's
	// devices table): it is not renewed.
	ErrDeviceBlocked = errors.New("device blocked")
	// ErrDeviceLive refuses a re-enroll token for a device that still has a valid
	// certificate: the new certificate would be a second identity beside it.
	ErrDeviceLive = errors.New("the device still has a valid certificate")
	// ErrUserDisabled refuses to renew an admin certificate whose user is disabled or is
	// no user of the site.
	ErrUserDisabled = errors.New("user disabled")
	// ErrRenewalSuperseded means the certificate was already renewed for another key: a
	// copy of the certificate and its key exists somewhere (see Renew).
	ErrRenewalSuperseded = errors.New("certificate already renewed for another key")
)
