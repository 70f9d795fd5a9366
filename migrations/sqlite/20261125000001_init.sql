-- Service-account API tokens. Only the SHA-256 of a token is stored.
CREATE TABLE api_tokens (
    id              TEXT PRIMARY KEY,
    token_hash      TEXT NOT NULL UNIQUE,
    display_prefix  TEXT NOT NULL,
    service_account TEXT NOT NULL,
    owner           TEXT NOT NULL,
    roles           TEXT NOT NULL,   -- JSON array of role names
    twins           TEXT NOT NULL,   -- JSON array of twin ids; empty = any twin policy allows
    created_at      INTEGER NOT NULL,
    expires_at      INTEGER NOT NULL,
    revoked_at      INTEGER
);
CREATE INDEX api_tokens_service_account ON api_tokens (service_account);

-- Append-only audit chain: each event carries the hash of the one before it.
CREATE TABLE audit_events (
    seq             INTEGER PRIMARY KEY,
    event_id        TEXT NOT NULL UNIQUE,
    at_ms           INTEGER NOT NULL,
    kind            TEXT NOT NULL,
    outcome         TEXT NOT NULL,
    actor           TEXT,
    actor_pseudonym TEXT,
    route           TEXT,
    action          TEXT,
    policies        TEXT NOT NULL,   -- JSON array of determining policy ids
    detail          TEXT NOT NULL,   -- JSON object
    prev_hash       TEXT NOT NULL,
    hash            TEXT NOT NULL
);

-- The chain must not be edited in place; verification finds what a direct write changes.
CREATE TRIGGER audit_events_no_update BEFORE UPDATE ON audit_events
BEGIN SELECT RAISE(ABORT, 'audit events are append-only'); END;
CREATE TRIGGER audit_events_no_delete BEFORE DELETE ON audit_events
BEGIN SELECT RAISE(ABORT, 'audit events are append-only'); END;
