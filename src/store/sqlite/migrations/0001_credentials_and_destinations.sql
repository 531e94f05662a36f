-- Facts about the database itself, e.g. the value that proves which secret key encrypted the credentials.
CREATE TABLE store_meta (
    key   TEXT PRIMARY KEY,
    value BLOB NOT NULL
) STRICT;

CREATE TABLE credentials (
    id              TEXT PRIMARY KEY,
    display_name    TEXT NOT NULL,
    api_key_hint    TEXT NOT NULL,
    -- 12-byte nonce || ChaCha20-Poly1305 ciphertext and tag; associated data "credentials/{id}".
    api_key_sealed  BLOB NOT NULL,
    create_time_ms  INTEGER NOT NULL,
    update_time_ms  INTEGER NOT NULL
) STRICT;

-- state is checked when read rather than by a CHECK constraint: adding a state later would otherwise mean
-- rebuilding the table.
CREATE TABLE destinations (
    id              TEXT PRIMARY KEY,
    display_name    TEXT NOT NULL,
    credential_id   TEXT NOT NULL REFERENCES credentials (id) ON DELETE RESTRICT,
    state           TEXT NOT NULL,
    config_json     TEXT NOT NULL,
    revision        INTEGER NOT NULL CHECK (revision >= 0),
    create_time_ms  INTEGER NOT NULL,
    update_time_ms  INTEGER NOT NULL
) STRICT;

-- Serves the "is this credential in use" check, and the foreign key check when a credential is deleted.
CREATE INDEX destinations_by_credential ON destinations (credential_id, id);
