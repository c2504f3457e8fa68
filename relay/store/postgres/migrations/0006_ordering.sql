-- relay schema, version 6 (PostgreSQL): ordered delivery per subscriber. The same columns and
-- index as SQLite's migration 0008 (see there), and one table SQLite does not need:
-- order_queues holds a row per subscriber queue with unfinished deliveries, locked (in key
-- order) by every transaction that adds to a queue or finishes its head, so that processes
-- sharing the database agree on each queue's order and on its one head. A collision of two
-- subscribers' hashes only makes them share one queue: stricter order, never broken order.
ALTER TABLE deliveries ADD COLUMN order_key bigint;
ALTER TABLE deliveries ADD COLUMN after_dead bigint;
CREATE INDEX deliveries_order ON deliveries(destination, order_key, id)
    WHERE order_key IS NOT NULL AND state IN ('pending', 'delivering', 'paused');
CREATE TABLE order_queues (
    destination text   NOT NULL,
    key         bigint NOT NULL,
    PRIMARY KEY (destination, key)
);
