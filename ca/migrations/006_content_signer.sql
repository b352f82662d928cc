-- The site's content-signer certificates and their keys (DESIGN.md §8): only the CA holds
-- them. key_pem is the private key as an encrypted PKCS#8 PEM block (ca.EncryptKey), under
-- the CA's password like the issuing key. The newest one that is still valid signs.
CREATE TABLE content_signers (
    serial     TEXT PRIMARY KEY,   -- decimal
    der        BLOB NOT NULL,      -- the certificate
    key_pem    BLOB NOT NULL,
    not_after  BIGINT NOT NULL,
    created_at BIGINT NOT NULL
);
