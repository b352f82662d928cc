-- Renewal is idempotent by key: a certificate has at most one successor (certificates whose
-- renewed_from names it). Finding the successor, and the successors of a certificate revoked
-- for keyCompromise, needs this index.
CREATE INDEX certificates_renewed_from ON certificates (renewed_from);

-- Refused renewals: a certificate that already has a successor was presented again with
-- another new key. Either a copy of the key and certificate renewed first, or the real
-- device did and a copy is trying now: a probable clone either way. One row per renewed
-- certificate, so a flood of attempts costs one row. The MP shows these as warnings of the
-- device (internal/trust reads them).
CREATE TABLE renewal_conflicts (
    old_serial       TEXT PRIMARY KEY,
    device_id        TEXT NOT NULL,   -- '' for a certificate that names no device
    subject          TEXT NOT NULL,
    successor_serial TEXT NOT NULL,
    refused_key      TEXT NOT NULL,   -- SHA-256 of the last refused SubjectPublicKeyInfo, hex
    attempts         BIGINT NOT NULL,
    first_at         BIGINT NOT NULL,
    last_at          BIGINT NOT NULL
);
CREATE INDEX renewal_conflicts_device ON renewal_conflicts (device_id);
