-- relay schema, version 8 (PostgreSQL): a batch of ingests with no ordered destination in one
-- statement, so in one round trip and no BEGIN or COMMIT of its own (a statement is its own
-- transaction). relay_ingest_head and relay_ingest_tail (version 7) run the same statements in
-- the same order with the same locks; this one also applies, in SQL, the two rules made between
-- them in Python: a delivery is paused while its destination is paused, else pending and due
-- now (relay.store.rules.initial_state); an event whose dedup key has another event as its
-- original is a duplicate and gets no deliveries. The store contract suite holds both paths to
-- the same results. Rows: ('x', event id, the original's id) per duplicate, ('u', destination,
-- null) per destination given a delivery due now.
CREATE FUNCTION relay_ingest(
    names text[], ensure boolean,
    r_id text[], r_inbound text[], r_method text[], r_path text[], r_query text[],
    r_headers text[], r_body bytea[], r_content_type text[], r_peer text[],
    r_received_at float8[],
    keys text[], key_events text[], dedup_window float8,
    positions_lock bigint, inbounds text[], usage int8[],
    e_id text[], e_request_id text[], e_inbound text[], e_source text[], e_type text[],
    e_received_at float8[], e_fired_at float8[], e_list_id text[], e_email text[],
    e_parse_error text[], e_dedup_key text[], e_payload bytea[],
    e_payload_content_type text[], e_email_key text[],
    d_event_id text[], d_destination text[],
    channel text
) RETURNS TABLE (kind text, name text, value text) LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    paused text[];
    o_keys text[] := '{}';
    o_events text[] := '{}';
    dup_ids text[];
    dup_of text[];
    due text[];
    how_many int := cardinality(e_id);
    first_seq int8;
BEGIN
    IF ensure THEN
        INSERT INTO destination_state (name, paused, updated_at)
        SELECT unnest(names), false, relay_now()
        ON CONFLICT (name) DO NOTHING;
    END IF;
    SELECT coalesce(array_agg(s.name) FILTER (WHERE s.paused), '{}') INTO paused
      FROM (SELECT t.name, t.paused FROM destination_state t
             WHERE t.name = ANY(names) ORDER BY t.name FOR SHARE) AS s;
    INSERT INTO requests (id, inbound, method, path, query, headers, body, content_type, peer,
                          received_at)
    SELECT * FROM unnest(r_id, r_inbound, r_method, r_path, r_query, r_headers, r_body,
                         r_content_type, r_peer, r_received_at);
    IF cardinality(keys) > 0 THEN
        WITH won AS (
            INSERT INTO dedup AS d (key, event_id, first_seen)
            SELECT k, e, relay_now() FROM unnest(keys, key_events) AS u(k, e) ORDER BY k
            ON CONFLICT (key) DO UPDATE SET event_id = excluded.event_id,
                                            first_seen = excluded.first_seen
             WHERE d.first_seen < excluded.first_seen - dedup_window
            RETURNING d.key, d.event_id)
        SELECT coalesce(array_agg(won.key), '{}'), coalesce(array_agg(won.event_id), '{}')
          INTO o_keys, o_events FROM won;
        IF cardinality(o_keys) < cardinality(keys) THEN
            SELECT o_keys || coalesce(array_agg(d.key), '{}'),
                   o_events || coalesce(array_agg(d.event_id), '{}')
              INTO o_keys, o_events
              FROM unnest(keys) AS u(k) JOIN dedup d ON d.key = u.k
             WHERE d.key <> ALL(o_keys);
        END IF;
    END IF;
    PERFORM pg_advisory_xact_lock(positions_lock);
    INSERT INTO inbound_usage AS u (inbound, bytes)
    SELECT i, b FROM unnest(inbounds, usage) AS x(i, b) ORDER BY i
    ON CONFLICT (inbound) DO UPDATE SET bytes = u.bytes + excluded.bytes;
    IF how_many > 0 THEN
        first_seq := setval('events_seq', nextval('events_seq') + how_many - 1) - how_many + 1;
        WITH stored AS (
            INSERT INTO events (id, request_id, inbound, source, type, received_at, fired_at,
                                list_id, email, parse_error, dedup_key, duplicate_of, payload,
                                payload_content_type, seq, email_key)
            SELECT u.id, u.request_id, u.inbound, u.source, u.type, u.received_at, u.fired_at,
                   u.list_id, u.email, u.parse_error, u.dedup_key,
                   CASE WHEN o.e <> u.id THEN o.e END, u.payload, u.payload_content_type,
                   first_seq + u.n - 1, u.email_key
              FROM unnest(e_id, e_request_id, e_inbound, e_source, e_type, e_received_at,
                          e_fired_at, e_list_id, e_email, e_parse_error, e_dedup_key,
                          e_payload, e_payload_content_type, e_email_key)
                   WITH ORDINALITY AS u(id, request_id, inbound, source, type, received_at,
                                        fired_at, list_id, email, parse_error, dedup_key,
                                        payload, payload_content_type, email_key, n)
              LEFT JOIN unnest(o_keys, o_events) AS o(k, e) ON o.k = u.dedup_key
            RETURNING events.id, events.duplicate_of)
        SELECT array_agg(stored.id), array_agg(stored.duplicate_of) INTO dup_ids, dup_of
          FROM stored WHERE stored.duplicate_of IS NOT NULL;
    END IF;
    dup_ids := coalesce(dup_ids, '{}');
    dup_of := coalesce(dup_of, '{}');
    INSERT INTO deliveries (event_id, destination, state, next_attempt_at, created_at,
                            updated_at)
    SELECT e, d, CASE WHEN d = ANY(paused) THEN 'paused' ELSE 'pending' END, relay_now(),
           relay_now(), relay_now()
      FROM unnest(d_event_id, d_destination) WITH ORDINALITY AS u(e, d, n)
     WHERE e <> ALL(dup_ids)
     ORDER BY n;
    SELECT array_agg(DISTINCT d ORDER BY d) INTO due
      FROM unnest(d_event_id, d_destination) AS u(e, d)
     WHERE e <> ALL(dup_ids) AND d <> ALL(paused);
    IF cardinality(due) > 0 THEN
        PERFORM pg_notify(channel, 'due:' || array_to_string(due, ','));
    END IF;
    RETURN QUERY SELECT 'x', x.i, x.o FROM unnest(dup_ids, dup_of) AS x(i, o);
    RETURN QUERY SELECT 'u', x.d, NULL::text FROM unnest(due) AS x(d);
END $$;
