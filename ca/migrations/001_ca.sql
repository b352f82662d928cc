-- The CA's tables. Times are unix seconds; serial numbers are decimal strings.

-- The site's CA certificates (public): roots and issuing CAs.
CREATE TABLE ca_certificates (
    id         TEXT PRIMARY KEY,   -- IssuerID: hex of the first 8 bytes of the subject key id
    kind       TEXT NOT NULL,      -- root | issuing
    der        BLOB NOT NULL,
    not_after  BIGINT NOT NULL,
    created_at BIGINT NOT NULL
);

-- Every certificate the CA issued.
CREATE TABLE certificates (
    serial       TEXT PRIMARY KEY,
    profile      TEXT NOT NULL,
    subject      TEXT NOT NULL,
    issuer_id    TEXT NOT NULL,
    not_before   BIGINT NOT NULL,
    not_after    BIGINT NOT NULL,
    der          BLOB NOT NULL,
    issued_by    TEXT NOT NULL,     -- token:<id>, admin:<name>, renew:<old serial>, site-init, ca
    renewed_from TEXT,
    created_at   BIGINT NOT NULL
);
CREATE INDEX certificates_profile ON certificates (profile);
CREATE INDEX certificates_not_after ON certificates (not_after);

CREATE TABLE revoked_certificates (
    serial      TEXT PRIMARY KEY,
    reason_code INTEGER NOT NULL,
    reason      TEXT NOT NULL,
    revoked_at  BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL
);

-- The current CRL of each issuing CA.
CREATE TABLE crls (
    issuer_id   TEXT PRIMARY KEY,
    number      BIGINT NOT NULL,
    this_update BIGINT NOT NULL,
    next_update BIGINT NOT NULL,
    duration_s  BIGINT NOT NULL,
    der         BLOB NOT NULL
);

-- One-time and bulk enrollment tokens; only the SHA-256 of the secret is kept.
CREATE TABLE enrollment_tokens (
    id         TEXT PRIMARY KEY,
    hash       TEXT NOT NULL UNIQUE,
    profile    TEXT NOT NULL,
    subject    TEXT NOT NULL,
    uses       INTEGER NOT NULL,
    uses_left  INTEGER NOT NULL,
    expires_at BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    created_by TEXT NOT NULL,
    revoked_at BIGINT
);
