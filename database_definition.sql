-- Schema of one partition of the key-value store.
--
-- Apply it to every partition with `make schema` (python datastore.py schema):
-- every statement is idempotent, so running it again changes nothing.
-- The SQLite engine reads this same file (engines.py translates the
-- MySQL-only spellings: VARBINARY/MEDIUMBLOB become BLOB, ENGINE=InnoDB
-- becomes WITHOUT ROWID, ADD COLUMN and DROP INDEX lose IF NOT EXISTS and ON),
-- so the two engines cannot drift apart.
-- All times are microseconds since the Unix epoch (UTC), written by the web
-- node that handled the write (see records.now_us). Change order is not a
-- time: it is the partition's own change epoch (kv_change_epoch below).

CREATE TABLE IF NOT EXISTS kv_rows (
    -- Namespace of the key; the HTTP API's /keys is the bucket 'default'.
    bucket      VARBINARY(64)  NOT NULL,
    -- The key as UTF-8 bytes (1 to 512). VARBINARY compares byte by byte,
    -- so ORDER BY k is the key order the listing API promises.
    k           VARBINARY(512) NOT NULL,
    -- The value, 0 to 16 MiB - 1 bytes (MEDIUMBLOB's maximum); empty for a
    -- tombstone. Servers need max_allowed_packet above max_value_bytes.
    value       MEDIUMBLOB     NOT NULL,
    -- 1 on first write, +1 on every write of the key (tombstones included).
    version     BIGINT         NOT NULL,
    -- When the current incarnation of the key was created (microseconds).
    created_us  BIGINT         NOT NULL,
    -- When the key was last written (microseconds); newest wins in sync.
    modified_us BIGINT         NOT NULL,
    -- When the key expires (microseconds), NULL for never. An expired row
    -- is absent for every operation and purged by sync.
    expires_us  BIGINT         NULL,
    -- 1 for a tombstone: the key was deleted at modified_us. Kept so that
    -- sync copies the delete instead of resurrecting an old replica.
    deleted     TINYINT        NOT NULL DEFAULT 0,
    -- The partition's change epoch (kv_change_epoch) when a client write
    -- stored the row; 0 for a copy stored by sync, which is no new change.
    -- Sync's incremental scan reads the rows of the epochs it has closed.
    change_epoch BIGINT        NOT NULL DEFAULT 0,
    PRIMARY KEY (bucket, k)
) ENGINE=InnoDB;

-- Tables made before the change epoch had changed_us, stamped by the clock of
-- the web node or sync host that wrote the row; `make schema` replaces it.
ALTER TABLE kv_rows ADD COLUMN IF NOT EXISTS change_epoch BIGINT NOT NULL DEFAULT 0;
-- Sync reads "rows changed since the watermark" with this index.
CREATE INDEX IF NOT EXISTS kv_rows_change_epoch ON kv_rows (change_epoch);
DROP INDEX IF EXISTS kv_rows_changed ON kv_rows;
ALTER TABLE kv_rows DROP COLUMN IF EXISTS changed_us;
-- Sync purges expired rows and old tombstones without a full scan.
CREATE INDEX IF NOT EXISTS kv_rows_expires ON kv_rows (expires_us);
-- When a tombstone was written (its modified_us), NULL for a live row. The
-- database computes it, so overwriting a live row leaves its index entry
-- alone (an index on (deleted, modified_us) changed on every write: in
-- POST /batch MariaDB spent 46 instead of 38 us of CPU per row). Added by ALTER so that
-- `make schema` also upgrades tables created before it (instant in MariaDB;
-- building the index reads the table once).
ALTER TABLE kv_rows ADD COLUMN IF NOT EXISTS
    tombstone_us BIGINT AS (CASE WHEN deleted = 1 THEN modified_us END) VIRTUAL;
CREATE INDEX IF NOT EXISTS kv_rows_tombstone_us ON kv_rows (tombstone_us);
DROP INDEX IF EXISTS kv_rows_tombstones ON kv_rows;

-- Sync's state that must be shared by every host that may run the cron:
-- the per-partition watermark and the lease of the cluster-wide lock.
CREATE TABLE IF NOT EXISTS kv_sync_state (
    name        VARBINARY(64)  NOT NULL,
    value       VARBINARY(255) NOT NULL,
    updated_us  BIGINT         NOT NULL,
    PRIMARY KEY (name)
) ENGINE=InnoDB;

-- The change epoch of this partition: one row, raised by every sync pass.
-- A client write reads it under a shared lock at the start of its transaction
-- and stamps its rows with it; raising it takes the exclusive lock, so it
-- waits for every transaction that read the old value to commit. Once it is
-- raised from E to E + 1, every row stamped E or lower is committed and no
-- new row gets E: epoch E is closed, and a scan of the closed epochs misses
-- no late commit, whatever the clocks say.
CREATE TABLE IF NOT EXISTS kv_change_epoch (
    id          TINYINT        NOT NULL,
    epoch       BIGINT         NOT NULL,
    PRIMARY KEY (id)
) ENGINE=InnoDB;
INSERT IGNORE INTO kv_change_epoch (id, epoch) VALUES (1, 1);
