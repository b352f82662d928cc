package ca

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/ibcm-project/ibcm/internal/access"
	"github.com/ibcm-project/ibcm/internal/api"
	"github.com/ibcm-project/ibcm/internal/wire"
)

// The users and roles of the admin API (ManageAccess). A user's certificate comes only
// from here: the answer to a new user (or a new login) is a one-use admin-profile token
// bound to the user's name, which `ibcm login` spends on the user's own machine.

// userRoutes adds the routes behind `ibcm user` and `ibcm role`.
//
//	POST   /v1/admin/users                     wire.UserCreateRequest -> wire.UserToken
//	GET    /v1/admin/users
//	GET    /v1/admin/users/{name}
//	POST   /v1/admin/users/{name}/token        a new login token
//	POST   /v1/admin/users/{name}/disable      revokes the user's certificates
//	POST   /v1/admin/users/{name}/enable
//	POST   /v1/admin/users/{name}/assign       wire.AssignRequest
//	POST   /v1/admin/users/{name}/unassign     wire.AssignRequest
//	GET    /v1/admin/roles
//	GET    /v1/admin/roles/{name}
//	POST   /v1/admin/roles                     wire.Role
//	DELETE /v1/admin/roles/{name}
func (c *CA) userRoutes(mux *http.ServeMux, admin func(access.Permission, func(http.ResponseWriter, *http.Request, string) error) http.Handler) {
	mux.Handle("POST /v1/admin/users", admin(access.ManageAccess, c.handleUserCreate))
	mux.Handle("GET /v1/admin/users", admin(access.ManageAccess, func(w http.ResponseWriter, r *http.Request, _ string) error {
		us, err := c.access.Users(r.Context())
		if err != nil {
			return err
		}
		out := make([]wire.User, 0, len(us))
		for _, u := range us {
			wu, err := c.userWire(r.Context(), u)
			if err != nil {
				return err
			}
			out = append(out, wu)
		}
		api.WriteJSON(w, http.StatusOK, out)
		return nil
	}))
	mux.Handle("GET /v1/admin/users/{name}", admin(access.ManageAccess, func(w http.ResponseWriter, r *http.Request, _ string) error {
		return c.writeUser(w, r.Context(), r.PathValue("name"), http.StatusOK)
	}))
	mux.Handle("POST /v1/admin/users/{name}/token", admin(access.ManageAccess, func(w http.ResponseWriter, r *http.Request, by string) error {
		var req struct {
			TTL string `json:"ttl,omitempty"`
		}
		if err := api.DecodeOptional(w, r, &req); err != nil {
			return err
		}
		u, err := c.access.User(r.Context(), r.PathValue("name"))
		if err != nil {
			return accessError(err)
		}
		if u.DisabledAt != nil {
			return api.Errorf(http.StatusConflict, "user_disabled", "user %q is disabled; enable them first", u.Name)
		}
		return c.writeLoginToken(w, r.Context(), u.Name, req.TTL, by, http.StatusOK)
	}))
	mux.Handle("POST /v1/admin/users/{name}/disable", admin(access.ManageAccess, c.handleUserDisable))
	mux.Handle("POST /v1/admin/users/{name}/enable", admin(access.ManageAccess, func(w http.ResponseWriter, r *http.Request, by string) error {
		name := r.PathValue("name")
		if err := c.access.SetDisabled(r.Context(), name, false); err != nil {
			return accessError(err)
		}
		c.log.Info().Str("user", name).Str("admin", by).Msg("user enabled")
		return c.writeUser(w, r.Context(), name, http.StatusOK)
	}))
	mux.Handle("POST /v1/admin/users/{name}/assign", admin(access.ManageAccess, func(w http.ResponseWriter, r *http.Request, by string) error {
		var req wire.AssignRequest
		if err := api.Decode(w, r, &req); err != nil {
			return err
		}
		name := r.PathValue("name")
		if err := c.access.Assign(r.Context(), name, req.Role, req.Scopes, "admin:"+by); err != nil {
			return accessError(err)
		}
		c.log.Info().Str("user", name).Str("role", req.Role).Strs("scopes", req.Scopes).Str("admin", by).Msg("role assigned")
		return c.writeUser(w, r.Context(), name, http.StatusOK)
	}))
	mux.Handle("POST /v1/admin/users/{name}/unassign", admin(access.ManageAccess, func(w http.ResponseWriter, r *http.Request, by string) error {
		var req wire.AssignRequest
		if err := api.Decode(w, r, &req); err != nil {
			return err
		}
		name := r.PathValue("name")
		if err := c.access.Unassign(r.Context(), name, req.Role, req.Scopes); err != nil {
			return accessError(err)
		}
		c.log.Info().Str("user", name).Str("role", req.Role).Strs("scopes", req.Scopes).Str("admin", by).Msg("role unassigned")
		return c.writeUser(w, r.Context(), name, http.StatusOK)
	}))
	mux.Handle("GET /v1/admin/roles", admin(access.ManageAccess, func(w http.ResponseWriter, r *http.Request, _ string) error {
		rs, err := c.access.Roles(r.Context())
		if err != nil {
			return err
		}
		out := make([]wire.Role, 0, len(rs))
		for _, ro := range rs {
			out = append(out, roleWire(ro))
		}
		api.WriteJSON(w, http.StatusOK, out)
		return nil
	}))
	mux.Handle("GET /v1/admin/roles/{name}", admin(access.ManageAccess, func(w http.ResponseWriter, r *http.Request, _ string) error {
		ro, err := c.access.Role(r.Context(), r.PathValue("name"))
		if err != nil {
			return accessError(err)
		}
		api.WriteJSON(w, http.StatusOK, roleWire(ro))
		return nil
	}))
	mux.Handle("POST /v1/admin/roles", admin(access.ManageAccess, func(w http.ResponseWriter, r *http.Request, by string) error {
		var req wire.Role
		if err := api.Decode(w, r, &req); err != nil {
			return err
		}
		var perms access.Set
		for _, p := range req.Permissions {
			pp, err := access.ParsePermission(p)
			if err != nil {
				return api.BadRequest("permissions: %v", err)
			}
			perms |= access.SetOf(pp)
		}
		ro := access.Role{Name: req.Name, Description: req.Description, Permissions: perms}
		if err := c.access.CreateRole(r.Context(), ro); err != nil {
			return accessError(err)
		}
		c.log.Info().Str("role", ro.Name).Str("permissions", perms.String()).Str("admin", by).Msg("role created")
		api.WriteJSON(w, http.StatusCreated, roleWire(ro))
		return nil
	}))
	mux.Handle("DELETE /v1/admin/roles/{name}", admin(access.ManageAccess, func(w http.ResponseWriter, r *http.Request, by string) error {
		name := r.PathValue("name")
		if err := c.access.DeleteRole(r.Context(), name); err != nil {
			return accessError(err)
		}
		c.log.Info().Str("role", name).Str("admin", by).Msg("role deleted")
		api.WriteJSON(w, http.StatusOK, map[string]string{"deleted": name})
		return nil
	}))
}

func (c *CA) handleUserCreate(w http.ResponseWriter, r *http.Request, by string) error {
	var req wire.UserCreateRequest
	if err := api.Decode(w, r, &req); err != nil {
		return err
	}
	if req.Role == "" {
		return api.BadRequest("role is required (see `ibcm role list`)")
	}
	if _, err := c.access.Role(r.Context(), req.Role); err != nil {
		return accessError(err)
	}
	if req.TTL != "" {
		if _, err := parseLoginTTL(req.TTL); err != nil {
			return err
		}
	}
	for _, sc := range req.Scopes { // checked before the user is recorded: no user without their role
		if err := access.ValidScope(sc); err != nil {
			return accessError(err)
		}
	}
	u := access.User{Name: req.Name, DisplayName: req.DisplayName, Title: req.Title, Org: req.Org}
	if err := c.access.AddUser(r.Context(), u, "admin:"+by); err != nil {
		return accessError(err)
	}
	if err := c.access.Assign(r.Context(), u.Name, req.Role, req.Scopes, "admin:"+by); err != nil {
		return accessError(err)
	}
	c.log.Info().Str("user", u.Name).Str("role", req.Role).Strs("scopes", req.Scopes).Str("admin", by).Msg("user added")
	return c.writeLoginToken(w, r.Context(), u.Name, req.TTL, by, http.StatusCreated)
}

// parseLoginTTL reads a login token's lifetime: a Go duration of at most MaxTokenTTL.
func parseLoginTTL(s string) (time.Duration, error) {
	d, err := time.ParseDuration(s)
	if err != nil || d <= 0 || d > MaxTokenTTL {
		return 0, api.BadRequest("ttl %q: must be a duration such as 2h, at most %s", s, MaxTokenTTL)
	}
	return d, nil
}

// writeLoginToken makes a one-use admin-profile token bound to the user's name and
// answers it with the user.
func (c *CA) writeLoginToken(w http.ResponseWriter, ctx context.Context, name, ttl, by string, status int) error {
	var d time.Duration
	if ttl != "" {
		var err error
		if d, err = parseLoginTTL(ttl); err != nil {
			return err
		}
	}
	secret, t, err := c.CreateToken(ctx, TokenSpec{Profile: Admin, Subject: name, Uses: 1, TTL: d}, "admin:"+by)
	if err != nil {
		return httpError(err)
	}
	u, err := c.access.User(ctx, name)
	if err != nil {
		return accessError(err)
	}
	wu, err := c.userWire(ctx, u)
	if err != nil {
		return err
	}
	c.log.Info().Str("user", name).Str("token_id", t.ID).Str("admin", by).Msg("login token created")
	api.WriteJSON(w, status, wire.UserToken{User: wu, Token: secret, ExpiresAt: t.ExpiresAt})
	return nil
}

// handleUserDisable disables a user and revokes every valid certificate of theirs, so
// their connections close at every server of the site; the admin cannot disable
// themselves.
func (c *CA) handleUserDisable(w http.ResponseWriter, r *http.Request, by string) error {
	name := r.PathValue("name")
	if name == by {
		return api.Errorf(http.StatusConflict, "disable_self", "you cannot disable yourself; ask another administrator")
	}
	if err := c.access.SetDisabled(r.Context(), name, true); err != nil {
		return accessError(err)
	}
	// A login token not spent yet would give them a certificate again once enabled. The
	// tokens go first, so the list below finds the certificate of a login that spent one
	// before (a token is consumed in the transaction that records its certificate); only a
	// login still committing can escape both, and Renew refuses a disabled user.
	toks, err := c.ListTokens(r.Context())
	if err != nil {
		return err
	}
	for _, t := range toks {
		if t.Profile == Admin && t.Subject == name && t.RevokedAt == nil && t.UsesLeft > 0 {
			if err := c.RevokeToken(r.Context(), t.ID); err != nil {
				return fmt.Errorf("revoking the login tokens of user %q: %w", name, err)
			}
		}
	}
	recs, err := c.List(r.Context(), Filter{Status: "valid", Profile: Admin})
	if err != nil {
		return err
	}
	revoked := []string{}
	for _, rec := range recs {
		if rec.Cert.Subject.CommonName != name {
			continue
		}
		if _, err := c.RevokeWith(r.Context(), rec.Cert.SerialNumber.String(), "privilegeWithdrawn", true); err != nil && !errors.Is(err, ErrAlreadyRevoked) {
			return fmt.Errorf("revoking the certificates of user %q: %w", name, err)
		}
		revoked = append(revoked, wire.FormatSerial(rec.Cert.SerialNumber))
	}
	c.log.Info().Str("user", name).Strs("revoked", revoked).Str("admin", by).Msg("user disabled")
	u, err := c.access.User(r.Context(), name)
	if err != nil {
		return accessError(err)
	}
	wu, err := c.userWire(r.Context(), u)
	if err != nil {
		return err
	}
	api.WriteJSON(w, http.StatusOK, wire.UserDisabled{User: wu, Revoked: revoked})
	return nil
}

func (c *CA) writeUser(w http.ResponseWriter, ctx context.Context, name string, status int) error {
	u, err := c.access.User(ctx, name)
	if err != nil {
		return accessError(err)
	}
	wu, err := c.userWire(ctx, u)
	if err != nil {
		return err
	}
	api.WriteJSON(w, status, wu)
	return nil
}

func (c *CA) userWire(ctx context.Context, u access.User) (wire.User, error) {
	as, err := c.access.Assignments(ctx, u.Name)
	if err != nil {
		return wire.User{}, err
	}
	g, err := c.access.GrantsFor(ctx, u, as)
	if err != nil {
		return wire.User{}, err
	}
	out := wire.User{Name: u.Name, DisplayName: u.DisplayName, Title: u.Title, Org: u.Org, Disabled: u.DisabledAt != nil,
		DisabledAt: u.DisabledAt, CreatedAt: u.CreatedAt, CreatedBy: u.CreatedBy, Roles: []wire.Assignment{}, Permissions: []string{}}
	for _, a := range as {
		out.Roles = append(out.Roles, wire.Assignment{Role: a.Role, Scope: a.Scope})
	}
	for _, p := range g.Site.List() {
		out.Permissions = append(out.Permissions, string(p))
	}
	return out, nil
}

func roleWire(r access.Role) wire.Role {
	out := wire.Role{Name: r.Name, Description: r.Description, BuiltIn: r.BuiltIn, Permissions: []string{}}
	for _, p := range r.Permissions.List() {
		out.Permissions = append(out.Permissions, string(p))
	}
	return out
}

// accessError maps the access store's outcomes to the API's errors.
func accessError(err error) error {
	for _, e := range []struct {
		target error
		status int
		code   string
	}{
		{access.ErrUnknownUser, http.StatusNotFound, "unknown_user"},
		{access.ErrUnknownRole, http.StatusNotFound, "unknown_role"},
		{access.ErrExists, http.StatusConflict, "exists"},
		{access.ErrBuiltIn, http.StatusConflict, "built_in_role"},
		{access.ErrInUse, http.StatusConflict, "role_in_use"},
		{access.ErrInvalid, http.StatusBadRequest, "bad_request"},
	} {
		if errors.Is(err, e.target) {
			return api.Wrap(err, e.status, e.code, err.Error())
		}
	}
	return err
}
