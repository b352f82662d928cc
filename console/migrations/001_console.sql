-- The web console (console/): one-time login links and the cookie sessions they open.
-- Neither secret is stored: only the hex SHA-256 of the link's token and of the cookie.
CREATE TABLE console_links (
    hash       TEXT PRIMARY KEY,   -- hex SHA-256 of the link's token
    user_name  TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    used_at    BIGINT              -- set when it was opened (or revoked): single use
);
CREATE INDEX console_links_user ON console_links (user_name);

CREATE TABLE console_sessions (
    hash       TEXT PRIMARY KEY,   -- hex SHA-256 of the cookie's secret
    user_name  TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    revoked_at BIGINT              -- logout, or the user's sessions revoked
);
CREATE INDEX console_sessions_user ON console_sessions (user_name);
