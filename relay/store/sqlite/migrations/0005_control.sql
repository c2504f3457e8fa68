-- relay schema, version 5 (SQLite): dead letters that resolve and keep their real error, an
-- audit trail of operator actions, emails found whatever their case, replays that can be
-- cancelled. The same changes as PostgreSQL's migration 0003.

-- A dead delivery keeps what its last attempt got in last_error ("HTTP 500: ...", "cannot
-- connect: Connection refused"); why it was given up is dead_reason. Dead deliveries stored
-- before kept the reason in last_error: it moves, and last_error gets their last attempt's.
ALTER TABLE deliveries ADD COLUMN dead_reason TEXT;
UPDATE deliveries
   SET dead_reason = last_error,
       last_error = coalesce(
           (SELECT coalesce(a.error, 'HTTP ' || a.status) FROM attempts a
             WHERE a.delivery_id = deliveries.id ORDER BY a.id DESC LIMIT 1),
           last_error)
 WHERE state = 'dead';

-- A dead delivery is resolved once its event reached the destination by another delivery (a
-- replay, a retry) or an operator resolved it; only unresolved ones are dead letters.
ALTER TABLE deliveries ADD COLUMN resolved_at REAL;
ALTER TABLE deliveries ADD COLUMN resolved_by TEXT;
ALTER TABLE deliveries ADD COLUMN resolve_reason TEXT;
UPDATE deliveries
   SET (resolved_at, resolved_by) = (
           SELECT s.delivered_at, 'delivery ' || s.id FROM deliveries s
            WHERE s.event_id = deliveries.event_id AND s.destination = deliveries.destination
              AND s.state = 'delivered'
            ORDER BY s.id LIMIT 1)
 WHERE state = 'dead' AND EXISTS (
           SELECT 1 FROM deliveries s
            WHERE s.event_id = deliveries.event_id AND s.destination = deliveries.destination
              AND s.state = 'delivered');
-- The dead letters: counted for metrics every few seconds, listed, replayed, and looked up by
-- (destination, event) when a delivery completes, to resolve them. Resolved ones are history.
CREATE INDEX deliveries_dead ON deliveries(destination, event_id)
    WHERE state = 'dead' AND resolved_at IS NULL;

-- Emails are found whatever their case: by a key with ASCII letters lower-cased, which relay
-- writes with every event (SQLite's lower() folds ASCII only, as relay's key does).
ALTER TABLE events ADD COLUMN email_key TEXT;
UPDATE events SET email_key = lower(email) WHERE email IS NOT NULL;
DROP INDEX events_email;
CREATE INDEX events_email ON events(email_key, seq) WHERE email_key IS NOT NULL;

-- Who stopped a replay.
ALTER TABLE replays ADD COLUMN cancelled_by TEXT;

-- Who did what, when, from where: pause, resume, prune, replay, cancel, discard, resolve, retry,
-- and config reloads. Kept by pruning, like replays.
CREATE TABLE audit (
    id       INTEGER PRIMARY KEY,
    at       REAL NOT NULL,
    operator TEXT NOT NULL,
    action   TEXT NOT NULL,
    target   TEXT,                        -- a destination, delivery or replay id; null for filters
    detail   TEXT NOT NULL,               -- JSON: the parameters and what changed
    peer     TEXT
);
CREATE INDEX audit_action ON audit(action, id);
CREATE INDEX audit_operator ON audit(operator, id);
