-- relay schema, version 7 (PostgreSQL): an ingest batch in two calls instead of ten statements.
-- The writer's statements wait on the event loop between round trips, and under load each wait
-- is a loop turn of request handling: a group commit of ten statements took 26 ms, and ingest
-- was bound by that, not by the database or the CPU. These functions run the same statements,
-- in the same order and with the same locks, on the server; the decisions between the two calls
-- (duplicates, paused or pending, subscriber queues) stay in relay.store.rules, in Python.

-- Before the decisions: share-lock the destinations' rows (a pause waits for this ingest to
-- commit), store the raw requests, claim the dedup keys whose original is new or older than
-- the window, and read each key's original. Rows: ('d', destination, 'true'|'false' paused),
-- ('k', dedup key, the original's event id).
CREATE FUNCTION relay_ingest_head(
    names text[],
    r_id text[], r_inbound text[], r_method text[], r_path text[], r_query text[],
    r_headers text[], r_body bytea[], r_content_type text[], r_peer text[],
    r_received_at float8[],
    keys text[], key_events text[], dedup_window float8
) RETURNS TABLE (kind text, name text, value text) LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    taken int;
BEGIN
    RETURN QUERY
        SELECT 'd', s.name, s.paused::text FROM destination_state s
         WHERE s.name = ANY(names) ORDER BY s.name FOR SHARE;
    INSERT INTO requests (id, inbound, method, path, query, headers, body, content_type, peer,
                          received_at)
    SELECT * FROM unnest(r_id, r_inbound, r_method, r_path, r_query, r_headers, r_body,
                         r_content_type, r_peer, r_received_at);
    IF cardinality(keys) > 0 THEN
        -- A key another transaction is inserting waits for it to commit, then is not taken;
        -- only then (rarely) are originals read, by a later statement that sees that commit.
        RETURN QUERY
            WITH won AS (
                INSERT INTO dedup AS d (key, event_id, first_seen)
                SELECT k, e, relay_now() FROM unnest(keys, key_events) AS u(k, e) ORDER BY k
                ON CONFLICT (key) DO UPDATE SET event_id = excluded.event_id,
                                                first_seen = excluded.first_seen
                 WHERE d.first_seen < excluded.first_seen - dedup_window
                RETURNING d.key, d.event_id)
            SELECT 'k', won.key, won.event_id FROM won;
        GET DIAGNOSTICS taken = ROW_COUNT;
        IF taken < cardinality(keys) THEN
            RETURN QUERY
                SELECT 'k', d.key, d.event_id FROM unnest(keys) AS u(k)
                  JOIN dedup d ON d.key = u.k
                 WHERE d.event_id <> ALL(key_events);
        END IF;
    END IF;
END $$;

-- After the decisions, to commit: positions in commit order (the advisory lock is held until
-- commit, so one ingest at a time across every process from here), bytes per inbound, the
-- events with consecutive positions, the subscriber queues locked before their deliveries get
-- ids, the deliveries in the order given, and the wake-up (note null: none).
CREATE FUNCTION relay_ingest_tail(
    positions_lock bigint, inbounds text[], usage int8[],
    e_id text[], e_request_id text[], e_inbound text[], e_source text[], e_type text[],
    e_received_at float8[], e_fired_at float8[], e_list_id text[], e_email text[],
    e_parse_error text[], e_dedup_key text[], e_duplicate_of text[], e_payload bytea[],
    e_payload_content_type text[], e_email_key text[],
    q_destination text[], q_key int8[],
    d_event_id text[], d_destination text[], d_state text[], d_order_key int8[],
    channel text, note text
) RETURNS void LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    how_many int := cardinality(e_id);
    first_seq int8;
BEGIN
    PERFORM pg_advisory_xact_lock(positions_lock);
    INSERT INTO inbound_usage AS u (inbound, bytes)
    SELECT i, b FROM unnest(inbounds, usage) AS x(i, b) ORDER BY i
    ON CONFLICT (inbound) DO UPDATE SET bytes = u.bytes + excluded.bytes;
    IF how_many > 0 THEN
        first_seq := setval('events_seq', nextval('events_seq') + how_many - 1) - how_many + 1;
        INSERT INTO events (id, request_id, inbound, source, type, received_at, fired_at,
                            list_id, email, parse_error, dedup_key, duplicate_of, payload,
                            payload_content_type, seq, email_key)
        SELECT u.id, u.request_id, u.inbound, u.source, u.type, u.received_at, u.fired_at,
               u.list_id, u.email, u.parse_error, u.dedup_key, u.duplicate_of, u.payload,
               u.payload_content_type, first_seq + u.n - 1, u.email_key
          FROM unnest(e_id, e_request_id, e_inbound, e_source, e_type, e_received_at,
                      e_fired_at, e_list_id, e_email, e_parse_error, e_dedup_key,
                      e_duplicate_of, e_payload, e_payload_content_type, e_email_key)
               WITH ORDINALITY AS u(id, request_id, inbound, source, type, received_at,
                                    fired_at, list_id, email, parse_error, dedup_key,
                                    duplicate_of, payload, payload_content_type, email_key, n);
    END IF;
    IF cardinality(q_destination) > 0 THEN
        INSERT INTO order_queues AS q (destination, key)
        SELECT d, k FROM unnest(q_destination, q_key) AS u(d, k) ORDER BY d, k
        ON CONFLICT (destination, key) DO UPDATE SET key = q.key;
    END IF;
    IF cardinality(d_event_id) > 0 THEN
        INSERT INTO deliveries (event_id, destination, state, next_attempt_at, created_at,
                                updated_at, order_key)
        SELECT e, d, s, CASE WHEN k IS NULL THEN relay_now() END, relay_now(), relay_now(), k
          FROM unnest(d_event_id, d_destination, d_state, d_order_key)
               WITH ORDINALITY AS u(e, d, s, k, n)
         ORDER BY n;
    END IF;
    IF note IS NOT NULL THEN
        PERFORM pg_notify(channel, note);
    END IF;
END $$;
