-- relay schema, version 1 (PostgreSQL). The same tables and meanings as the SQLite schema after
-- its migration 0003, so one store contract holds for both.
-- Times are Unix seconds (double precision), as in SQLite and in relay's own values. Every time
-- that processes must agree on (due times, leases, dedup) comes from relay_now(), the database
-- server's clock: STABLE, so a comparison with it is an index bound.

CREATE FUNCTION relay_now() RETURNS double precision LANGUAGE sql STABLE PARALLEL SAFE
    AS $$ SELECT extract(epoch FROM statement_timestamp())::double precision $$;

CREATE TABLE requests (
    id           text PRIMARY KEY,
    inbound      text NOT NULL,
    method       text NOT NULL,
    path         text NOT NULL,
    query        text NOT NULL,
    headers      text NOT NULL,            -- JSON array of [name, value] pairs, in received order
    body         bytea NOT NULL,           -- exact bytes received
    content_type text NOT NULL,
    peer         text NOT NULL,
    received_at  double precision NOT NULL
);

-- Positions are taken under an advisory lock held until commit (see queries.sql, ingest), so
-- position order is commit order across every process: the events cursor. CACHE 1: cached
-- blocks would hand out values out of order between sessions.
CREATE SEQUENCE events_seq AS bigint CACHE 1;

CREATE TABLE events (
    id                   text PRIMARY KEY,
    seq                  bigint NOT NULL,
    request_id           text NOT NULL REFERENCES requests(id),
    inbound              text NOT NULL,
    source               text NOT NULL,
    type                 text NOT NULL,
    received_at          double precision NOT NULL,
    fired_at             double precision,
    list_id              text,
    email                text,
    parse_error          text,
    dedup_key            text,
    duplicate_of         text,
    payload              bytea,            -- bytes forwarded when not the request body (Mandrill)
    payload_content_type text
);
CREATE UNIQUE INDEX events_seq_key ON events(seq);
CREATE INDEX events_request ON events(request_id);
CREATE INDEX events_inbound ON events(inbound, seq);
CREATE INDEX events_type ON events(type, seq);
CREATE INDEX events_source ON events(source, seq);
CREATE INDEX events_email ON events(email, seq) WHERE email IS NOT NULL;
CREATE INDEX events_list ON events(list_id, seq) WHERE list_id IS NOT NULL;
CREATE INDEX events_received ON events(received_at);

-- Originals only: one primary-key probe per event however many duplicates a key has.
CREATE TABLE dedup (
    key        text PRIMARY KEY,
    event_id   text NOT NULL,
    first_seen double precision NOT NULL
);

CREATE TABLE replays (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    requested_by text NOT NULL,
    requested_at double precision NOT NULL,
    filter       text NOT NULL,            -- JSON, as the operator sent it
    destinations text NOT NULL,            -- JSON array, empty = "the destinations that match today"
    total        integer,
    matched      integer NOT NULL DEFAULT 0,
    created      integer NOT NULL DEFAULT 0,
    state        text NOT NULL DEFAULT 'running',
    finished_at  double precision,
    spec         text,                     -- the filter the job walks (JSON)
    cursor       bigint,                   -- position of the last event walked
    owner        text,
    lease_until  double precision
);
CREATE INDEX replays_running ON replays(state) WHERE state = 'running';

CREATE TABLE deliveries (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id        text NOT NULL REFERENCES events(id),
    destination     text NOT NULL,
    state           text NOT NULL,
    attempts        integer NOT NULL DEFAULT 0,
    -- pending: when the next attempt is due; delivering: when the lease expires (a worker that
    -- died mid-flight leaves the row due again at that time, so one index serves both).
    next_attempt_at double precision,
    created_at      double precision NOT NULL,
    updated_at      double precision NOT NULL,
    delivered_at    double precision,
    last_status     integer,
    last_error      text,
    replay_id       bigint REFERENCES replays(id)
) WITH (fillfactor = 90, autovacuum_vacuum_scale_factor = 0.02,
        autovacuum_analyze_scale_factor = 0.02);
CREATE INDEX deliveries_due ON deliveries(destination, next_attempt_at)
    WHERE state IN ('pending', 'delivering');
CREATE INDEX deliveries_state ON deliveries(state, destination, id);
CREATE INDEX deliveries_event ON deliveries(event_id);
CREATE INDEX deliveries_replay ON deliveries(replay_id, destination, state)
    WHERE replay_id IS NOT NULL;

CREATE TABLE attempts (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    delivery_id   bigint NOT NULL REFERENCES deliveries(id),
    number        integer NOT NULL,
    started_at    double precision NOT NULL,
    duration      double precision NOT NULL,
    outcome       text NOT NULL,
    status        integer,
    error         text,
    response_head bytea
);
CREATE INDEX attempts_delivery ON attempts(delivery_id);

CREATE TABLE destination_state (
    name       text PRIMARY KEY,
    paused     boolean NOT NULL DEFAULT false,
    updated_at double precision NOT NULL
);

CREATE TABLE leases (
    name  text PRIMARY KEY,
    owner text NOT NULL,
    until double precision NOT NULL
);

CREATE TABLE meta (
    key   text PRIMARY KEY,
    value text NOT NULL
);
