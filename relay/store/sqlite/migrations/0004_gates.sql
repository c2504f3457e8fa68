-- relay schema, version 4 (SQLite): rate limits and circuit breakers per destination.

-- One row per destination with a rate limit or a circuit breaker, locked by the transactions
-- that claim and complete its deliveries (see relay.store.gate). A table of its own rather than
-- columns of destination_state: PostgreSQL's ingest share-locks those rows, and a claim that
-- takes tokens must not wait for an ingest's commit (or the other way round).
CREATE TABLE destination_gates (
    name           TEXT PRIMARY KEY,
    tokens         REAL,              -- the token bucket at tokens_at; NULL: full
    tokens_at      REAL,
    failures       INTEGER NOT NULL DEFAULT 0,   -- consecutive down-signals
    opened_at      REAL,              -- NULL: the circuit is closed
    open_reason    TEXT,
    probe_interval REAL,
    probe_at       REAL,              -- no probe before this
    probe_id       INTEGER,           -- the delivery out as the probe, until probe_until
    probe_until    REAL,
    updated_at     REAL NOT NULL
);

-- Attempts that failed while the destination's circuit was open: sent (and counted in
-- attempts, which stays the fencing token and the X-Relay-Attempt number) but not charged
-- against max_attempts.
ALTER TABLE deliveries ADD COLUMN held_attempts INTEGER NOT NULL DEFAULT 0;
