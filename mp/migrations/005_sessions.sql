-- Remote-control sessions (DESIGN.md §9): the audit of every session, refused ones
-- included, and the tickets of their legs. Times are unix seconds.
CREATE TABLE sessions (
    id            TEXT PRIMARY KEY,
    device_id     TEXT NOT NULL,
    device_name   TEXT NOT NULL DEFAULT '',
    helper        TEXT NOT NULL,
    helper_name   TEXT NOT NULL DEFAULT '',
    helper_serial TEXT NOT NULL DEFAULT '',   -- decimal serial of the helper's certificate
    sharer        TEXT NOT NULL DEFAULT '',
    sharer_name   TEXT NOT NULL DEFAULT '',
    reason        TEXT NOT NULL DEFAULT '',
    state         TEXT NOT NULL,              -- requested, waiting, active, ended
    outcome       TEXT NOT NULL DEFAULT '',
    error         TEXT NOT NULL DEFAULT '',   -- the refusal's code
    mode          TEXT NOT NULL DEFAULT '',
    modes         TEXT NOT NULL DEFAULT '[]', -- JSON of []wire.SessionMode
    location      TEXT NOT NULL DEFAULT '',
    transport     TEXT NOT NULL DEFAULT '',
    e2e           INTEGER NOT NULL DEFAULT 0,
    mp_id         TEXT NOT NULL,              -- the MP that brokered it
    device_mp     TEXT NOT NULL DEFAULT '',   -- the MP that held the device's channel: the relay
    requested_at  BIGINT NOT NULL,
    started_at    BIGINT,
    ended_at      BIGINT,
    bytes_in      BIGINT NOT NULL DEFAULT 0,  -- to the device
    bytes_out     BIGINT NOT NULL DEFAULT 0,  -- from the device
    recorded      INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX sessions_requested_at ON sessions (requested_at);
CREATE INDEX sessions_device ON sessions (device_id);
CREATE INDEX sessions_helper ON sessions (helper);
CREATE INDEX sessions_state ON sessions (state);

-- One ticket per leg (the helper's, each viewer's).
CREATE TABLE session_tickets (
    id            TEXT PRIMARY KEY,
    session_id    TEXT NOT NULL,
    role          TEXT NOT NULL,   -- helper or viewer
    helper        TEXT NOT NULL,
    helper_key    TEXT NOT NULL,   -- hex SHA-256 of the SubjectPublicKeyInfo
    helper_serial TEXT NOT NULL,
    expires_at    BIGINT NOT NULL,
    created_at    BIGINT NOT NULL
);
CREATE INDEX session_tickets_session ON session_tickets (session_id);
CREATE INDEX session_tickets_serial ON session_tickets (helper_serial);

-- Recordings as the device uploaded them: sealed to the site's audit key.
CREATE TABLE session_recordings (
    session_id  TEXT PRIMARY KEY,
    data        BLOB NOT NULL,
    uploaded_at BIGINT NOT NULL
);
