-- One row per credential whose calls replicas space out together: the earliest moment the account's next call
-- may leave. Each call takes the slot at max(next_at, now) and pushes next_at one gap further, so the calls of
-- every replica form one evenly spaced line. A slot is not a debt: after an idle spell the line starts at now.
CREATE TABLE pace_book (
    credential_id TEXT PRIMARY KEY,
    next_at TIMESTAMPTZ NOT NULL
);

-- The line replaces per-replica shares of the rate, counted from heartbeats in this table.
DROP TABLE pacer_members;
