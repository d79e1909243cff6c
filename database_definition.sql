-- Schema of one partition of the key-value store.
--
-- Apply it to every partition with `make schema` (python datastore.py schema):
-- every statement is idempotent, so running it again changes nothing.
-- The SQLite engine reads this same file (engines.py translates the
-- MySQL-only spellings: VARBINARY/MEDIUMBLOB become BLOB, ENGINE=InnoDB
-- becomes WITHOUT ROWID, ADD COLUMN and DROP INDEX lose IF NOT EXISTS and ON,
-- and MODIFY COLUMN, which only widens a column here, is skipped: SQLite
-- ignores declared lengths),
-- so the two engines cannot drift apart.
-- All times are microseconds since the Unix epoch (UTC), written by the web
-- node that handled the write (see records.now_us). Change order is not a
-- time: it is the partition's own change epoch (kv_change_epoch below).

CREATE TABLE IF NOT EXISTS kv_rows (
    -- Namespace of the key (1 to 255 bytes, API.md "Buckets"); the HTTP
    -- API's /keys is the bucket 'default'.  First in the primary key, so the
    -- buckets of an app ('notes:' to 'notes;') are one range of it.
    bucket      VARBINARY(255) NOT NULL,
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

-- Tables made when bucket names had at most 64 bytes: widen the column.
-- bucket is in the primary key, so on MariaDB 10.11 the first run rebuilds
-- the table in place (ALGORITHM=INPLACE; LOCK=SHARED, because of the indexed
-- virtual column tombstone_us: reads go on, writes wait, and a client write
-- waiting longer than its statement time answers 503 busy).  Measured on
-- the test servers: 2.7 s for 300,000 rows, so plan a few seconds per
-- 100,000 rows of a partition.  Every later run finds nothing to change and
-- is instant (ALGORITHM=INSTANT is accepted; test_buckets.py checks it).
ALTER TABLE kv_rows MODIFY COLUMN bucket VARBINARY(255) NOT NULL;

-- Tables made before the change epoch had changed_us, stamped by the clock of
-- the web node or sync host that wrote the row; `make schema` replaces it.
ALTER TABLE kv_rows ADD COLUMN IF NOT EXISTS change_epoch BIGINT NOT NULL DEFAULT 0;
-- Sync reads "rows changed since the watermark" with this index.
CREATE INDEX IF NOT EXISTS kv_rows_change_epoch ON kv_rows (change_epoch);
DROP INDEX IF EXISTS kv_rows_changed ON kv_rows;
ALTER TABLE kv_rows DROP COLUMN IF EXISTS changed_us;
-- The change feed of a bucket (API.md "Change feed") reads its rows in change
-- order with this index; InnoDB appends the primary key, so it orders by
-- (bucket, change_epoch, k).  A client write changes its entry once per
-- epoch, as it does kv_rows_change_epoch's (make bench: "feed index").
CREATE INDEX IF NOT EXISTS kv_rows_bucket_change ON kv_rows (bucket, change_epoch);
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
    -- A watermark is "epoch hex(bucket) hex(key)": up to 20 + 1 + 510 + 1 +
    -- 1024 = 1,556 bytes with a 255-byte bucket and a 512-byte key.
    value       VARBINARY(2048) NOT NULL,
    updated_us  BIGINT         NOT NULL,
    PRIMARY KEY (name)
) ENGINE=InnoDB;
-- Tables made when value had at most 255 bytes (too short for a watermark at
-- a long bucket and key).  The length prefix grows from 1 to 2 bytes, so
-- MariaDB copies the table the first time: a few rows, milliseconds.  Later
-- runs are instant.
ALTER TABLE kv_sync_state MODIFY COLUMN value VARBINARY(2048) NOT NULL;

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
