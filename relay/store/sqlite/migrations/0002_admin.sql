-- relay schema, version 2 (SQLite): what operator control (the admin API) needs.

-- The events list filters by source like it does by inbound and type: newest first, by id.
CREATE INDEX events_source ON events(source, id);

-- A bulk replay watches how many of its own deliveries still wait, per destination, to feed
-- more only as they drain; live traffic is left alone, so the index covers replay rows only.
CREATE INDEX deliveries_replay ON deliveries(replay_id, destination, state)
    WHERE replay_id IS NOT NULL;

-- How many events a replay's filter matched when it started, so progress can be shown.
ALTER TABLE replays ADD COLUMN total INTEGER;
