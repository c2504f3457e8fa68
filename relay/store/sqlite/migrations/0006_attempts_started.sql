-- relay schema, version 6 (SQLite): attempts found by when they started. The same change as
-- PostgreSQL's migration 0004.

-- How each destination fared lately (the console's overview, from every process's attempts)
-- reads the newest attempts by their start: an index range, however many attempts are kept.
CREATE INDEX attempts_started ON attempts(started_at);
