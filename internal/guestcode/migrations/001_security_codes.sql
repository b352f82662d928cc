-- Security codes for unenrolled devices (Remote Help's "get a security code"): a helper's
-- code, stored only as its SHA-256, exchanged once at the CA for a guest certificate of
-- the session it was made for. Times are unix seconds.
CREATE TABLE security_codes (
    id          TEXT PRIMARY KEY,           -- 16 random hex: what logs and audit name (nothing of the code)
    hash        TEXT NOT NULL UNIQUE,       -- hex SHA-256 of the normalised code
    session_id  TEXT NOT NULL,
    helper      TEXT NOT NULL,
    mode        TEXT NOT NULL,
    ticket_id   TEXT NOT NULL,              -- the helper's leg: the guest's relay leg pairs with it
    ticket      TEXT NOT NULL,              -- the signed ticket, handed to the guest with its certificate
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL,
    used_at     BIGINT,
    used_serial TEXT NOT NULL DEFAULT '',   -- decimal serial of the guest certificate
    sharer      TEXT NOT NULL DEFAULT ''    -- the guest certificate's common name
);

-- Every exchange attempt, refused ones included.
CREATE TABLE security_code_attempts (
    at          BIGINT NOT NULL,
    remote_addr TEXT NOT NULL,
    code_id     TEXT NOT NULL DEFAULT '',  -- '' when no code matched
    outcome     TEXT NOT NULL              -- issued, code_invalid, code_expired, code_used, rate_limited
);
CREATE INDEX security_code_attempts_at ON security_code_attempts (at);
