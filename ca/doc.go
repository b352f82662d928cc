// Package ca owns the site's built-in certificate authority: the root and issuing CA
// hierarchy, the certificate profiles (client, site-server, admin, ocsp, content-signer, guest) and the rules that
// keep a request inside its profile, one-time enrollment tokens, issuance, renewal and
// revocation through smallstep's embedded authority, the CRL and the OCSP responder, and
// the CA's two HTTP listeners (the HTTPS enrollment + admin API and the plain-HTTP public
// listener for CRL, OCSP and CA certificates). It holds the site's content signer, whose
// key never leaves it, and signs the manifests of content with it (content.go).
//
// Its tables (ca_certificates, certificates, revoked_certificates, crls,
// enrollment_tokens, content_signers; security_codes through internal/guestcode) live in the site database; store.go holds all of their SQL and
// implements smallstep's database interfaces over them, so certificates, revocations and
// CRLs live in our own tables on SQLite or PostgreSQL.
//
// Usage:
//
//	h, _ := ca.NewHierarchy("ABC", ca.P256, time.Now(), rand.Reader)
//	authority, _ := ca.New(ctx, db, ca.Options{Hierarchy: h, SiteCode: "ABC", PublicURL: "http://ca.example:8080"})
//	chain, _ := authority.Enroll(ctx, secret, "client", csrPEM)
package ca
