-- relay schema, version 7 (SQLite): bytes stored per inbound, for per-inbound quotas.
-- Kept up to date in the ingesting and pruning transactions; a request counts its body and its
-- headers (as stored), the bulk of what it takes.
CREATE TABLE inbound_usage (
    inbound TEXT PRIMARY KEY,
    bytes   INTEGER NOT NULL
) WITHOUT ROWID;
INSERT INTO inbound_usage (inbound, bytes)
    SELECT inbound, sum(length(body) + length(CAST(headers AS BLOB))) FROM requests
     GROUP BY inbound;
