-- Distribution points, content and deployments (DESIGN.md §8). Times are unix seconds
-- unless named _ns.

-- The site's DPs, as they registered (POST /v1/dp/register). id is the common name of the
-- DP's certificate; last_seen moves on each request of the DP and while its feed is open.
CREATE TABLE dps (
    id            TEXT PRIMARY KEY,
    mode          TEXT NOT NULL,              -- intranet, internet, both
    intranet_url  TEXT NOT NULL DEFAULT '',
    internet_url  TEXT NOT NULL DEFAULT '',
    priority      INTEGER NOT NULL DEFAULT 0, -- lower preferred
    origin        INTEGER NOT NULL DEFAULT 0,
    pubkey_hash   TEXT NOT NULL,              -- SHA-256 of the SubjectPublicKeyInfo it registered with, hex
    version       TEXT NOT NULL DEFAULT '',
    registered_at BIGINT NOT NULL,
    last_seen     BIGINT NOT NULL
);

-- Package versions: the signed manifest as the CA signed it.
CREATE TABLE content_versions (
    name            TEXT NOT NULL,
    version         TEXT NOT NULL,
    manifest_sha256 TEXT NOT NULL,  -- of the signed manifest bytes: what deployments pin
    signed          BLOB NOT NULL,  -- the wire.SignedManifest JSON
    size            BIGINT NOT NULL,
    created         BIGINT NOT NULL,
    added_by        TEXT NOT NULL,
    PRIMARY KEY (name, version)
);

-- The blobs each package version names: a blob's reference count is the number of
-- package versions that name it.
CREATE TABLE content_files (
    name    TEXT NOT NULL,
    version TEXT NOT NULL,
    sha256  TEXT NOT NULL,
    size    BIGINT NOT NULL,
    PRIMARY KEY (name, version, sha256)
);
CREATE INDEX content_files_sha256 ON content_files (sha256);

-- What is distributed to which DP; dp_id '*' is every DP, those registered later included.
-- (The origin DPs hold every package version without a row.)
CREATE TABLE distributions (
    name    TEXT NOT NULL,
    version TEXT NOT NULL,
    dp_id   TEXT NOT NULL,
    created BIGINT NOT NULL,
    PRIMARY KEY (name, version, dp_id)
);

-- Each DP's state of each package version it was given (POST /v1/dp/state).
CREATE TABLE dp_packages (
    dp_id   TEXT NOT NULL,
    name    TEXT NOT NULL,
    version TEXT NOT NULL,
    state   TEXT NOT NULL,
    percent INTEGER NOT NULL DEFAULT 0,
    error   TEXT NOT NULL DEFAULT '',
    updated BIGINT NOT NULL,
    PRIMARY KEY (dp_id, name, version)
);

CREATE TABLE deployments (
    id              TEXT PRIMARY KEY,
    name            TEXT NOT NULL,
    version         TEXT NOT NULL,
    manifest_sha256 TEXT NOT NULL,
    group_name      TEXT NOT NULL,
    install         INTEGER NOT NULL DEFAULT 0,
    created         BIGINT NOT NULL,
    created_by      TEXT NOT NULL
);
CREATE INDEX deployments_group ON deployments (group_name);
CREATE INDEX deployments_content ON deployments (name, version);

-- Each device's latest state of a deployment, from its status messages (component
-- "deployment"); msg_ns is the message's time, so an older message never overwrites.
CREATE TABLE deployment_devices (
    deployment_id TEXT NOT NULL,
    device_id     TEXT NOT NULL,
    state         TEXT NOT NULL,
    percent       INTEGER NOT NULL DEFAULT 0,
    exit_code     INTEGER,
    dp            TEXT NOT NULL DEFAULT '',
    error         TEXT NOT NULL DEFAULT '',
    msg_ns        BIGINT NOT NULL,
    updated       BIGINT NOT NULL,
    PRIMARY KEY (deployment_id, device_id)
);
