-- Which key a credential holds: 1 for the key it was created with, one more for each key that replaced it. A
-- refusal is written only against the key version it was seen with, so an answer to a call made with a key
-- that has since been replaced cannot mark the new one refused.
ALTER TABLE credentials ADD COLUMN key_version INTEGER NOT NULL DEFAULT 1;
-- Set when Groove refused the key (401 or 403) on several calls in a row, all three together; NULL otherwise.
-- Cleared when the key is replaced or a call with it succeeds. Deliveries with a refused key send nothing.
ALTER TABLE credentials ADD COLUMN refuse_status INTEGER;
ALTER TABLE credentials ADD COLUMN refuse_time_ms INTEGER;
ALTER TABLE credentials ADD COLUMN refuse_detail TEXT;
