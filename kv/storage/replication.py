"""The calls that only sync.py and the schema command use: scans in change,
tombstone and expiry order, conditional copies and deletes, the change epoch,
the partition's clock and the kv_sync_state rows (lease and watermarks).
"""

from typing import Callable, List, Optional, Sequence, Tuple

from kv.records import Record, winner_key
from kv.storage.connection import COLUMNS, record_of


class ReplicationCalls:
    """What sync asks of a partition, on top of :class:`kv.storage.connection.Connection`
    (a mixin of :class:`kv.storage.partition.Partition`)."""

    _ORDERED_BY = ("change_epoch", "tombstone_us", "expires_us")

    def rows_by(self, column: str, after: Tuple[int, bytes, bytes], limit: int,
                where: str = "", params: Sequence = ()) -> List[Tuple[int, Record]]:
        """Rows ordered by (column, bucket, key), after ``after``, with values.

        Keyset pagination over the index of ``column`` (change_epoch for the
        watermark scan, tombstone_us for tombstones, expires_us for expiry), so
        the cost is the number of rows returned, whatever the table size.
        ``where`` is an optional constant SQL condition with ``params``.

        :param str column: one of change_epoch, tombstone_us, expires_us.
        :param after: (column value, bucket, key) of the last row seen.
        :returns: list of (column value, Record), at most ``limit``.
        :raises PartitionUnavailable: when the database does not answer.
        """
        assert column in self._ORDERED_BY, column
        value, bucket, key = after
        sql = ("SELECT {c}, " + COLUMNS + " FROM kv_rows WHERE ({c} > %s OR ({c} = %s AND"
               " (bucket > %s OR (bucket = %s AND k > %s))))" + (" AND " + where if where else "")
               + " ORDER BY {c}, bucket, k LIMIT %s").format(c=column)
        with self._cursor() as cursor:
            cursor.execute(self._sql(sql), (value, value, bucket, bucket, key) + tuple(params)
                           + (limit,))
            return [(row[0], record_of(row[1:])) for row in cursor.fetchall()]

    def rows_after(self, after: Tuple[bytes, bytes], limit: int) -> List[Record]:
        """All rows after (bucket, key) in (bucket, key) order, with values.

        :returns: list of :class:`Record`, at most ``limit``.
        :raises PartitionUnavailable: when the database does not answer.
        """
        bucket, key = after
        with self._cursor() as cursor:
            cursor.execute(self._sql("SELECT " + COLUMNS + " FROM kv_rows WHERE bucket > %s"
                                     " OR (bucket = %s AND k > %s) ORDER BY bucket, k LIMIT %s"),
                           (bucket, bucket, key, limit))
            return [record_of(row) for row in cursor.fetchall()]

    def store_if_newer(self, records: Sequence[Record]) -> List[Record]:
        """Store each record unless this partition's copy wins by :func:`winner_key`.

        One transaction for the whole batch (one locking query, multi-row
        statements): the check and the write of each row are atomic with
        respect to client writes.  The copies carry change epoch 0: a copy
        made by sync is no new change (sync delivers a row to every partition
        of its placement at once, and the change feed does not show copies).

        :returns: the records that were written.
        :raises PartitionUnavailable: when the database does not answer.
        """
        def body(cursor):
            stored = self._select_many(cursor, [(r.bucket, r.key) for r in records], True)
            newer = [r for r in records if (r.bucket, r.key) not in stored
                     or winner_key(r) > winner_key(stored[(r.bucket, r.key)])]
            self._store_many(cursor, newer, stored, "0")
            return newer
        return self._transact(body)

    def delete_if_unchanged(self, records: Sequence[Record]) -> int:
        """Delete the rows of ``records`` that still have their version and
        modified_us, in one transaction (one statement per 500 rows).

        :returns: how many rows were deleted (a row a client wrote meanwhile
            is kept).
        :raises PartitionUnavailable: when the database does not answer.
        """
        def body(cursor):
            deleted = 0
            for start in range(0, len(records), 500):
                chunk = records[start:start + 500]
                cursor.execute(self._sql(
                    "DELETE FROM kv_rows WHERE " + " OR ".join(
                        ["(bucket = %s AND k = %s AND version = %s AND modified_us = %s)"]
                        * len(chunk))),
                    [v for r in chunk for v in (r.bucket, r.key, r.version, r.modified_us)])
                deleted += cursor.rowcount
            return deleted
        return self._transact(body) if records else 0

    def get_state(self, name: bytes) -> Optional[Tuple[bytes, int]]:
        """(value, updated_us) of a kv_sync_state row, or None; updated_us is
        the partition's clock (:meth:`clock_us`) when it was written."""
        with self._cursor(op="state") as cursor:
            cursor.execute(self._sql("SELECT value, updated_us FROM kv_sync_state WHERE name = %s"),
                           (name,))
            row = cursor.fetchone()
        return (bytes(row[0]), row[1]) if row else None

    def set_state(self, name: bytes, value: bytes,
                  unless: Optional[Callable[[Optional[Tuple[bytes, int]], int], bool]] = None
                  ) -> bool:
        """Set a kv_sync_state row atomically; with ``unless(current, now_us)``
        true, leave it.  ``now_us`` and the stored updated_us are the
        partition's clock, so a lease's age never depends on a sync host's.

        :returns: True when the row was written.
        :raises PartitionUnavailable: when the database does not answer.
        """
        def body(cursor):
            cursor.execute(self._sql("SELECT value, updated_us FROM kv_sync_state WHERE name = %s"
                                     + self.FOR_UPDATE), (name,))
            row = cursor.fetchone()
            current = (bytes(row[0]), row[1]) if row else None
            now = self._clock(cursor)
            if unless is not None and unless(current, now):
                return False
            if row:
                cursor.execute(self._sql("UPDATE kv_sync_state SET value = %s, updated_us = %s"
                                         " WHERE name = %s"), (value, now, name))
            else:          # a concurrent insert of the same row makes it run again
                cursor.execute(self._sql("INSERT INTO kv_sync_state (name, value, updated_us)"
                                         " VALUES (%s, %s, %s)"), (name, value, now))
            return True
        return self._transact(body)

    def clock_us(self) -> int:
        """The partition's clock: microseconds since the Unix epoch (UTC), read
        from the database server (the embedded engine: this host's clock).

        :raises PartitionUnavailable: when the database does not answer.
        """
        with self._cursor(op="state") as cursor:
            return self._clock(cursor)

    def close_epoch(self) -> int:
        """Close the current change epoch and open the next one.

        Raising kv_change_epoch takes its row's exclusive lock, which waits
        until every client write that read the old epoch (under the shared
        lock, :attr:`STAMP`) has committed or rolled back.  So when this
        returns E, every row stamped E or lower is committed, and every later
        write is stamped above E: the rows of epochs 1..E are final for
        sync's incremental scan, whatever any clock says.

        :returns: E, the newest closed epoch.
        :raises PartitionUnavailable: when the database does not answer, or
            (not ``down``) when a write holds the old epoch past the
            statement timeout.
        """
        with self._cursor(transaction=True) as cursor:
            cursor.execute(self._sql(self.CLOSE_EPOCH))
            cursor.execute("SELECT epoch FROM kv_change_epoch WHERE id = 1")
            return int(cursor.fetchone()[0]) - 1
