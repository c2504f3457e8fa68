-- relay schema, version 5 (PostgreSQL): bytes stored per inbound, for per-inbound quotas.
-- Kept up to date in the ingesting and pruning transactions; a request counts its body and its
-- headers (as stored), the bulk of what it takes.
CREATE TABLE inbound_usage (
    inbound text PRIMARY KEY,
    bytes   bigint NOT NULL
);
INSERT INTO inbound_usage (inbound, bytes)
    SELECT inbound, sum(octet_length(body) + octet_length(headers)) FROM requests
     GROUP BY inbound;
