// Package trust owns what every server role of the site needs to know about the PKI
// without importing the CA: the site's root and issuing certificates as read from the site
// database, the in-memory set of revoked serial numbers (kept current by database
// notifications), and the verification of a peer's certificate chain that TLS handshakes and
// routes use.
//
// The CA writes the tables this package reads (ca_certificates, revoked_certificates,
// renewal_conflicts for the clone warnings of CloneWarnings, and certificates.renewed_from
// for PresentedRenewal, which it matches with the MP's device_certificates) and
// announces every revocation on the RevokedChannel notification channel; servers call
// WatchRevoked once at start and then ask the RevokedSet in every handshake; RevokedSet.OnRevoke
// tells them of each new revocation, so they can end the connections that present it.
package trust
