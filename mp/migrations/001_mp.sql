-- The management point's tables. Times are unix seconds.

-- Devices, registered on first contact from their client certificate.
CREATE TABLE devices (
    id            TEXT PRIMARY KEY,         -- the device id of the certificate's urn:ibcm:device URI
    name          TEXT NOT NULL,
    fqdn          TEXT NOT NULL DEFAULT '',
    os            TEXT NOT NULL DEFAULT '',
    agent_version TEXT NOT NULL DEFAULT '',
    cert_serial   TEXT NOT NULL,            -- the certificate last seen (decimal)
    pubkey_hash   TEXT NOT NULL,            -- SHA-256 of its SubjectPublicKeyInfo, hex
    hardware_id   TEXT NOT NULL DEFAULT '',
    first_seen    BIGINT NOT NULL,
    last_seen     BIGINT NOT NULL,
    last_location TEXT NOT NULL DEFAULT '',
    addresses     TEXT NOT NULL DEFAULT '', -- comma-separated
    compliance    TEXT NOT NULL DEFAULT 'unknown',
    blocked_at    BIGINT,
    warnings      TEXT NOT NULL DEFAULT ''  -- newline-separated, newest last
);
CREATE INDEX devices_hardware_id ON devices (hardware_id);

-- Every certificate a device presented: blocking revokes them all.
CREATE TABLE device_certificates (
    device_id  TEXT NOT NULL,
    serial     TEXT NOT NULL,
    first_seen BIGINT NOT NULL,
    PRIMARY KEY (device_id, serial)
);

CREATE TABLE device_groups (
    name       TEXT PRIMARY KEY,
    policy     TEXT NOT NULL DEFAULT '',
    priority   INTEGER NOT NULL DEFAULT 100,
    created_at BIGINT NOT NULL
);

CREATE TABLE group_members (
    group_name TEXT NOT NULL REFERENCES device_groups (name) ON DELETE CASCADE,
    device_id  TEXT NOT NULL,
    PRIMARY KEY (group_name, device_id)
);

-- Named policy documents (JSON of wire.Policy); "default" always exists.
CREATE TABLE policies (
    name       TEXT PRIMARY KEY,
    version    INTEGER NOT NULL,
    document   TEXT NOT NULL,
    updated_at BIGINT NOT NULL,
    updated_by TEXT NOT NULL
);

-- Status messages; a message id is stored once per device, however often it is sent.
CREATE TABLE status_messages (
    device_id   TEXT NOT NULL,
    id          TEXT NOT NULL,
    time        BIGINT NOT NULL,
    severity    TEXT NOT NULL,
    component   TEXT NOT NULL,
    text        TEXT NOT NULL,
    fields      TEXT NOT NULL,
    received_at BIGINT NOT NULL,
    PRIMARY KEY (device_id, id)
);

-- The site's management points, for GET /v1/locate.
CREATE TABLE management_points (
    id           TEXT PRIMARY KEY,
    mode         TEXT NOT NULL,
    intranet_url TEXT NOT NULL,
    internet_url TEXT NOT NULL,
    last_seen    BIGINT NOT NULL
);

-- Live notification channels, across every MP (clone detection, device show).
CREATE TABLE notify_connections (
    conn_id   TEXT PRIMARY KEY,
    device_id TEXT NOT NULL,
    mp_id     TEXT NOT NULL,
    remote_ip TEXT NOT NULL,
    since     BIGINT NOT NULL
);
CREATE INDEX notify_connections_device ON notify_connections (device_id);
