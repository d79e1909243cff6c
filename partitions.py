"""This module provides partitions: the storage of one shard of the key space.

:class:`Partition` is the contract (documented in its docstring) and holds all
shared logic and SQL; the engines in engines.py (MySQL through mysqlclient,
embedded SQLite) override only connecting, transaction start and the
translation of driver errors.  Rows travel as records.py's :class:`Record`;
failures are records.py's errors.  Nothing here knows HTTP.
"""

import contextlib
import logging
import os
import time
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

from coalescing import Coalescer
from kv.configuration import PartitionSettings
from kv.errors import DatastoreError, PartitionUnavailable
from kv.records import Record, now_us, winner_key

log = logging.getLogger("kv.partition")

#: The most single-key reads / writes one coalesced query / transaction takes.
COALESCE_READS = 64
COALESCE_WRITES = 64

SCHEMA_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "database_definition.sql")


# -- the partition contract ---------------------------------------------------

_COLUMNS = "bucket, k, value, version, created_us, modified_us, expires_us, deleted"
_NO_VALUE = "bucket, k, X'', version, created_us, modified_us, expires_us, deleted"


def _record(row) -> Record:
    return Record(bytes(row[0]), bytes(row[1]), bytes(row[2]), row[3], row[4], row[5], row[6],
                  bool(row[7]))


_REASONS = {"down": "timeout or connection lost", "busy": "busy", "failed": "statement failed"}


class _Retry(Exception):
    """A transaction lost a race (duplicate insert, deadlock) and may be retried."""


#: ``elsewhere(keys)`` of a write: (key -> the newest copy on the other
#: partitions that may hold one, key -> PartitionUnavailable for the keys
#: whose other partitions could not all be read).
Elsewhere = Callable[[List[bytes]], Tuple[Dict[bytes, Record], Dict[bytes, PartitionUnavailable]]]


class WriteRequest(NamedTuple):
    """One single-key write queued for :meth:`Partition.write`.

    ``make(current, now_us)`` returns the record to store or raises;
    ``elsewhere`` reads the key's other copies (:data:`Elsewhere`); ``strict``
    says the outcome depends on the current copy (a delete or a condition), so
    the other copies are always read and an unreachable one fails the write;
    ``overwrite`` = (value, ttl_seconds) marks an unconditional put that may
    take the one-round-trip path.
    """
    bucket: bytes
    key: bytes
    make: Callable[[Optional[Record], int], Record]
    elsewhere: Optional[Elsewhere] = None
    overwrite: Optional[Tuple[bytes, Optional[int]]] = None
    strict: bool = False


class _Transaction:
    """The cursor of one transaction, with ``write`` for statements whose
    result is not read.

    With ``literal`` (an engine whose driver takes several statements in one
    round trip; ``literal(value) -> bytes`` quotes a parameter), BEGIN
    travels with the first statement and the writes, quoted here, with
    COMMIT: a read-check-write transaction costs two round trips, not four.
    Writes are sent early when they pass ``FOLD_BYTES``.
    """

    FOLD_BYTES = 4 << 20

    def __init__(self, cursor, begin: Sequence[str], literal: Optional[Callable[[object], bytes]]):
        self.cursor, self._literal = cursor, literal
        self._begin: Optional[Sequence[str]] = begin
        self._writes: List[bytes] = []
        self._bytes = 0
        self._over = False
        if literal is None:
            for statement in begin:
                cursor.execute(statement)
            self._begin = None

    def execute(self, sql: str, params=()) -> None:
        if self._begin is not None:
            self.cursor.execute("; ".join(list(self._begin) + [sql]), params)
            for _ in self._begin:
                self.cursor.nextset()
            self._begin = None
        else:
            self.cursor.execute(sql, params)

    def fetchone(self):
        return self.cursor.fetchone()

    def fetchall(self):
        return self.cursor.fetchall()

    @property
    def rowcount(self) -> int:
        return self.cursor.rowcount

    def write(self, sql: str, params: Sequence) -> None:
        if self._literal is None:
            self.cursor.execute(sql, params)
            return
        statement = self._quoted(sql, params)
        if self._writes and self._bytes + len(statement) > self.FOLD_BYTES:
            self._send([])
        self._writes.append(statement)
        self._bytes += len(statement)

    def final(self, statements: Sequence[Tuple[str, Sequence]]) -> List[tuple]:
        """Send ``statements`` and COMMIT in one round trip (folding engines
        only); the transaction is then over.

        :returns: per statement, (rows or None, affected or returned row count).
        """
        results = self._send([self._quoted(sql, params) for sql, params in statements]
                             + [b"COMMIT"])
        self._over = True
        return results[:len(statements)]

    def _quoted(self, sql: str, params: Sequence) -> bytes:
        return sql.encode("ascii") % tuple(map(self._literal, params))

    def _send(self, tail: List[bytes]) -> List[tuple]:
        """Send the pending BEGIN and writes, then ``tail``, in one packet;
        returns (rows or None, row count) of each statement of ``tail``."""
        head = [s.encode("ascii") for s in self._begin] if self._begin is not None else []
        skip = len(head) + len(self._writes)
        cursor, results = self.cursor, []
        cursor.execute(b"; ".join(head + self._writes + tail))
        while True:
            results.append((cursor.fetchall() if cursor.description else None, cursor.rowcount))
            if cursor.nextset() is None:
                break
        self._begin, self._writes, self._bytes = None, [], 0
        return results[skip:]

    def commit(self, conn) -> None:
        if self._over:
            return
        if self._writes:
            self._send([b"COMMIT"])
        elif self._begin is None:
            conn.commit()


class Partition:
    """One partition: a table ``kv_rows`` in one database, reached through a driver.

    Contract (every engine, checked by test/partition_contract.py):

    - ``read`` returns the stored row of (bucket, key) as it is, tombstones
      and expired rows included (the router decides what is live), or None.
    - ``write`` runs ``make(current, now_us)`` inside one transaction that
      holds the row lock, and stores the record it returns: the check and the
      write are atomic, so of concurrent conditional writes exactly one wins.
    - Every row a client write stores carries the partition's change epoch
      (database_definition.sql, kv_change_epoch), read under a shared lock at
      the start of the transaction; a copy stored by sync carries 0.
      :meth:`close_epoch` raises the epoch once every transaction that read
      the old one has committed, so the rows of a closed epoch are all there:
      change order never depends on a client's clock.
    - Concurrent ``read`` calls of one process share one query, and
      concurrent ``write`` calls one transaction (coalescing.py); each call
      still sees every write that completed before it began.
    - ``scan`` returns rows (tombstones included) in byte order of key.
    - Any failure to reach the database, or a timeout, raises
      :class:`PartitionUnavailable` (the driver exception in ``original``).
      When the database is unreachable (``down``) the partition then counts
      as down for ``retry_interval_seconds`` and fails fast meanwhile; a lock
      wait or statement timeout, a full connection pool or a refused
      statement is not ``down`` and marks nothing.  Nothing else leaks driver
      exceptions.

    Engines override ``_acquire``/``_release`` (connections), ``BEGIN``,
    ``STAMP`` and ``EPOCH`` (the change epoch of client writes), ``CLOCK``,
    ``FOR_UPDATE``, ``UPDATE_EXISTING`` (the upsert clause), ``FOLDS`` and
    ``_literal`` (to fold statements), ``_classify`` (driver error -> retry/busy/failed/down),
    ``_schema_statements`` and ``_run_schema``; SQL is written once with ``%s`` placeholders.
    """

    engine = ""
    BEGIN = "START TRANSACTION"
    #: Statements that start a client write's transaction after BEGIN: they
    #: take the shared lock of the change epoch.
    STAMP: Tuple[str, ...] = ()
    #: The SQL expression of the change epoch in a client write's statements.
    EPOCH = "(SELECT epoch FROM kv_change_epoch WHERE id = 1)"
    #: The statement that raises the change epoch (engines bound its lock wait).
    CLOSE_EPOCH = "UPDATE kv_change_epoch SET epoch = epoch + 1 WHERE id = 1"
    #: The SQL expression of the partition's clock (microseconds since the
    #: epoch, UTC); empty: this host's clock (an embedded engine).
    CLOCK = ""
    FOR_UPDATE = " FOR UPDATE"
    FOLDS = False        # the driver sends many statements in one round trip
    UPDATE_EXISTING = (" ON DUPLICATE KEY UPDATE value = VALUES(value), version = VALUES(version),"
                       " created_us = VALUES(created_us), modified_us = VALUES(modified_us),"
                       " expires_us = VALUES(expires_us), deleted = VALUES(deleted),"
                       " change_epoch = VALUES(change_epoch)")
    driver_errors: Tuple[type, ...] = ()

    def __init__(self, settings: PartitionSettings):
        self.settings = settings
        self.name = settings.name
        self._down_until = 0.0
        self._down_reason = ""
        self._reads = Coalescer(self._read_batch, COALESCE_READS)
        self._writes = Coalescer(self._write_batch, COALESCE_WRITES)

    def describe(self) -> str:
        """Client-safe one-line description (engine and location, no password)."""
        return self.engine

    def __repr__(self):
        return "<%s %s %s>" % (type(self).__name__, self.name, self.describe())

    # engine hooks
    def _acquire(self):
        raise NotImplementedError

    def _release(self, conn, broken: bool) -> None:
        raise NotImplementedError

    def _classify(self, exc: BaseException) -> str:
        """'retry' (a lost race), 'busy' (unavailable, not down), 'failed'
        (the statement failed on a healthy server: not down either) or 'down'
        (unreachable: fail fast for retry_interval_seconds)."""
        raise NotImplementedError

    def _sql(self, statement: str) -> str:
        return statement

    def _literal(self, conn) -> Optional[Callable[[object], bytes]]:
        """A function quoting one parameter as SQL when the driver sends many
        statements in one round trip (transactions then fold), else None."""
        return None

    def close(self) -> None:
        """Close the connections of this process."""

    # shared machinery
    def _unavailable(self, exc, reason, mark_down):
        if mark_down:
            self._down_until = time.monotonic() + self.settings.retry_interval_seconds
            self._down_reason = reason
        log.warning("%s unavailable (%s): %r", self.name, reason, exc)
        return PartitionUnavailable([self.name], reason, original=exc,
                                    retry_after_seconds=self.settings.retry_interval_seconds,
                                    down=mark_down)

    @contextlib.contextmanager
    def _cursor(self, transaction: bool = False, stamp: bool = False):
        """Yield a cursor; translate driver errors in this one place.

        With ``transaction``, the body runs between BEGIN and COMMIT and is
        rolled back on any exception; with ``stamp`` too, the transaction
        starts with ``STAMP`` (the shared lock of the change epoch), so its
        statements may use ``EPOCH``.
        """
        if time.monotonic() < self._down_until:
            raise PartitionUnavailable([self.name], self._down_reason or "down",
                                       retry_after_seconds=self.settings.retry_interval_seconds)
        try:
            conn = self._acquire()
        except self.driver_errors as e:
            kind = self._classify(e)
            raise self._unavailable(e, "cannot connect" if kind == "down" else _REASONS[kind],
                                    kind == "down") from e
        broken = False
        try:
            cursor = conn.cursor()
            if transaction:
                begin = (self.BEGIN,) + (self.STAMP if stamp else ())
                tx = _Transaction(cursor, begin, self._literal(conn))
                try:
                    yield tx
                    tx.commit(conn)
                except BaseException:
                    conn.rollback()
                    raise
            else:
                yield cursor
            cursor.close()
        except self.driver_errors as e:
            kind = self._classify(e)
            if kind == "retry":
                raise _Retry() from e
            broken = True
            raise self._unavailable(e, _REASONS[kind], kind == "down") from e
        finally:
            self._release(conn, broken)

    def ping(self) -> None:
        """Check that the database answers.

        :raises PartitionUnavailable: when it does not.
        """
        with self._cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchall()

    def read(self, bucket: bytes, key: bytes) -> Optional[Record]:
        """The stored row of (bucket, key), tombstones and expired rows included.

        Concurrent calls are coalesced into one :meth:`read_many` query.

        :returns: :class:`Record` or None.
        :raises PartitionUnavailable: when the database does not answer.
        """
        return self._reads.submit((bucket, key))

    def _read_batch(self, items: List[Tuple[bytes, bytes]]) -> List[Optional[Record]]:
        found = self.read_many(items)
        return [found.get(item) for item in items]

    def scan(self, bucket: bytes, start: bytes, inclusive: bool, end: Optional[bytes],
             limit: int) -> List[Tuple[Record, int]]:
        """Rows of ``bucket`` with start <(=) key < end in key byte order,
        without their values (a listing reads the values of the keys it
        returns afterwards, within its byte budget).

        :param bytes start: first key (``inclusive``) or the key to start after.
        :param bytes end: exclusive upper bound, or None.
        :param int limit: at most this many rows.
        :returns: list of (:class:`Record` with an empty value, the value's
            size in bytes), tombstones and expired rows included.
        :raises PartitionUnavailable: when the database does not answer.
        """
        sql = ("SELECT " + _NO_VALUE + ", LENGTH(value) FROM kv_rows WHERE bucket = %s"
               " AND k " + (">=" if inclusive else ">") + " %s")
        params = [bucket, start]
        if end is not None:
            sql += " AND k < %s"
            params.append(end)
        sql += " ORDER BY k LIMIT %s"
        params.append(limit)
        with self._cursor() as cursor:
            cursor.execute(self._sql(sql), params)
            return [(_record(row), row[8]) for row in cursor.fetchall()]

    def write(self, request: WriteRequest) -> Tuple[Record, Optional[Record]]:
        """Atomically read-check-write one key (a :class:`WriteRequest`).

        ``current`` is this partition's row, or, when that is missing or not
        live, the newer of it and the newest copy ``request.elsewhere`` finds
        on the other partitions (so versions continue and preconditions hold
        before sync has copied a key here); for a ``strict`` request the other
        copies are read whatever this row is, and when one of them cannot be
        read the write fails with that :class:`PartitionUnavailable` (API.md:
        a write decided on the current copy answers 503 rather than deciding
        on a stale replica).  ``make(current, now_us)`` returns the record to
        store or raises (nothing is then written for this call).

        Concurrent calls are coalesced into one :meth:`write_many`
        transaction per bucket, applied in arrival order: a later call on the
        same key sees the record of the earlier one as ``current``.

        ``overwrite`` = (value, ttl_seconds) says that ``make`` is an
        unconditional put of that value (API.md PUT without preconditions):
        on an engine that folds statements, a batch of such calls on distinct
        live rows, with at most FOLD_BYTES of values in all, is then written
        without running ``make``, in one round trip (lock, update, read back,
        commit); rows that are missing or not live go the ``make`` way.

        :returns: (record stored, current).
        :raises PartitionUnavailable: when the database does not answer.
        :raises Exception: whatever ``make`` raises.
        """
        return self._writes.submit(request)

    def _write_batch(self, items: List[WriteRequest]) -> list:
        if not (self.FOLDS and all(item.overwrite is not None for item in items)
                and len({item.bucket for item in items}) == 1
                and len({item.key for item in items}) == len(items)
                and sum(len(item.overwrite[0]) for item in items) <= _Transaction.FOLD_BYTES):
            return self._make_batch(items)
        try:
            done = self._transact(lambda tx: self._overwrite_live(tx, items), stamp=True)
        except DatastoreError as e:
            return [e] * len(items)
        rest = [i for i in range(len(items)) if i not in done]
        for i, outcome in zip(rest, self._make_batch([items[i] for i in rest])):
            done[i] = outcome
        return [done[i] for i in range(len(items))]

    def _overwrite_live(self, tx: _Transaction, items: List[WriteRequest]) -> dict:
        """The one-round-trip write of :meth:`write` (``overwrite`` given,
        one bucket, distinct keys): lock the rows, update the live ones with
        one statement, read them back, commit.  Returns index -> (record,
        current) for the rows that were live, which got written.

        The UPDATE does what ``make`` does to a live row: version + 1,
        modified_us = max(now, modified_us + 1), created_us kept, the new
        value and TTL (expires_us is assigned before modified_us, so it reads
        the old one whatever the sql_mode); test/partition_contract.py checks
        that both ways store the same records.
        """
        bucket, now = items[0].bucket, now_us()
        keys = [item.key for item in items]
        match = " WHERE bucket = %s AND k IN (" + ", ".join(["%s"] * len(keys)) + ")"
        where = " FROM kv_rows" + match
        values, expires = [], []
        for item in items:
            value, ttl = item.overwrite
            values += [item.key, value]
            expires += [item.key, now, ttl * 1_000_000] if ttl else [item.key]
        update = ("UPDATE kv_rows SET value = CASE k" + " WHEN %s THEN %s" * len(items)
                  + " END, version = version + 1, expires_us = CASE k"
                  + "".join(" WHEN %s THEN GREATEST(%s, modified_us + 1) + %s" if item.overwrite[1]
                            else " WHEN %s THEN NULL" for item in items)
                  + " END, modified_us = GREATEST(%s, modified_us + 1), change_epoch = "
                  + self.EPOCH + match + " AND deleted = 0 AND (expires_us IS NULL OR expires_us > %s)")
        results = tx.final([("SELECT " + _COLUMNS + where + self.FOR_UPDATE, [bucket] + keys),
                            (update, values + expires + [now, bucket] + keys + [now]),
                            ("SELECT " + _NO_VALUE + where, [bucket] + keys)])
        before = {record.key: record for record in map(_record, results[0][0])}
        after = {record.key: record for record in map(_record, results[2][0])}
        return {i: (after[item.key]._replace(value=item.overwrite[0]), before[item.key])
                for i, item in enumerate(items)
                if item.key in before and before[item.key].is_live(now)}

    def _make_batch(self, items: List[WriteRequest]) -> list:
        outcomes: list = [None] * len(items)
        by_bucket: dict = {}
        for i, item in enumerate(items):
            by_bucket.setdefault(item.bucket, []).append(i)
        for bucket, indexes in by_bucket.items():
            def apply(current, now, unknown, indexes=indexes):
                final = {}
                for i in indexes:
                    item = items[i]
                    if item.strict and item.key in unknown:
                        outcomes[i] = unknown[item.key]
                        continue
                    previous = current.get(item.key)
                    try:
                        record = item.make(previous, now)
                    except Exception as e:     # this call fails; the others go on
                        outcomes[i] = e
                        continue
                    outcomes[i] = (record, previous)
                    current[item.key] = final[item.key] = record
                return final
            group = [items[i] for i in indexes]
            try:
                self.write_many(bucket, list(dict.fromkeys(item.key for item in group)), apply,
                                next((item.elsewhere for item in group if item.elsewhere), None),
                                {item.key for item in group if item.strict})
            except DatastoreError as e:
                for i in indexes:
                    outcomes[i] = e
        return outcomes

    def _transact(self, body: Callable, stamp: bool = False):
        """Run ``body(cursor)`` in one transaction; run it again (at most 4
        times in all) when it loses a race (duplicate insert, deadlock).
        ``stamp``: a client write's transaction (see :meth:`_cursor`).

        :returns: what ``body`` returns.
        :raises PartitionUnavailable: when the database does not answer or
            the races go on.
        """
        for attempt in range(4):
            try:
                with self._cursor(transaction=True, stamp=stamp) as cursor:
                    return body(cursor)
            except _Retry:
                if attempt == 3:
                    raise PartitionUnavailable([self.name], "write conflict, retry") from None
        raise AssertionError("unreachable")

    # -- for sync.py ----------------------------------------------------------
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
        sql = ("SELECT {c}, " + _COLUMNS + " FROM kv_rows WHERE ({c} > %s OR ({c} = %s AND"
               " (bucket > %s OR (bucket = %s AND k > %s))))" + (" AND " + where if where else "")
               + " ORDER BY {c}, bucket, k LIMIT %s").format(c=column)
        with self._cursor() as cursor:
            cursor.execute(self._sql(sql), (value, value, bucket, bucket, key) + tuple(params)
                           + (limit,))
            return [(row[0], _record(row[1:])) for row in cursor.fetchall()]

    def rows_after(self, after: Tuple[bytes, bytes], limit: int) -> List[Record]:
        """All rows after (bucket, key) in (bucket, key) order, with values.

        :returns: list of :class:`Record`, at most ``limit``.
        :raises PartitionUnavailable: when the database does not answer.
        """
        bucket, key = after
        with self._cursor() as cursor:
            cursor.execute(self._sql("SELECT " + _COLUMNS + " FROM kv_rows WHERE bucket > %s"
                                     " OR (bucket = %s AND k > %s) ORDER BY bucket, k LIMIT %s"),
                           (bucket, bucket, key, limit))
            return [_record(row) for row in cursor.fetchall()]

    def _select_many(self, cursor, keys: Sequence[Tuple[bytes, bytes]], lock: bool) -> dict:
        by_bucket = {}
        for bucket, key in keys:
            by_bucket.setdefault(bucket, []).append(key)
        found = {}
        for bucket, names in by_bucket.items():
            for start in range(0, len(names), 500):
                chunk = names[start:start + 500]
                cursor.execute(self._sql(
                    "SELECT " + _COLUMNS + " FROM kv_rows WHERE bucket = %s AND k IN ("
                    + ", ".join(["%s"] * len(chunk)) + ")" + (self.FOR_UPDATE if lock else "")),
                    [bucket] + chunk)
                for row in cursor.fetchall():
                    record = _record(row)
                    found[(record.bucket, record.key)] = record
        return found

    def read_many(self, keys: Sequence[Tuple[bytes, bytes]]) -> dict:
        """The stored rows of many (bucket, key) pairs, 500 keys a query.

        :returns: dict (bucket, key) -> :class:`Record` for the rows that exist.
        :raises PartitionUnavailable: when the database does not answer.
        """
        with self._cursor() as cursor:
            return self._select_many(cursor, keys, lock=False)

    def write_many(self, bucket: bytes, keys: Sequence[bytes],
                   apply: Callable[[dict, int, dict], dict],
                   elsewhere: Optional[Elsewhere] = None, strict=frozenset()) -> dict:
        """Atomically read-check-write many keys of one bucket (POST /batch).

        One transaction: the rows of ``keys`` are locked; for those missing or
        not live here, and for every key in ``strict``, ``elsewhere(keys)``
        (:data:`Elsewhere`) reads the other copies and the newer one counts;
        then ``apply(current, now_us, unknown)`` gets key -> Record or None,
        and key -> PartitionUnavailable for the ``strict`` keys whose other
        copies could not all be read (their outcome is not to be decided
        here), and returns key -> Record to store for the keys it changed.
        Locked rows are updated in place by one multi-row upsert, new ones
        written by one multi-row INSERT (a concurrent insert of the same key
        makes the whole call run again), each stamped with the change epoch.

        :returns: what ``apply`` returned.
        :raises PartitionUnavailable: when the database does not answer.
        """
        def body(cursor):
            locked = self._select_many(cursor, [(bucket, k) for k in keys], True)
            stored = {k: r for (_, k), r in locked.items()}
            now = now_us()
            current = dict(stored)
            ask = [k for k in keys if k in strict or k not in stored or not stored[k].is_live(now)]
            unknown = {}
            if ask and elsewhere is not None:
                newest, unreachable = elsewhere(ask)
                for key, other in newest.items():
                    if current.get(key) is None or winner_key(other) > winner_key(current[key]):
                        current[key] = other
                unknown = {k: e for k, e in unreachable.items() if k in strict}
            final = apply(current, now, unknown)
            self._store_many(cursor, list(final.values()), locked, self.EPOCH)
            return final
        return self._transact(body, stamp=True)

    def _store_many(self, cursor, records: Sequence[Record], locked, epoch: str,
                    max_statement_bytes: int = 4 << 20) -> None:
        """Store ``records`` with the change epoch ``epoch`` (an SQL
        expression): a multi-row upsert for those whose (bucket, key) is in
        ``locked`` (rows this transaction holds: updated in place, cheaper
        than REPLACE's delete and insert), a multi-row INSERT for the new
        ones; at most 500 rows and about 4 MiB of values per statement."""
        row = "(%s, %s, %s, %s, %s, %s, %s, %s, " + epoch + ")"
        for replace in (True, False):
            rows = [r for r in records if ((r.bucket, r.key) in locked) == replace]
            start = 0
            while start < len(rows):
                end, size = start, 0
                while (end < len(rows) and end - start < 500
                       and (end == start or size < max_statement_bytes)):
                    size += len(rows[end].value)
                    end += 1
                chunk = rows[start:end]
                cursor.write(self._sql(
                    "INSERT INTO kv_rows (bucket, k, value, version, created_us, modified_us,"
                    " expires_us, deleted, change_epoch) VALUES " + ", ".join([row] * len(chunk))
                    + (self.UPDATE_EXISTING if replace else "")),
                    [v for r in chunk for v in (r.bucket, r.key, r.value, r.version,
                                                r.created_us, r.modified_us, r.expires_us,
                                                int(r.deleted))])
                start = end

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
        with self._cursor() as cursor:
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

    def _clock(self, cursor) -> int:
        if not self.CLOCK:
            return now_us()
        cursor.execute("SELECT " + self.CLOCK)
        return int(cursor.fetchone()[0])

    def clock_us(self) -> int:
        """The partition's clock: microseconds since the Unix epoch (UTC), read
        from the database server (the embedded engine: this host's clock).

        :raises PartitionUnavailable: when the database does not answer.
        """
        with self._cursor() as cursor:
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

    def _schema_statements(self) -> List[str]:
        with open(SCHEMA_PATH, encoding="utf-8") as f:
            text = "\n".join(line for line in f.read().splitlines()
                             if not line.lstrip().startswith("--"))
        return [s.strip() for s in text.split(";") if s.strip()]

    def apply_schema(self) -> None:
        """Create the tables and indexes of database_definition.sql (idempotent).

        :raises PartitionUnavailable: when the database does not answer.
        """
        with self._cursor() as cursor:
            self._run_schema(cursor)

    def _run_schema(self, cursor) -> None:
        for statement in self._schema_statements():
            cursor.execute(statement)
