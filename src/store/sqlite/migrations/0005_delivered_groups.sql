-- The ledger in two tables: records delivered together with the same answer (a batch's records share one call,
-- one status and no body) share one delivered_groups row, and delivered_ids maps each record id to its group.
-- A batch of a thousand records thus costs one small key per record instead of a full row and two index entries:
-- the per-record rows were most of what the writer thread spent on batched delivery.
--
-- record_ids lists the group's ids, each as a big-endian u32 byte length and the id's UTF-8 bytes, so retention
-- can remove a group's keys without an index from group to id. A key that a later delivery moved to a newer
-- group stays listed in its old group; removing the old group only removes keys that still point at it.
CREATE TABLE delivered_groups (
    id               INTEGER PRIMARY KEY,
    destination_id   TEXT NOT NULL REFERENCES destinations (id) ON DELETE CASCADE,
    http_status      INTEGER NOT NULL,
    response_body    BLOB NOT NULL,
    attempts         INTEGER NOT NULL,
    delivered_at_ms  INTEGER NOT NULL,
    record_count     INTEGER NOT NULL,
    record_ids       BLOB NOT NULL
) STRICT;

-- Retention: oldest groups of a destination first, with their sizes, so the count rule reads the index alone.
CREATE INDEX delivered_groups_by_age
    ON delivered_groups (destination_id, delivered_at_ms, id, record_count);

-- WITHOUT ROWID: the key is the whole row, so each id is one entry in one b-tree.
CREATE TABLE delivered_ids (
    destination_id  TEXT NOT NULL REFERENCES destinations (id) ON DELETE CASCADE,
    record_id       TEXT NOT NULL,
    group_id        INTEGER NOT NULL,
    PRIMARY KEY (destination_id, record_id)
) STRICT, WITHOUT ROWID;

-- Each existing entry becomes a group of its own.
INSERT INTO delivered_groups
    (id, destination_id, http_status, response_body, attempts, delivered_at_ms, record_count, record_ids)
SELECT rowid, destination_id, http_status, response_body, attempts, delivered_at_ms, 1,
       unhex(printf('%08x', length(CAST(record_id AS BLOB))) || hex(record_id))
FROM delivered_records;

INSERT INTO delivered_ids (destination_id, record_id, group_id)
SELECT destination_id, record_id, rowid FROM delivered_records;

DROP TABLE delivered_records;
