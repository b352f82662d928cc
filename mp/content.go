package mp

import (
	"crypto/x509"
	"encoding/json"
	"errors"
	"net/http"

	"github.com/ibcm-project/ibcm/dp/manifest"
	"github.com/ibcm-project/ibcm/internal/access"
	"github.com/ibcm-project/ibcm/internal/api"
	"github.com/ibcm-project/ibcm/internal/wire"
)

// maxDistributeDPs bounds the DP ids of one distribute request.
const maxDistributeDPs = 256

// contentRoutes adds the routes of distribution points, content and deployments
// (internal/wire/content.go): those of the DPs (dps.go) and the admin API below, which
// needs ManageContent over the whole site (deployments: over their group, deployments.go).
//
//	POST   /v1/admin/content                                 SignedManifest → ContentVersion (201; 200 when the same one exists)
//	GET    /v1/admin/content                                 → []ContentVersion
//	GET    /v1/admin/content/{package}/{version}             → ContentVersion with files and per-DP state
//	DELETE /v1/admin/content/{package}/{version}             204; 409 deployment_uses_content
//	POST   /v1/admin/content/{package}/{version}/distribute  ContentDistribute → ContentVersion
//	GET    /v1/admin/dps                                     → []DPInfo with per-package state
func (m *MP) contentRoutes(mux *http.ServeMux, h func(api.HandlerFunc) http.Handler) {
	m.dpRoutes(mux, h)
	admin := func(fn adminHandler) http.Handler { return m.admin(h, access.ManageContent, fn) }
	mux.Handle("POST /v1/admin/content", admin(m.handleContentAdd))
	mux.Handle("GET /v1/admin/content", admin(func(w http.ResponseWriter, r *http.Request, _ string) error {
		cs, err := m.listContent(r.Context())
		if err != nil {
			return err
		}
		api.WriteJSON(w, http.StatusOK, cs)
		return nil
	}))
	mux.Handle("GET /v1/admin/content/{package}/{version}", admin(func(w http.ResponseWriter, r *http.Request, _ string) error {
		name, version, err := contentPath(r)
		if err != nil {
			return err
		}
		c, err := m.content(r.Context(), name, version)
		if err != nil {
			return err
		}
		api.WriteJSON(w, http.StatusOK, c)
		return nil
	}))
	mux.Handle("DELETE /v1/admin/content/{package}/{version}", admin(func(w http.ResponseWriter, r *http.Request, by string) error {
		name, version, err := contentPath(r)
		if err != nil {
			return err
		}
		if err := m.removeContent(r.Context(), name, version); err != nil {
			return err
		}
		m.log.Info().Str("package", name).Str("version", version).Str("admin", by).Msg("content removed")
		w.WriteHeader(http.StatusNoContent)
		return nil
	}))
	mux.Handle("POST /v1/admin/content/{package}/{version}/distribute", admin(func(w http.ResponseWriter, r *http.Request, by string) error {
		name, version, err := contentPath(r)
		if err != nil {
			return err
		}
		var req wire.ContentDistribute
		if err := api.DecodeOptional(w, r, &req); err != nil {
			return err
		}
		if len(req.DPs) > maxDistributeDPs {
			return api.BadRequest("dps: at most %d", maxDistributeDPs)
		}
		seen := map[string]bool{}
		var dps []string
		for _, id := range req.DPs {
			if !dpIDRE.MatchString(id) {
				return api.BadRequest("dps: %q is not a DP id", truncate(id))
			}
			if !seen[id] {
				seen[id] = true
				dps = append(dps, id)
			}
		}
		if err := m.distribute(r.Context(), name, version, dps); err != nil {
			return err
		}
		m.log.Info().Str("package", name).Str("version", version).Strs("dps", dps).Str("admin", by).Msg("content distributed")
		c, err := m.content(r.Context(), name, version)
		if err != nil {
			return err
		}
		api.WriteJSON(w, http.StatusOK, c)
		return nil
	}))
	mux.Handle("GET /v1/admin/dps", admin(func(w http.ResponseWriter, r *http.Request, _ string) error {
		dps, err := m.listDPs(r.Context(), true)
		if err != nil {
			return err
		}
		api.WriteJSON(w, http.StatusOK, dps)
		return nil
	}))
	m.deploymentRoutes(mux, h)
}

// contentPath reads {package} and {version} of a route.
func contentPath(r *http.Request) (string, string, error) {
	name, version := r.PathValue("package"), r.PathValue("version")
	if !manifest.ValidName(name) {
		return "", "", api.BadRequest("package %q: lowercase letters, digits, '.', '_', '-', up to 64", truncate(name))
	}
	if !manifest.ValidVersion(version) {
		return "", "", api.BadRequest("version %q: letters, digits, '.', '_', '+', '~', '-', up to 64", truncate(version))
	}
	return name, version, nil
}

// manifestTrust is what a manifest must chain to: the site's roots, its content role.
func (m *MP) manifestTrust() manifest.Trust {
	return manifest.Trust{Roots: m.verifier.Anchors.RootPool(), SiteCode: m.siteCode(), Now: m.now,
		Revoked: func(c *x509.Certificate) bool { return m.isRevoked(c.SerialNumber) }}
}

// handleContentAdd registers a package version: a SignedManifest the site's content
// signer signed (checked here against the site's roots and code before anything is stored).
func (m *MP) handleContentAdd(w http.ResponseWriter, r *http.Request, by string) error {
	if m.siteCode() == "" {
		return api.Errorf(http.StatusServiceUnavailable, "no_site_certificate", "this MP has no site-server certificate: it cannot tell its site's content signer")
	}
	sm, _, err := manifest.ReadSigned(http.MaxBytesReader(w, r.Body, manifest.MaxSigned))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return api.Errorf(http.StatusRequestEntityTooLarge, "too_large", "a signed manifest is at most %d bytes", manifest.MaxSigned)
		}
		return api.Wrap(err, http.StatusBadRequest, "invalid_manifest", err.Error())
	}
	man, err := manifest.Verify(sm, m.manifestTrust(), "")
	if err != nil {
		code := "invalid_manifest"
		if errors.Is(err, manifest.ErrSigner) || errors.Is(err, manifest.ErrSignature) {
			code = "manifest_not_signed"
		}
		return api.Wrap(err, http.StatusBadRequest, code, err.Error())
	}
	pin := manifest.Hash(sm.Manifest)
	stored, _ := json.Marshal(sm) // as the DPs will serve it
	created, err := m.addContent(r.Context(), man, stored, pin, by)
	if err != nil {
		return err
	}
	status := http.StatusOK
	if created {
		status = http.StatusCreated
		m.log.Info().Str("package", man.Name).Str("version", man.Version).Str("manifest_sha256", pin).Str("admin", by).Msg("content added")
	}
	c, err := m.content(r.Context(), man.Name, man.Version)
	if err != nil {
		return err
	}
	api.WriteJSON(w, status, c)
	return nil
}
