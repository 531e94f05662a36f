-- Records being sent by a call that must not be repeated blindly (a create): committed before the call is sent,
-- removed in the same transaction as the record's outcome, or when the record is released unsent. A row that
-- outlives its process (a crash, kill -9, power loss) is an orphan: at start-up it becomes a failed record that
-- may have been delivered, since nobody knows whether its call reached Groove. The row carries the record and
-- the request so that failed record can be shown and retried.
--
-- WITHOUT ROWID: rows are small (a record, a URL) and live for one call, so every claim is an insert and a delete;
-- keyed by the primary key alone, each costs one B-tree instead of the table's and its key index's.
CREATE TABLE record_claims (
    destination_id   TEXT NOT NULL REFERENCES destinations (id) ON DELETE CASCADE,
    record_id        TEXT NOT NULL,
    record_json      BLOB NOT NULL,
    record_encoding  TEXT NOT NULL,
    request_method   TEXT NOT NULL,
    request_url      TEXT NOT NULL,
    claimed_at_ms    INTEGER NOT NULL,
    PRIMARY KEY (destination_id, record_id)
) STRICT, WITHOUT ROWID;

-- 1 when an attempt may have reached Groove: a replay of the record id is then not sent, only an explicit retry.
-- Sticky: a later failure of an explicit retry does not make the earlier attempt any less ambiguous.
ALTER TABLE failed_records ADD COLUMN maybe_delivered INTEGER NOT NULL DEFAULT 0;
-- The form the record arrived in ('struct' or 'raw_json'), so it is shown back in that form; rows from before
-- this column were shown as a Struct when they held an object.
ALTER TABLE failed_records ADD COLUMN record_encoding TEXT NOT NULL DEFAULT 'struct';
