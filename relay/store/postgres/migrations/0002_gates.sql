-- relay schema, version 2 (PostgreSQL): rate limits and circuit breakers per destination, as
-- SQLite's migration 0004.

-- One row per destination with a rate limit or a circuit breaker, locked by the transactions
-- that claim and complete its deliveries (see relay.store.gate). A table of its own rather than
-- columns of destination_state: ingest share-locks those rows until its commit, and a claim
-- that takes tokens must not wait for that (nor ingest for a claim).
CREATE TABLE destination_gates (
    name           text PRIMARY KEY,
    tokens         double precision,   -- the token bucket at tokens_at; NULL: full
    tokens_at      double precision,
    failures       integer NOT NULL DEFAULT 0,   -- consecutive down-signals
    opened_at      double precision,   -- NULL: the circuit is closed
    open_reason    text,
    probe_interval double precision,
    probe_at       double precision,   -- no probe before this
    probe_id       bigint,             -- the delivery out as the probe, until probe_until
    probe_until    double precision,
    updated_at     double precision NOT NULL
);

-- Attempts that failed while the destination's circuit was open: sent (and counted in
-- attempts, which stays the fencing token and the X-Relay-Attempt number) but not charged
-- against max_attempts. A constant default: no table rewrite.
ALTER TABLE deliveries ADD COLUMN held_attempts integer NOT NULL DEFAULT 0;
