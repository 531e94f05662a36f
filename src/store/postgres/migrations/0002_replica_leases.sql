-- Processes serving from this database, each with a lease it renews while it runs (database time, so replicas'
-- clocks do not matter). A claim names the process that made it: it is an orphan only once that process's lease
-- has run out.
CREATE TABLE replicas (
    id           TEXT PRIMARY KEY,
    started_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    lease_until  TIMESTAMPTZ NOT NULL
);

-- NULL for claims made before processes had ids: those are orphans.
ALTER TABLE record_claims ADD COLUMN owner TEXT;
-- Every record of the call, the first included, so another replica can tell that a record is in flight here
-- (records holds the same ids, in a layout SQL cannot read). NULL for claims from before this column.
ALTER TABLE record_claims ADD COLUMN record_ids TEXT[];
