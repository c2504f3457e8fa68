-- relay schema, version 3 (PostgreSQL): dead letters that resolve and keep their real error, an
-- audit trail of operator actions, emails found whatever their case, type globs that use an
-- index, replays that can be cancelled. The same changes as SQLite's migration 0005.

-- A dead delivery keeps what its last attempt got in last_error ("HTTP 500: ...", "cannot
-- connect: Connection refused"); why it was given up is dead_reason. Dead deliveries stored
-- before kept the reason in last_error: it moves, and last_error gets their last attempt's.
ALTER TABLE deliveries
    ADD COLUMN dead_reason text,
    ADD COLUMN resolved_at double precision,
    ADD COLUMN resolved_by text,
    ADD COLUMN resolve_reason text;
UPDATE deliveries d
   SET dead_reason = d.last_error,
       last_error = coalesce(
           (SELECT coalesce(a.error, 'HTTP ' || a.status) FROM attempts a
             WHERE a.delivery_id = d.id ORDER BY a.id DESC LIMIT 1),
           d.last_error)
 WHERE d.state = 'dead';

-- A dead delivery is resolved once its event reached the destination by another delivery (a
-- replay, a retry) or an operator resolved it; only unresolved ones are dead letters.
UPDATE deliveries d
   SET resolved_at = s.delivered_at, resolved_by = 'delivery ' || s.id
  FROM (SELECT DISTINCT ON (event_id, destination) event_id, destination, id, delivered_at
          FROM deliveries WHERE state = 'delivered'
         ORDER BY event_id, destination, id) s
 WHERE d.state = 'dead' AND s.event_id = d.event_id AND s.destination = d.destination;
-- The dead letters: counted for metrics every few seconds, listed, replayed, and looked up by
-- (destination, event) when a delivery completes, to resolve them. Resolved ones are history.
CREATE INDEX deliveries_dead ON deliveries(destination, event_id)
    WHERE state = 'dead' AND resolved_at IS NULL;

-- Emails are found whatever their case: by a key with ASCII letters lower-cased, which relay
-- writes with every event. translate(), not lower(): lower() follows the database's locale,
-- and the key must be what relay and SQLite make of the same address.
ALTER TABLE events ADD COLUMN email_key text;
UPDATE events SET email_key = translate(email, 'ABCDEFGHIJKLMNOPQRSTUVWXYZ',
                                        'abcdefghijklmnopqrstuvwxyz')
 WHERE email IS NOT NULL;
DROP INDEX events_email;
CREATE INDEX events_email ON events(email_key, seq) WHERE email_key IS NOT NULL;

-- Type filters take globs (unsub*): their literal prefix is an index range, which needs byte
-- order, as SQLite's BINARY has; the database's own collation may order "unsub-x" elsewhere.
-- Only the index is rebuilt: the values do not change.
ALTER TABLE events ALTER COLUMN type TYPE text COLLATE "C";

-- Who stopped a replay.
ALTER TABLE replays ADD COLUMN cancelled_by text;

-- Who did what, when, from where: pause, resume, prune, replay, cancel, discard, resolve, retry,
-- and config reloads. Kept by pruning, like replays.
CREATE TABLE audit (
    id       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at       double precision NOT NULL,
    operator text NOT NULL,
    action   text NOT NULL,
    target   text,                        -- a destination, delivery or replay id; null for filters
    detail   text NOT NULL,               -- JSON: the parameters and what changed
    peer     text
);
CREATE INDEX audit_action ON audit(action, id);
CREATE INDEX audit_operator ON audit(operator, id);
