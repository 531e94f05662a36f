-- Replicas pacing calls with a credential right now. Each replica renews its rows every second or so; a row
-- past expires_at is a replica that stopped (or stopped using the credential). Each live member takes 1/N of
-- the credential's rate. No foreign key: a deleted credential's rows simply expire.
CREATE TABLE pacer_members (
    credential_id TEXT NOT NULL,
    replica_id TEXT NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (credential_id, replica_id)
);

CREATE INDEX pacer_members_expires_at ON pacer_members (expires_at);
