-- relay's PostgreSQL statements, by name (loaded once by relay.store.sqlfile.load_queries).
-- Lists are passed as arrays (= ANY($1), unnest(...)), never as IN (...) of varying length, so
-- each statement's text is fixed and asyncpg prepares it once per connection.

-- name: now
SELECT relay_now();

-- name: ensure_destinations
-- A row per destination that ingest can lock: see lock_destinations.
INSERT INTO destination_state (name, paused, updated_at)
SELECT unnest($1::text[]), false, relay_now()
ON CONFLICT (name) DO NOTHING;

-- name: lock_destinations
-- Shared row locks: a pause (which updates the row) waits for this ingest to commit, then holds
-- the deliveries it made too; an ingest after the pause reads it.
SELECT name, paused FROM destination_state WHERE name = ANY($1::text[]) ORDER BY name FOR SHARE;

-- name: ingest_head
-- An ingest batch before its decisions (relay.store.postgres.ingest; migration 0007).
SELECT kind, name, value
  FROM relay_ingest_head($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                         $7::text[], $8::bytea[], $9::text[], $10::text[], $11::float8[],
                         $12::text[], $13::text[], $14::float8);

-- name: ingest
-- A whole batch with no ordered destination, in one statement (migration 0008).
SELECT kind, name, value
  FROM relay_ingest($1::text[], $2::boolean, $3::text[], $4::text[], $5::text[], $6::text[],
                    $7::text[], $8::text[], $9::bytea[], $10::text[], $11::text[],
                    $12::float8[], $13::text[], $14::text[], $15::float8, $16::int8,
                    $17::text[], $18::int8[], $19::text[], $20::text[], $21::text[],
                    $22::text[], $23::text[], $24::float8[], $25::float8[], $26::text[],
                    $27::text[], $28::text[], $29::text[], $30::bytea[], $31::text[],
                    $32::text[], $33::text[], $34::text[], $35::text);

-- name: ingest_tail
-- The rest of an ingest batch, up to its commit (migration 0007).
SELECT relay_ingest_tail($1::int8, $2::text[], $3::int8[], $4::text[], $5::text[], $6::text[],
                         $7::text[], $8::text[], $9::float8[], $10::float8[], $11::text[],
                         $12::text[], $13::text[], $14::text[], $15::text[], $16::bytea[],
                         $17::text[], $18::text[], $19::text[], $20::int8[], $21::text[],
                         $22::text[], $23::text[], $24::int8[], $25::text, $26::text);

-- name: notify
SELECT pg_notify($1, $2);

-- name: complete
-- Only while the delivery still holds this attempt's lease (attempts is the fencing token). A
-- delivered one resolves the dead letters of its event to its destination in the same
-- statement, so in the same transaction: "replay the dead letters" never sees them again.
-- ($9: each delivery's name as resolved_by.) Every attempt is recorded by the same statement
-- ($10-$17), lease held or not: one statement, so a batch of plain
-- completions needs no transaction around it (relay.store.postgres.writer). The state test is
-- written `IS TRUE` so that it cannot use the state indexes: with statistics taken while a
-- backlog was paused, the planner would scan every delivering row instead of the ids' keys.
WITH recorded AS (
    INSERT INTO attempts (delivery_id, number, started_at, duration, outcome, status, error,
                          response_head)
    SELECT * FROM unnest($10::int8[], $11::int4[], $12::float8[], $13::float8[], $14::text[],
                         $15::int4[], $16::text[], $17::bytea[])
), done AS (
    UPDATE deliveries d
       SET state = u.state, next_attempt_at = u.next_attempt_at, updated_at = u.finished,
           delivered_at = CASE WHEN u.state = 'delivered' THEN u.finished END,
           last_status = u.status, last_error = u.error, dead_reason = u.reason
      FROM unnest($1::int8[], $2::int4[], $3::text[], $4::float8[], $5::float8[], $6::int4[],
                  $7::text[], $8::text[], $9::text[])
           AS u(id, attempt, state, next_attempt_at, finished, status, error, reason, resolver)
     WHERE d.id = u.id AND d.attempts = u.attempt AND (d.state = 'delivering') IS TRUE
    RETURNING d.id, d.event_id, d.destination, d.state, u.finished, u.resolver
), resolved AS (
    UPDATE deliveries x SET resolved_at = done.finished, resolved_by = done.resolver
      FROM done
     WHERE done.state = 'delivered' AND x.destination = done.destination
       AND x.event_id = done.event_id AND x.state = 'dead' AND x.resolved_at IS NULL
)
SELECT id FROM done;

-- name: heartbeat
INSERT INTO meta (key, value) VALUES ('heartbeat:' || $1, relay_now()::text)
ON CONFLICT (key) DO UPDATE SET value = excluded.value;

-- name: claim
-- Due deliveries of one destination, leased for $3 seconds; none while it is paused. SKIP
-- LOCKED: processes claiming at once take different deliveries. A delivering one whose lease ran
-- out is due again (its process died) and is claimed like a pending one.
WITH due AS (
    SELECT id, next_attempt_at AS was_due FROM deliveries
     WHERE destination = $1 AND state IN ('pending', 'delivering')
       AND next_attempt_at <= relay_now()
       AND NOT EXISTS (SELECT 1 FROM destination_state s WHERE s.name = $1 AND s.paused)
     ORDER BY next_attempt_at LIMIT $2
       FOR UPDATE SKIP LOCKED
), claimed AS (
    UPDATE deliveries d
       SET state = 'delivering', attempts = d.attempts + 1,
           next_attempt_at = relay_now() + $3, updated_at = relay_now()
      FROM due WHERE d.id = due.id
    RETURNING d.id, d.event_id, d.destination, d.attempts, d.replay_id, d.created_at, due.was_due,
              d.held_attempts, d.order_key
)
SELECT c.id, c.event_id, c.destination, c.attempts, c.replay_id IS NOT NULL,
       e.inbound, e.source, e.type, e.received_at,
       coalesce(e.payload, r.body), coalesce(e.payload_content_type, r.content_type), e.fired_at,
       c.created_at, relay_now(), e.id IS NULL, c.held_attempts, c.order_key
  FROM claimed c LEFT JOIN events e ON e.id = c.event_id LEFT JOIN requests r ON r.id = e.request_id
 ORDER BY c.was_due, c.id;

-- name: orphaned
UPDATE deliveries SET state = 'dead', next_attempt_at = NULL, updated_at = relay_now(),
       last_error = $2, dead_reason = $2
 WHERE id = ANY($1::int8[])
RETURNING destination, order_key, id;

-- name: due_in
SELECT min(next_attempt_at) - relay_now() FROM deliveries
 WHERE destination = $1 AND state IN ('pending', 'delivering')
   AND NOT EXISTS (SELECT 1 FROM destination_state s WHERE s.name = $1 AND s.paused);

-- name: stats
-- Dead letters are the unresolved dead deliveries, counted from their own partial index.
SELECT state, destination, count(*) FROM deliveries
 WHERE state IN ('pending', 'delivering', 'paused') GROUP BY state, destination
UNION ALL
SELECT 'dead', destination, count(*) FROM deliveries
 WHERE state = 'dead' AND resolved_at IS NULL GROUP BY destination;

-- name: oldest_pending
SELECT created_at FROM deliveries WHERE state = 'pending' AND destination = $1
 ORDER BY id LIMIT 1;

-- name: event
SELECT id, request_id, inbound, source, type, received_at, fired_at, list_id, email, parse_error,
       dedup_key, duplicate_of, seq, payload, payload_content_type
  FROM events WHERE id = $1;

-- name: request
SELECT id, inbound, method, path, query, headers, body, content_type, peer, received_at
  FROM requests WHERE id = $1;

-- name: event_deliveries
SELECT id, event_id, destination, state, attempts, next_attempt_at, created_at, updated_at,
       delivered_at, last_status, last_error, replay_id, dead_reason, resolved_at, resolved_by,
       resolve_reason, after_dead
  FROM deliveries WHERE event_id = $1 ORDER BY id;

-- name: delivery_attempts
SELECT delivery_id, number, started_at, duration, outcome, status, error, response_head
  FROM attempts WHERE delivery_id = ANY($1::int8[]) ORDER BY id;

-- name: paused
SELECT name FROM destination_state WHERE paused;

-- name: set_paused
INSERT INTO destination_state (name, paused, updated_at) VALUES ($1, $2, relay_now())
ON CONFLICT (name) DO UPDATE SET paused = excluded.paused, updated_at = excluded.updated_at;

-- name: hold_pending
-- Only waiting deliveries are held; one in flight finishes its attempt.
UPDATE deliveries SET state = 'paused', updated_at = relay_now()
 WHERE destination = $1 AND state = 'pending';

-- name: release_paused
-- Due now, but in their old order: least() keeps earlier ones first. One waiting behind an
-- earlier delivery of its subscriber (relay.store.ordering) waits on.
UPDATE deliveries SET state = 'pending', updated_at = relay_now(),
       next_attempt_at = CASE WHEN order_key IS NOT NULL AND next_attempt_at IS NULL THEN NULL
                              ELSE least(coalesce(next_attempt_at, relay_now()), relay_now()) END
 WHERE destination = $1 AND state = 'paused';

-- name: try_lease
INSERT INTO leases AS l (name, owner, until) VALUES ($1, $2, relay_now() + $3)
ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, until = excluded.until
 WHERE l.owner = excluded.owner OR l.until < relay_now()
RETURNING name;

-- name: start_replay
INSERT INTO replays (requested_by, requested_at, filter, destinations, total, state, spec, owner,
                     lease_until)
VALUES ($1, relay_now(), $2, $3, $4, 'running', $5, $6,
        CASE WHEN $6::text IS NULL THEN NULL ELSE relay_now() + $7 END)
RETURNING id;

-- name: claim_replay
UPDATE replays r SET owner = $1, lease_until = relay_now() + $2
  FROM (SELECT id FROM replays WHERE state = 'running'
          AND (lease_until IS NULL OR lease_until < relay_now())
         ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED) AS free
 WHERE r.id = free.id
RETURNING r.id, r.requested_by, r.requested_at, r.filter, r.destinations, r.total, r.matched,
          r.created, r.state, r.finished_at, r.spec, r.cursor, r.cancelled_by;

-- name: renew_replay
UPDATE replays SET lease_until = relay_now() + $3
 WHERE id = $1 AND owner = $2 AND state = 'running'
RETURNING id;

-- name: own_replay
SELECT 1 FROM replays WHERE id = $1 AND owner = $2 AND state = 'running' FOR UPDATE;

-- name: insert_replay_deliveries
-- An event pruned since the replay read it gets no delivery (KEY SHARE: a prune that locked it
-- first wins, and it drops out here).
WITH ev AS (
    SELECT id FROM events WHERE id = ANY($1::text[]) FOR KEY SHARE
)
INSERT INTO deliveries (event_id, destination, state, next_attempt_at, created_at, updated_at,
                        replay_id, order_key)
SELECT u.e, u.d, u.s, CASE WHEN u.k IS NULL THEN relay_now() END, relay_now(), relay_now(), $4,
       u.k
  FROM unnest($1::text[], $2::text[], $3::text[], $5::int8[]) WITH ORDINALITY AS u(e, d, s, k, n)
  JOIN ev ON ev.id = u.e
 ORDER BY u.n
RETURNING id, event_id, destination, state;

-- name: event_facts
-- What a replayed event's subscriber queue is made of (relay.store.rules.order_key).
SELECT id, list_id, email FROM events WHERE id = ANY($1::text[]);

-- name: replay_progress
UPDATE replays SET matched = matched + $2, created = created + $3,
       cursor = coalesce($4, cursor)
 WHERE id = $1;

-- name: finish_replay
-- Only a running one: a replay cancelled meanwhile stays cancelled.
UPDATE replays SET state = $2, finished_at = relay_now(), owner = NULL, lease_until = NULL
 WHERE id = $1 AND state = 'running';

-- name: release_replay
UPDATE replays SET owner = NULL, lease_until = NULL WHERE id = $1 AND owner = $2;

-- name: replay
SELECT id, requested_by, requested_at, filter, destinations, total, matched, created, state,
       finished_at, spec, cursor, cancelled_by
  FROM replays WHERE id = $1;

-- name: replay_counts
SELECT destination, state, count(*) FROM deliveries WHERE replay_id = $1
 GROUP BY destination, state ORDER BY destination, state;

-- name: replay_backlog
SELECT count(*) FROM deliveries WHERE replay_id = $1 AND destination = $2
   AND state IN ('pending', 'delivering');

-- name: prune_candidates
-- Old events in position order, locked so that no delivery can be made for them meanwhile (a
-- new delivery's foreign-key check needs a lock this one conflicts with); events whose lock is
-- held (a replay making a delivery for one right now) are skipped this time.
SELECT id, request_id, dedup_key, seq FROM events
 WHERE seq > $1 AND seq < $2 AND received_at < $3
 ORDER BY seq LIMIT $4
   FOR UPDATE SKIP LOCKED;

-- name: count_prunable
-- prune's dry run: prune_candidates' conditions, less the events unfinished_of keeps.
SELECT count(*) FROM events e
 WHERE e.seq < $1 AND e.received_at < $2
   AND NOT EXISTS (SELECT 1 FROM deliveries d
                    WHERE d.event_id = e.id AND d.state IN ('pending', 'delivering', 'paused'));

-- name: unfinished_of
SELECT DISTINCT event_id FROM deliveries
 WHERE event_id = ANY($1::text[]) AND state IN ('pending', 'delivering', 'paused');

-- name: prune_attempts
DELETE FROM attempts a USING deliveries d
 WHERE a.delivery_id = d.id AND d.event_id = ANY($1::text[]);

-- name: prune_deliveries
DELETE FROM deliveries WHERE event_id = ANY($1::text[]);

-- name: prune_dedup
DELETE FROM dedup WHERE key = ANY($1::text[]) AND event_id = ANY($2::text[]);

-- name: prune_events
DELETE FROM events WHERE id = ANY($1::text[]);

-- name: prune_requests
DELETE FROM requests r WHERE r.id = ANY($1::text[])
   AND NOT EXISTS (SELECT 1 FROM events e WHERE e.request_id = r.id)
RETURNING r.inbound, octet_length(r.body) + octet_length(r.headers);

-- name: add_usage
-- Bytes stored per inbound (a negative amount when pruning), in inbound order: batches that
-- touch the same inbounds lock their rows in one order.
INSERT INTO inbound_usage AS u (inbound, bytes)
SELECT i, b FROM unnest($1::text[], $2::int8[]) AS x(i, b) ORDER BY i
ON CONFLICT (inbound) DO UPDATE SET bytes = u.bytes + excluded.bytes;

-- name: inbound_usage
SELECT inbound, bytes FROM inbound_usage;

-- name: position_before
-- A position every event received before $1 is below (see relay.store.filters).
SELECT coalesce((SELECT seq FROM events WHERE received_at >= $1 ORDER BY received_at LIMIT 1),
                9223372036854775807);

-- name: database_size
SELECT pg_database_size(current_database());

-- name: lock_gate
-- A destination's rate limit and circuit (relay.store.gate), locked to the end of the claiming
-- transaction, so every process takes from one bucket; with the pause flag and the clock.
SELECT tokens, tokens_at, failures, opened_at, open_reason, probe_interval, probe_at, probe_id,
       probe_until, relay_now(),
       EXISTS (SELECT 1 FROM destination_state s WHERE s.name = $1 AND s.paused)
  FROM destination_gates WHERE name = $1
   FOR UPDATE;

-- name: ensure_gate
INSERT INTO destination_gates (name, updated_at) VALUES ($1, relay_now())
ON CONFLICT (name) DO NOTHING;

-- name: lock_gates
-- Several destinations' gates (completes), in name order: two transactions locking some of the
-- same ones wait for each other instead of deadlocking.
SELECT name, tokens, tokens_at, failures, opened_at, open_reason, probe_interval, probe_at,
       probe_id, probe_until, relay_now()
  FROM destination_gates WHERE name = ANY($1::text[])
 ORDER BY name
   FOR UPDATE;

-- name: save_gate
INSERT INTO destination_gates AS g (name, tokens, tokens_at, failures, opened_at, open_reason,
                                    probe_interval, probe_at, probe_id, probe_until, updated_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, relay_now())
ON CONFLICT (name) DO UPDATE
   SET tokens = excluded.tokens, tokens_at = excluded.tokens_at, failures = excluded.failures,
       opened_at = excluded.opened_at, open_reason = excluded.open_reason,
       probe_interval = excluded.probe_interval, probe_at = excluded.probe_at,
       probe_id = excluded.probe_id, probe_until = excluded.probe_until,
       updated_at = excluded.updated_at;

-- name: gate_states
SELECT name, tokens, tokens_at, failures, opened_at, open_reason, probe_interval, probe_at,
       probe_id, probe_until
  FROM destination_gates;

-- name: expire_claimed
-- Claimed through a gate but past max_age: dead without an attempt (the claim's count is
-- taken back).
UPDATE deliveries SET state = 'dead', attempts = attempts - 1, next_attempt_at = NULL,
       updated_at = relay_now(), last_error = $2, dead_reason = $2
 WHERE id = ANY($1::int8[])
RETURNING destination, order_key, id;

-- name: hold_attempts
-- Attempts not charged against max_attempts (they failed while the circuit was open); only
-- while the delivery still holds that attempt's lease.
UPDATE deliveries d SET held_attempts = d.held_attempts + 1
  FROM unnest($1::int8[], $2::int4[]) AS u(id, attempt)
 WHERE d.id = u.id AND d.attempts = u.attempt;

-- name: delivery
SELECT id, event_id, destination, state, attempts, next_attempt_at, created_at, updated_at,
       delivered_at, last_status, last_error, replay_id, dead_reason, resolved_at, resolved_by,
       resolve_reason, after_dead
  FROM deliveries WHERE id = $1;

-- name: retry_delivery
-- Due now (never later than it was), by whichever process claims it first.
-- One waiting behind an earlier delivery of its subscriber has no due time, and keeps waiting.
UPDATE deliveries SET next_attempt_at = least(next_attempt_at, relay_now()),
       updated_at = relay_now()
 WHERE id = $1 AND state = 'pending' AND next_attempt_at IS NOT NULL
RETURNING destination;

-- name: resolve_delivery
UPDATE deliveries SET resolved_at = relay_now(), resolved_by = $2, resolve_reason = $3
 WHERE id = $1 AND state = 'dead' AND resolved_at IS NULL
RETURNING id;

-- name: discard_ids
-- The states again: a delivery claimed since it was selected is in flight and keeps going.
UPDATE deliveries SET state = 'discarded', next_attempt_at = NULL, updated_at = relay_now()
 WHERE id = ANY($1::int8[]) AND state = ANY($2::text[])
RETURNING destination, order_key, id;

-- name: replay_state
SELECT state FROM replays WHERE id = $1;

-- name: list_replays
SELECT id, requested_by, requested_at, filter, destinations, total, matched, created, state,
       finished_at, spec, cursor, cancelled_by
  FROM replays WHERE id < $1 ORDER BY id DESC LIMIT $2;

-- name: cancel_replay
UPDATE replays SET state = 'cancelled', finished_at = relay_now(), cancelled_by = $2,
       owner = NULL, lease_until = NULL
 WHERE id = $1 AND state = 'running'
RETURNING id;

-- name: record_audit
INSERT INTO audit (at, operator, action, target, detail, peer)
VALUES (relay_now(), $1, $2, $3, $4, $5)
RETURNING id;

-- name: list_audit
-- Unset filters ($3, $4 null) match everything.
SELECT id, at, operator, action, target, detail, peer FROM audit
 WHERE id < $1 AND ($3::text IS NULL OR action = $3) AND ($4::text IS NULL OR operator = $4)
 ORDER BY id DESC LIMIT $2;

-- name: lock_queues
-- Subscriber queues (relay.store.ordering), locked to the end of the transaction, in one order
-- (no deadlocks between batches): whoever adds to a queue or finishes its head holds its row,
-- so each reads what the others committed. A row exists while its queue may be unfinished.
INSERT INTO order_queues AS q (destination, key)
SELECT d, k FROM unnest($1::text[], $2::int8[]) AS u(d, k) ORDER BY d, k
ON CONFLICT (destination, key) DO UPDATE SET key = q.key;

-- name: queue_heads
-- Each queue's head: its earliest unfinished delivery, and whether it still waits (none: the
-- queue is empty).
SELECT u.d, u.k, h.id, h.next_attempt_at IS NULL
  FROM unnest($1::text[], $2::int8[]) AS u(d, k)
  LEFT JOIN LATERAL (
      SELECT id, next_attempt_at FROM deliveries
       WHERE destination = u.d AND order_key = u.k
         AND state IN ('pending', 'delivering', 'paused')
       ORDER BY id LIMIT 1) AS h ON true;

-- name: release_heads
-- Waiting heads due now; $2: the dead delivery each went after, if any.
UPDATE deliveries d SET next_attempt_at = relay_now(), after_dead = u.after
  FROM unnest($1::int8[], $2::int8[]) AS u(id, after)
 WHERE d.id = u.id AND d.next_attempt_at IS NULL;

-- name: drop_queues
DELETE FROM order_queues q USING unnest($1::text[], $2::int8[]) AS u(d, k)
 WHERE q.destination = u.d AND q.key = u.k;
