-- Replicas claim every call, so that two of them never send a record at once. A claim on a call that may be
-- repeated (idempotent) is let go when its replica stops, instead of becoming failed records that may have been
-- delivered.
ALTER TABLE record_claims ADD COLUMN repeatable BOOLEAN NOT NULL DEFAULT FALSE;
