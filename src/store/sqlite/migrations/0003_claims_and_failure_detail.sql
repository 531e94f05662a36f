-- Calls that must not be repeated blindly (creates), claimed before they are sent: one row per call, removed in
-- the same transaction as the outcome of its records, or when its records are released unsent. A row that
-- outlives its process (a crash, kill -9, power loss) is an orphan: at start-up its records become failed
-- records that may have been delivered, since nobody knows whether the call reached Groove. The row carries the
-- records and the request so that those failed records can be shown and retried.
--
-- record_id is the first record of the call; records holds all of them (the first included), each as a
-- little-endian u32 id length, the id, one encoding byte (0 struct, 1 raw_json), a u32 JSON length and the JSON.
-- One row per call rather than per record: a batch of a hundred is one insert and one delete.
--
-- A rowid table, not WITHOUT ROWID: a batch's records spill into overflow pages, and a WITHOUT ROWID delete reads
-- the whole row back (measured: deleting batch claims took 14 % of the service's CPU). With a rowid the delete
-- only reads the key columns at the front of the row.
CREATE TABLE record_claims (
    destination_id   TEXT NOT NULL REFERENCES destinations (id) ON DELETE CASCADE,
    record_id        TEXT NOT NULL,
    records          BLOB NOT NULL,
    request_method   TEXT NOT NULL,
    request_url      TEXT NOT NULL,
    claimed_at_ms    INTEGER NOT NULL,
    PRIMARY KEY (destination_id, record_id)
) STRICT;

-- 1 when an attempt may have reached Groove: a replay of the record id is then not sent, only an explicit retry.
-- Sticky: a later failure of an explicit retry does not make the earlier attempt any less ambiguous.
ALTER TABLE failed_records ADD COLUMN maybe_delivered INTEGER NOT NULL DEFAULT 0;
-- The form the record arrived in ('struct' or 'raw_json'), so it is shown back in that form; rows from before
-- this column were shown as a Struct when they held an object.
ALTER TABLE failed_records ADD COLUMN record_encoding TEXT NOT NULL DEFAULT 'struct';
