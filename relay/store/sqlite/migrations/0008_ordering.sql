-- relay schema, version 8 (SQLite): ordered delivery per subscriber (destination ordering =
-- "subscriber"; relay.store.ordering).
-- order_key: the subscriber's queue (a 64-bit hash of list id and email) for a delivery to an
-- ordered destination, NULL otherwise. One of a queue's unfinished deliveries, its earliest by id
-- (ids are given in commit order by the one writer), is its head; the others wait with
-- next_attempt_at NULL, outside deliveries_due, until the head before them is finished.
-- after_dead: the dead delivery a head was released after (the event detail says so).
ALTER TABLE deliveries ADD COLUMN order_key INTEGER;
ALTER TABLE deliveries ADD COLUMN after_dead INTEGER;
CREATE INDEX deliveries_order ON deliveries(destination, order_key, id)
    WHERE order_key IS NOT NULL AND state IN ('pending', 'delivering', 'paused');
