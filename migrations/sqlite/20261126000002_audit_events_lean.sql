-- A leaner audit row: the gateway appends one per request, so every byte and index costs
-- throughput. `prev_hash` repeated the previous row's `hash` (readers take it from there),
-- and the unique index on `event_id` was a second B-tree written per event; decision ids
-- are UUIDv7 (time-ordered, random-suffixed) and the chain already covers every row.
CREATE TABLE audit_events_lean (
    seq             INTEGER PRIMARY KEY,
    event_id        TEXT NOT NULL,
    at_ms           INTEGER NOT NULL,
    kind            TEXT NOT NULL,
    outcome         TEXT NOT NULL,
    actor           TEXT,
    actor_pseudonym TEXT,
    route           TEXT,
    action          TEXT,
    policies        TEXT NOT NULL,   -- JSON array of determining policy ids
    detail          TEXT NOT NULL,   -- JSON object
    hash            TEXT NOT NULL    -- SHA-256 over the previous row's hash, seq and the event
);
INSERT INTO audit_events_lean (seq, event_id, at_ms, kind, outcome, actor, actor_pseudonym, route, action, policies, detail, hash)
    SELECT seq, event_id, at_ms, kind, outcome, actor, actor_pseudonym, route, action, policies, detail, hash
    FROM audit_events;
-- Dropping a table fires no DELETE trigger; its own triggers go with it.
DROP TABLE audit_events;
ALTER TABLE audit_events_lean RENAME TO audit_events;

CREATE TRIGGER audit_events_no_update BEFORE UPDATE ON audit_events
BEGIN SELECT RAISE(ABORT, 'audit events are append-only'); END;
CREATE TRIGGER audit_events_no_delete BEFORE DELETE ON audit_events
BEGIN SELECT RAISE(ABORT, 'audit events are append-only'); END;
