"""The SQL machinery shared by every partition engine: connecting, running
statements and transactions, translating driver errors, and the schema.

Rows travel as kv.records' :class:`Record`; failures are kv.errors'.
Nothing here knows HTTP.
"""

import contextlib
import logging
import os
import time
from typing import Callable, List, Optional, Sequence, Tuple

from kv.configuration import PartitionSettings
from kv.errors import PartitionUnavailable
from kv.metrics import count_partition_error, observe_query
from kv.records import Record, now_us
from kv.storage.transaction import Retry, Transaction

log = logging.getLogger("kv.partition")

SCHEMA_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), "database_definition.sql")

COLUMNS = "bucket, k, value, version, created_us, modified_us, expires_us, deleted"
NO_VALUE = "bucket, k, X'', version, created_us, modified_us, expires_us, deleted"


def record_of(row) -> Record:
    """The :class:`Record` of a row selected as :data:`COLUMNS` (or :data:`NO_VALUE`)."""
    return Record(bytes(row[0]), bytes(row[1]), bytes(row[2]), row[3], row[4], row[5], row[6],
                  bool(row[7]))


_REASONS = {"down": "timeout or connection lost", "busy": "busy", "failed": "statement failed"}


class Connection:
    """The SQL machinery of one partition: a table ``kv_rows`` in one
    database, reached through a driver.

    It connects, runs statements and transactions (:meth:`_cursor`,
    :meth:`_transact`), translates every driver error in one place (into
    :class:`PartitionUnavailable`, marking the partition down for
    ``retry_interval_seconds`` only when the database is unreachable), and
    applies the schema.  Engines override ``_acquire``/``_release``
    (connections), ``BEGIN``, ``STAMP`` and ``EPOCH`` (the change epoch of
    client writes), ``CLOSE_EPOCH``, ``CLOCK``, ``FOR_UPDATE``,
    ``UPDATE_EXISTING`` (the upsert clause), ``FOLDS`` and ``_literal`` (to
    fold statements), ``_classify`` (driver error -> retry/busy/failed/down),
    ``_schema_statements`` and ``_run_schema``; SQL is written once with
    ``%s`` placeholders.

    :param PartitionSettings settings: the partition's section of the configuration.
    :param clock: ``clock()`` -> microseconds since the Unix epoch (UTC): the
        time of the web node, which stamps ``modified``; tests inject one.
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

    def __init__(self, settings: PartitionSettings, clock: Callable[[], int] = now_us):
        self.settings = settings
        self.name = settings.name
        self.clock = clock
        self._down_until = 0.0
        self._down_reason = ""

    def describe(self) -> str:
        """Client-safe one-line description (engine and location, no password)."""
        return self.engine

    def __repr__(self):
        return "<%s %s %s>" % (type(self).__name__, self.name, self.describe())

    # engine hooks

    def _acquire(self, schema: bool = False):
        """A connection; ``schema``: one without the request timeouts."""
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

    def _packet(self, conn) -> Optional[Callable[[bytes], List[tuple]]]:
        """With :meth:`_literal`: a function sending statements joined by
        ``;`` in one round trip and returning (rows or None, row count) per
        statement (:class:`~kv.storage.transaction.Transaction`), else None."""
        return None

    def _fetch(self, cursor) -> Callable[[str, Sequence], Sequence[tuple]]:
        """A function running one SELECT outside a transaction and returning
        its rows, on ``cursor``'s connection (engines may use the driver's
        lower-level calls: it is the hot read)."""
        def fetch(sql, params):
            cursor.execute(self._sql(sql), params)
            return cursor.fetchall()
        return fetch

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
    def _cursor(self, transaction: bool = False, stamp: bool = False, schema: bool = False,
                op: Optional[str] = None):
        """Yield a cursor; translate driver errors in this one place.

        With ``transaction``, the body runs between BEGIN and COMMIT and is
        rolled back on any exception; with ``stamp`` too, the transaction
        starts with ``STAMP`` (the shared lock of the change epoch), so its
        statements may use ``EPOCH``; ``schema``: on a connection without
        the request timeouts.  Each use is timed (kv.metrics,
        ``kv_partition_query_duration_seconds``, from checkout to release)
        under ``op`` (default write for a transaction, schema, else read);
        each failure is counted by kind (``kv_partition_errors_total``).
        """
        if time.monotonic() < self._down_until:
            count_partition_error(self.name, "skipped")
            raise PartitionUnavailable([self.name], self._down_reason or "down",
                                       retry_after_seconds=self.settings.retry_interval_seconds)
        started = time.perf_counter()
        try:
            conn = self._acquire(schema) if schema else self._acquire()
        except self.driver_errors as e:
            kind = self._classify(e)
            count_partition_error(self.name, kind)
            raise self._unavailable(e, "cannot connect" if kind == "down" else _REASONS[kind],
                                    kind == "down") from e
        broken = False
        try:
            cursor = conn.cursor()
            if transaction:
                begin = (self.BEGIN,) + (self.STAMP if stamp else ())
                tx = Transaction(cursor, begin, self._literal(conn), self._packet(conn))
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
            count_partition_error(self.name, kind)
            if kind == "retry":
                raise Retry() from e
            broken = True
            raise self._unavailable(e, _REASONS[kind], kind == "down") from e
        finally:
            self._release(conn, broken)
            observe_query(self.name, op or ("write" if transaction else "schema" if schema
                                            else "read"), time.perf_counter() - started)

    def ping(self) -> None:
        """Check that the database answers.

        :raises PartitionUnavailable: when it does not.
        """
        with self._cursor(op="ping") as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchall()

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
            except Retry:
                if attempt == 3:
                    raise PartitionUnavailable([self.name], "write conflict, retry",
                                               down=False) from None
        raise AssertionError("unreachable")

    def _select_many(self, cursor, keys: Sequence[Tuple[bytes, bytes]], lock: bool) -> dict:
        """(bucket, key) -> Record of the rows of ``keys``; ``lock``: in a
        transaction (``cursor`` a Transaction, which folds BEGIN into its first
        statement: the cursor's way), FOR UPDATE."""
        fetch = Connection._fetch(self, cursor) if lock else self._fetch(cursor)
        by_bucket = {}
        for bucket, key in keys:
            by_bucket.setdefault(bucket, []).append(key)
        found = {}
        for bucket, names in by_bucket.items():
            for start in range(0, len(names), 500):
                chunk = names[start:start + 500]
                for row in fetch("SELECT " + COLUMNS + " FROM kv_rows WHERE bucket = %s AND k IN ("
                                 + ", ".join(["%s"] * len(chunk)) + ")"
                                 + (self.FOR_UPDATE if lock else ""), [bucket] + chunk):
                    record = record_of(row)
                    found[(record.bucket, record.key)] = record
        return found

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

    def _clock(self, cursor) -> int:
        if not self.CLOCK:
            return self.clock()
        cursor.execute("SELECT " + self.CLOCK)
        return int(cursor.fetchone()[0])

    def _schema_statements(self) -> List[str]:
        with open(SCHEMA_PATH, encoding="utf-8") as f:
            text = "\n".join(line for line in f.read().splitlines()
                             if not line.lstrip().startswith("--"))
        return [s.strip() for s in text.split(";") if s.strip()]

    def apply_schema(self) -> None:
        """Create the tables and indexes of database_definition.sql (idempotent).

        :raises PartitionUnavailable: when the database does not answer.
        """
        with self._cursor(schema=True) as cursor:
            self._run_schema(cursor)

    def _run_schema(self, cursor) -> None:
        for statement in self._schema_statements():
            cursor.execute(statement)
