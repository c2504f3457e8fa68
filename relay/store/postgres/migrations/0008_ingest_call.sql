-- relay schema, version 8 (PostgreSQL): a batch of ingests with no ordered destination in one
-- statement, so in one round trip and no BEGIN or COMMIT of its own (a statement is its own
-- transaction). It calls relay_ingest_head and relay_ingest_tail (version 7), and applies, in
-- SQL, the two rules made between them in Python otherwise: a delivery is paused while its
-- destination is paused, else pending and due now (relay.store.rules.initial_state); an event
-- whose dedup key has another event as its original is a duplicate and gets no deliveries. The
-- store contract suite holds both paths to the same results. Rows: ('x', event id, the
-- original's id) per duplicate, ('u', destination, null) per destination given a delivery due
-- now.
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
    o_keys text[];
    o_events text[];
    e_duplicate_of text[];
    dup_ids text[];
    dup_of text[];
    dd_event_id text[];
    dd_destination text[];
    dd_state text[];
    due text[];
BEGIN
    IF ensure THEN
        INSERT INTO destination_state (name, paused, updated_at)
        SELECT unnest(names), false, relay_now()
        ON CONFLICT (name) DO NOTHING;
    END IF;
    SELECT coalesce(array_agg(h.name) FILTER (WHERE h.kind = 'd' AND h.value = 'true'), '{}'),
           coalesce(array_agg(h.name) FILTER (WHERE h.kind = 'k'), '{}'),
           coalesce(array_agg(h.value) FILTER (WHERE h.kind = 'k'), '{}')
      INTO paused, o_keys, o_events
      FROM relay_ingest_head(names, r_id, r_inbound, r_method, r_path, r_query, r_headers,
                             r_body, r_content_type, r_peer, r_received_at, keys, key_events,
                             dedup_window) AS h;
    SELECT coalesce(array_agg(CASE WHEN o.e <> u.id THEN o.e END ORDER BY u.n), '{}')
      INTO e_duplicate_of
      FROM unnest(e_id, e_dedup_key) WITH ORDINALITY AS u(id, k, n)
      LEFT JOIN unnest(o_keys, o_events) AS o(k, e) ON o.k = u.k;
    SELECT coalesce(array_agg(x.i), '{}'), coalesce(array_agg(x.o), '{}') INTO dup_ids, dup_of
      FROM unnest(e_id, e_duplicate_of) AS x(i, o) WHERE x.o IS NOT NULL;
    SELECT coalesce(array_agg(u.e ORDER BY u.n), '{}'),
           coalesce(array_agg(u.d ORDER BY u.n), '{}'),
           coalesce(array_agg(CASE WHEN u.d = ANY(paused) THEN 'paused' ELSE 'pending' END
                              ORDER BY u.n), '{}')
      INTO dd_event_id, dd_destination, dd_state
      FROM unnest(d_event_id, d_destination) WITH ORDINALITY AS u(e, d, n)
     WHERE u.e <> ALL(dup_ids);
    SELECT coalesce(array_agg(DISTINCT x.d ORDER BY x.d), '{}') INTO due
      FROM unnest(dd_destination, dd_state) AS x(d, s) WHERE x.s = 'pending';
    PERFORM relay_ingest_tail(
        positions_lock, inbounds, usage, e_id, e_request_id, e_inbound, e_source, e_type,
        e_received_at, e_fired_at, e_list_id, e_email, e_parse_error, e_dedup_key,
        e_duplicate_of, e_payload, e_payload_content_type, e_email_key, '{}', '{}',
        dd_event_id, dd_destination, dd_state,
        array_fill(NULL::int8, ARRAY[cardinality(dd_event_id)]), channel,
        CASE WHEN cardinality(due) > 0 THEN 'due:' || array_to_string(due, ',') END);
    RETURN QUERY SELECT 'x', x.i, x.o FROM unnest(dup_ids, dup_of) AS x(i, o);
    RETURN QUERY SELECT 'u', x.d, NULL::text FROM unnest(due) AS x(d);
END $$;
