"""The calls the change feed makes of a partition (API.md "Change feed"): the
rows of a bucket in change order up to the newest closed change epoch, and a
probe of what changed since an epoch, which tells the feed's poller which
buckets to wake and whether the open epoch holds committed rows.

Change order is the partition's change epoch (database_definition.sql,
kv_change_epoch): every row stamped below the current epoch N is committed
(raising the epoch waited for its writers), so reading "epochs below N"
never skips a row that commits late; rows of the open epoch N wait until an
epoch close (by the feed's poller or by sync) makes them final.
"""

from typing import List, Optional, Tuple

from kv.records import Record
from kv.storage.connection import NO_VALUE, record_of

#: Rows a probe reads at most; more means "many buckets changed".
PROBE_ROWS = 256


class FeedCalls:
    """What the change feed asks of a partition, on top of
    :class:`kv.storage.connection.Connection` (a mixin of
    :class:`kv.storage.partition.Partition`)."""

    def changes(self, bucket: bytes, after: Tuple[int, bytes], end: Tuple[bytes, Optional[bytes]],
                limit: int) -> Tuple[int, List[Tuple[int, Record, int]]]:
        """Rows of ``bucket`` written by clients after ``after`` in change
        order (change epoch, then key), from the closed epochs only.

        Served by the index (bucket, change_epoch), which InnoDB extends with
        the primary key's k, so the cost is the rows returned (plus those of
        the bucket outside the key range ``end``, which are skipped).

        :param after: (epoch, key): rows with (change_epoch, k) greater; a
            key of b"" means every row of that epoch (keys are never empty).
        :param end: (prefix start, exclusive end or None): only keys in that range.
        :param int limit: rows at most.
        :returns: (N, rows): N the partition's current (open) epoch, rows a
            list of (change epoch, :class:`Record` with an empty value, the
            value's size in bytes), tombstones and expired rows included,
            copies made by sync (epoch 0) excluded.
        :raises PartitionUnavailable: when the database does not answer.
        """
        epoch, key = after
        in_range, bounds = _key_range(end)
        sql = ("SELECT change_epoch, " + NO_VALUE + ", LENGTH(value) FROM kv_rows"
               " WHERE bucket = %s AND change_epoch < %s AND change_epoch > 0"
               " AND (change_epoch > %s OR (change_epoch = %s AND k > %s))" + in_range
               + " ORDER BY change_epoch, k LIMIT %s")
        with self._cursor(op="changes") as cursor:
            current = _current_epoch(cursor)
            cursor.execute(self._sql(sql), [bucket, current, epoch, epoch, key] + bounds + [limit])
            return current, _rows(cursor)

    def catch_up(self, bucket: bytes, after: bytes, end: Tuple[bytes, Optional[bytes]],
                 since_us: int, limit: int) -> Tuple[int, List[Tuple[int, Record, int]],
                                                     Optional[bytes]]:
        """Rows of ``bucket`` after key ``after`` in key order, copies made by
        sync included, modified at or after ``since_us``: what a feed reads
        of a partition it has no position on (since=0, or a partition added
        since the cursor: rebalancing stored there, as copies, writes that
        sync moved off another partition before the feed read them there).

        :param int since_us: microseconds since the Unix epoch.
        :param int limit: rows examined at most (the bucket's primary key range).
        :returns: (N, rows, last): N the current epoch, rows the matches as
            (change epoch, :class:`Record` with an empty value, value size),
            last the last key examined, None when the range is exhausted.
        :raises PartitionUnavailable: when the database does not answer.
        """
        in_range, bounds = _key_range(end)
        sql = ("SELECT change_epoch, " + NO_VALUE + ", LENGTH(value) FROM kv_rows"
               " WHERE bucket = %s AND k > %s" + in_range + " ORDER BY k LIMIT %s")
        with self._cursor(op="changes") as cursor:
            current = _current_epoch(cursor)
            cursor.execute(self._sql(sql), [bucket, after] + bounds + [limit])
            rows = _rows(cursor)
        last = rows[-1][1].key if len(rows) == limit else None
        return current, [r for r in rows if r[1].modified_us >= since_us], last

    def probe_changes(self, since: Optional[int]) -> Tuple[int, List[Tuple[bytes, int]]]:
        """The current change epoch and the newest rows stamped ``since`` or later.

        :param since: an epoch, or None to read the current epoch only.
        :returns: (N, rows): N the current (open) epoch; rows up to
            :data:`PROBE_ROWS` (bucket, change epoch) pairs, newest epoch
            first (rows[0] tells whether the open epoch holds committed rows).
        :raises PartitionUnavailable: when the database does not answer.
        """
        with self._cursor(op="changes") as cursor:
            current = _current_epoch(cursor)
            if since is None:
                return current, []
            cursor.execute(self._sql("SELECT bucket, change_epoch FROM kv_rows"
                                     " WHERE change_epoch >= %s ORDER BY change_epoch DESC LIMIT %s"),
                           (since, PROBE_ROWS))
            return current, [(bytes(row[0]), row[1]) for row in cursor.fetchall()]


def _current_epoch(cursor) -> int:
    """The partition's current (open) change epoch, read on ``cursor``."""
    cursor.execute("SELECT epoch FROM kv_change_epoch WHERE id = 1")
    return int(cursor.fetchone()[0])


def _key_range(end: Tuple[bytes, Optional[bytes]]) -> Tuple[str, list]:
    """(SQL condition, its parameters) keeping the keys of ``end``, a
    (first key, exclusive end or None) range."""
    low, high = end
    return (" AND k >= %s AND k < %s", [low, high]) if high is not None else (" AND k >= %s", [low])


def _rows(cursor) -> List[Tuple[int, Record, int]]:
    """The (change epoch, Record without its value, value size) of the rows
    selected as ``change_epoch, NO_VALUE, LENGTH(value)``."""
    return [(row[0], record_of(row[1:9]), row[9]) for row in cursor.fetchall()]
