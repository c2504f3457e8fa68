-- relay schema, version 4 (PostgreSQL): attempts found by when they started. The same change as
-- SQLite's migration 0006.

-- How each destination fared lately (the console's overview, from every process's attempts)
-- reads the newest attempts by their start: an index range, however many attempts are kept.
-- Building it reads the attempts table once, holding off writes to it meanwhile: on a large
-- store run `relay migrate` before rolling out, as with every migration.
CREATE INDEX attempts_started ON attempts(started_at);
