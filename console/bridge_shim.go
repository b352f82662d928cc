package console

// Stand-ins for helper A's console core (console.go, handler.go) so that the bridge builds
// and is tested on its own branch. THE LEAD DELETES THIS FILE ON MERGE: A's Console,
// sessionOf, checkOrigin and checkCSRF have these very names and signatures.

import (
	"crypto/subtle"
	"net/http"
	"time"

	"github.com/rs/zerolog"

	"github.com/ibcm-project/ibcm/internal/api"
)

// CookieName is A's.
const CookieName = "__Host-ibcm"

// Console is A's (the fields the bridge uses).
type Console struct {
	backend Backend
	origin  string
	log     zerolog.Logger
	now     func() time.Time
}

// sessionOf is A's cookie check; the stand-in knows no cookie session.
func (c *Console) sessionOf(*http.Request) (user, csrf string, err error) {
	return "", "", api.Errorf(http.StatusUnauthorized, "login_required", "no console session")
}

// checkOrigin is A's: the Origin header must be the console's exactly (required: present).
func (c *Console) checkOrigin(r *http.Request, required bool) error {
	o := r.Header.Values("Origin")
	switch {
	case len(o) == 0 && !required:
		return nil
	case len(o) == 1 && o[0] == c.origin:
		return nil
	}
	return api.Errorf(http.StatusForbidden, "origin", "the request's Origin is not the console's (%s)", c.origin)
}

// checkCSRF is A's.
func checkCSRF(want, got string) error {
	if got == "" || subtle.ConstantTimeCompare([]byte(want), []byte(got)) != 1 {
		return api.Errorf(http.StatusForbidden, "csrf", "missing or wrong CSRF token: reload the page")
	}
	return nil
}
