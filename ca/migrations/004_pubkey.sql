-- keyCompromise revokes every certificate of the compromised key (a renewal may keep its
-- key, so one key can have several certificates): SHA-256 of the SubjectPublicKeyInfo,
-- hex, as renewal_conflicts.refused_key and devices.pubkey_hash write it. SQL cannot read
-- it out of the DER, so rows recorded before this migration (or by an older CA server of
-- a PostgreSQL site) are filled in Go (fillKeyHashes, at start and before every
-- keyCompromise revocation).
ALTER TABLE certificates ADD COLUMN spki_sha256 TEXT;
CREATE INDEX certificates_spki ON certificates (spki_sha256);
