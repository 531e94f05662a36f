-- Records each destination has delivered, so a replayed record is answered as a duplicate instead of being sent
-- again. response_body is capped by the store (LEDGER_BODY_CAP).
--
-- A rowid table, not WITHOUT ROWID, although the key is (destination_id, record_id): WITHOUT ROWID rows over
-- about 1 KB (with 4 KB pages) spill into an overflow page each, and Groove's answers (the created or updated
-- object) easily reach that.
-- Measured with 1-2 KB bodies: rowid wrote 2-2.5 times and looked up 5 times faster; with 100-byte bodies the
-- two were even. Revisit if bodies stop being stored.
CREATE TABLE delivered_records (
    destination_id   TEXT NOT NULL REFERENCES destinations (id) ON DELETE CASCADE,
    record_id        TEXT NOT NULL,
    http_status      INTEGER NOT NULL,
    response_body    BLOB NOT NULL,
    attempts         INTEGER NOT NULL,
    delivered_at_ms  INTEGER NOT NULL,
    PRIMARY KEY (destination_id, record_id)
) STRICT;

-- Retention: oldest entries of a destination first; record_id breaks ties so retention cuts at an exact entry.
CREATE INDEX delivered_records_by_age ON delivered_records (destination_id, delivered_at_ms, record_id);

-- Records that ended rejected or failed, with the record, the last request and the last response.
-- The request columns are all NULL when no request was made. Headers are JSON arrays of [name, value] pairs.
CREATE TABLE failed_records (
    destination_id    TEXT NOT NULL REFERENCES destinations (id) ON DELETE CASCADE,
    record_id         TEXT NOT NULL,
    record_json       BLOB NOT NULL,
    outcome           TEXT NOT NULL,
    request_method    TEXT,
    request_url       TEXT,
    request_headers   TEXT,
    request_body      BLOB,
    http_status       INTEGER NOT NULL,
    response_headers  TEXT NOT NULL,
    response_body     BLOB NOT NULL,
    error             TEXT NOT NULL,
    attempts          INTEGER NOT NULL,
    first_failure_ms  INTEGER NOT NULL,
    last_failure_ms   INTEGER NOT NULL,
    PRIMARY KEY (destination_id, record_id),
    CHECK ((request_method IS NULL) = (request_url IS NULL)
       AND (request_method IS NULL) = (request_headers IS NULL)
       AND (request_method IS NULL) = (request_body IS NULL))
) STRICT;

-- Listings and "retry all", oldest first; record_id breaks ties so the page token is a total order.
CREATE INDEX failed_records_oldest_first ON failed_records (destination_id, first_failure_ms, record_id);
