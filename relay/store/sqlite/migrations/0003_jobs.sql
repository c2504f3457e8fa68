-- relay schema, version 3 (SQLite): a commit-ordered events cursor, a dedup index of originals
-- only, replays as resumable jobs, and named leases.

-- Cursors page by commit order. One writer at a time holds the database's write lock, so a
-- position taken inside the writing transaction is commit order, across processes too. rowid
-- order is insertion order so far; an explicit column, because VACUUM may renumber rowids.
ALTER TABLE events ADD COLUMN seq INTEGER;
UPDATE events SET seq = rowid;
CREATE UNIQUE INDEX events_seq ON events(seq);
DROP INDEX events_inbound;
DROP INDEX events_type;
DROP INDEX events_email;
DROP INDEX events_list;
DROP INDEX events_source;
CREATE INDEX events_inbound ON events(inbound, seq);
CREATE INDEX events_type ON events(type, seq);
CREATE INDEX events_email ON events(email, seq) WHERE email IS NOT NULL;
CREATE INDEX events_list ON events(list_id, seq) WHERE list_id IS NOT NULL;
CREATE INDEX events_source ON events(source, seq);

-- Only originals are looked up: a retry storm of one body costs one index probe per request,
-- however many duplicates it has stored.
CREATE TABLE dedup (
    key        TEXT PRIMARY KEY,
    event_id   TEXT NOT NULL,
    first_seen REAL NOT NULL
) WITHOUT ROWID;
INSERT INTO dedup (key, event_id, first_seen)
    SELECT dedup_key, id, received_at FROM events
     WHERE dedup_key IS NOT NULL AND duplicate_of IS NULL
     ORDER BY seq
    ON CONFLICT (key) DO UPDATE SET event_id = excluded.event_id, first_seen = excluded.first_seen;
DROP INDEX events_dedup;

-- A running replay is a job: what it walks, how far it got, and who runs it until when.
ALTER TABLE replays ADD COLUMN spec TEXT;
ALTER TABLE replays ADD COLUMN cursor INTEGER;
ALTER TABLE replays ADD COLUMN owner TEXT;
ALTER TABLE replays ADD COLUMN lease_until REAL;
CREATE INDEX replays_running ON replays(state) WHERE state = 'running';
-- Replays left running by earlier releases recorded no spec to resume from.
UPDATE replays SET state = 'interrupted', finished_at = coalesce(finished_at, requested_at)
 WHERE state = 'running';

-- Work that one process at a time should do (retention pruning), held by whoever renews it.
CREATE TABLE leases (
    name  TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    until REAL NOT NULL
);
