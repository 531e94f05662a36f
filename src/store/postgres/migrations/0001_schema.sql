-- The whole schema of release 0.1's SQLite store (its migrations 0001 to 0004), in PostgreSQL's types. Times are
-- ms since the Unix epoch, as everywhere in the store.

-- Facts about the database itself, e.g. the value that proves which secret key encrypted the credentials.
CREATE TABLE store_meta (
    key    TEXT PRIMARY KEY,
    value  BYTEA NOT NULL
);

CREATE TABLE credentials (
    id              TEXT PRIMARY KEY,
    display_name    TEXT NOT NULL,
    api_key_hint    TEXT NOT NULL,
    -- 12-byte nonce || ChaCha20-Poly1305 ciphertext and tag; associated data "credentials/{id}".
    api_key_sealed  BYTEA NOT NULL,
    create_time_ms  BIGINT NOT NULL,
    update_time_ms  BIGINT NOT NULL,
    -- 1 for the key it was created with, one more for each key that replaced it; a refusal is written only
    -- against the version it was seen with.
    key_version     BIGINT NOT NULL DEFAULT 1,
    -- Set together when Groove refused the key, NULL otherwise.
    refuse_status   INTEGER,
    refuse_time_ms  BIGINT,
    refuse_detail   TEXT
);

-- state is checked when read rather than by a CHECK constraint, so a new state needs no migration.
CREATE TABLE destinations (
    id              TEXT PRIMARY KEY,
    display_name    TEXT NOT NULL,
    credential_id   TEXT NOT NULL REFERENCES credentials (id) ON DELETE RESTRICT,
    state           TEXT NOT NULL,
    config_json     TEXT NOT NULL,
    revision        BIGINT NOT NULL CHECK (revision >= 0),
    create_time_ms  BIGINT NOT NULL,
    update_time_ms  BIGINT NOT NULL
);

-- Serves the "is this credential in use" check, and the foreign key check when a credential is deleted.
CREATE INDEX destinations_by_credential ON destinations (credential_id, id);

-- Records each destination has delivered, so a replayed record is answered as a duplicate instead of being sent
-- again. response_body is capped by the store (LEDGER_BODY_CAP).
CREATE TABLE delivered_records (
    destination_id   TEXT NOT NULL REFERENCES destinations (id) ON DELETE CASCADE,
    record_id        TEXT NOT NULL,
    http_status      INTEGER NOT NULL,
    response_body    BYTEA NOT NULL,
    attempts         BIGINT NOT NULL,
    delivered_at_ms  BIGINT NOT NULL,
    PRIMARY KEY (destination_id, record_id)
);

-- Retention: oldest entries of a destination first; record_id breaks ties so retention cuts at an exact entry.
CREATE INDEX delivered_records_by_age ON delivered_records (destination_id, delivered_at_ms, record_id);

-- Records that ended rejected or failed, with the record, the last request and the last response.
-- The request columns are all NULL when no request was made. Headers are JSON arrays of [name, value] pairs.
CREATE TABLE failed_records (
    destination_id    TEXT NOT NULL REFERENCES destinations (id) ON DELETE CASCADE,
    record_id         TEXT NOT NULL,
    record_json       BYTEA NOT NULL,
    outcome           TEXT NOT NULL,
    request_method    TEXT,
    request_url       TEXT,
    request_headers   TEXT,
    request_body      BYTEA,
    http_status       INTEGER NOT NULL,
    response_headers  TEXT NOT NULL,
    response_body     BYTEA NOT NULL,
    error             TEXT NOT NULL,
    attempts          BIGINT NOT NULL,
    first_failure_ms  BIGINT NOT NULL,
    last_failure_ms   BIGINT NOT NULL,
    -- An attempt may have reached Groove: a replay is then not sent, only an explicit retry. Sticky.
    maybe_delivered   BOOLEAN NOT NULL DEFAULT FALSE,
    -- The form the record arrived in ('struct' or 'raw_json'), so it is shown back in that form.
    record_encoding   TEXT NOT NULL DEFAULT 'struct',
    PRIMARY KEY (destination_id, record_id),
    CHECK ((request_method IS NULL) = (request_url IS NULL)
       AND (request_method IS NULL) = (request_headers IS NULL)
       AND (request_method IS NULL) = (request_body IS NULL))
);

-- Listings and "retry all", oldest first; record_id breaks ties so the page token is a total order.
CREATE INDEX failed_records_oldest_first ON failed_records (destination_id, first_failure_ms, record_id);

-- Calls that must not be repeated blindly (creates), claimed before they are sent: one row per call, keyed by
-- its first record, removed with the outcome of its records or when they are released unsent. A row that
-- outlives its process becomes failed records that may have been delivered. records holds all the call's
-- records in the layout the SQLite store uses (see its migration 0003).
CREATE TABLE record_claims (
    destination_id   TEXT NOT NULL REFERENCES destinations (id) ON DELETE CASCADE,
    record_id        TEXT NOT NULL,
    records          BYTEA NOT NULL,
    request_method   TEXT NOT NULL,
    request_url      TEXT NOT NULL,
    claimed_at_ms    BIGINT NOT NULL,
    PRIMARY KEY (destination_id, record_id)
);
