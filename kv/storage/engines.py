"""This module provides the partition engines: MySQL/MariaDB through
mysqlclient (one connection per thread, kv.storage.threadconn) and
embedded SQLite.

Each overrides only what differs from the :class:`kv.storage.partition.Partition`
contract: connecting, starting a transaction, the placeholder style, quoting
for folded statements (MySQL), the schema's spellings (SQLite) and the
classification of driver errors.  :data:`ENGINES` maps ``engine =`` in
configuration.cfg to a class.
"""

import os
import re
import threading

from typing import Callable

from kv.configuration import PartitionSettings
from kv.records import now_us
from kv.storage.partition import Partition
from kv.storage.threadconn import ConnectionsExhausted, ThreadConnections

PING_AFTER_IDLE_SECONDS = 1.0   # a pooled connection idle this long is pinged before use
STATEMENT_SHARE = 0.75          # max_statement_time as a share of read_timeout_seconds


class MySQLPartition(Partition):
    """A partition in a MySQL/MariaDB database, through mysqlclient.

    Connections are autocommit (no REPEATABLE READ snapshot is left open
    between requests), READ COMMITTED, with the configured connect/read/write
    timeouts (seconds), one per thread that uses the partition
    (:class:`~kv.storage.threadconn.ThreadConnections`: at most ``pool_size``
    per process, a thread beyond it waits at most connect_timeout_seconds),
    pinged before use after PING_AFTER_IDLE_SECONDS idle, so connections broken
    by a server restart are replaced.  Every statement, row-lock waits
    included, is cut by the server at STATEMENT_SHARE of the read timeout
    (``max_statement_time``): a slow lock answers "busy" (MariaDB error 1969)
    before the client's read timeout would take the partition for down.  Multi-statement packets are on, so a
    transaction folds BEGIN and COMMIT into its other statements; every
    parameter is still escaped by the driver (``string_literal``, which is
    mysql_real_escape_string), and no statement text comes from clients.
    """

    engine = "mysql"
    FOLDS = True
    STAMP = ("SELECT epoch INTO @kv_epoch FROM kv_change_epoch WHERE id = 1 LOCK IN SHARE MODE",)
    EPOCH = "@kv_epoch"
    CLOCK = "TIMESTAMPDIFF(MICROSECOND, '1970-01-01', UTC_TIMESTAMP(6))"
    # Writes that read the old epoch commit within milliseconds; new writes
    # queue behind this lock request, so it waits little and briefly.
    CLOSE_EPOCH = ("SET STATEMENT max_statement_time = 0.25 FOR "
                   + Partition.CLOSE_EPOCH)

    def __init__(self, settings: PartitionSettings, clock: Callable[[], int] = now_us):
        super().__init__(settings, clock)
        import MySQLdb
        import MySQLdb.constants.CLIENT
        self._driver = MySQLdb
        self._multi_statements = MySQLdb.constants.CLIENT.MULTI_STATEMENTS
        self.driver_errors = (MySQLdb.Error, ConnectionsExhausted)
        self._connections = ThreadConnections(
            self._connect, settings.pool_size, settings.connect_timeout_seconds,
            PING_AFTER_IDLE_SECONDS, settings.read_timeout_seconds / 2, (MySQLdb.Error,))

    def describe(self) -> str:
        s = self.settings
        return "mysql %s@%s:%d/%s" % (s.user, s.host, s.port, s.database)

    def _connect(self, schema: bool = False):
        """A new connection; ``schema``: one with no read timeout and no
        statement time limit, for the schema (building an index on a large
        table, an upgrade, takes minutes)."""
        s = self.settings
        timeouts = {} if schema else {"read_timeout": s.read_timeout_seconds,
                                      "write_timeout": s.write_timeout_seconds}
        return self._driver.connect(
            host=s.host, port=s.port, user=s.user, password=s.password, database=s.database,
            connect_timeout=s.connect_timeout_seconds, autocommit=True, charset="utf8mb4",
            client_flag=self._multi_statements, **timeouts,
            init_command="SET SESSION tx_isolation = 'READ-COMMITTED', max_statement_time = %.3f"
                         % (0 if schema else s.read_timeout_seconds * STATEMENT_SHARE))

    def _acquire(self, schema: bool = False):
        if schema:
            return self._connect(schema=True)
        return self._connections.acquire()

    def _literal(self, conn):
        # mysql_real_escape_string through the driver, as the driver itself
        # quotes bytes; ints and NULL need no escaping.  Faster than the
        # driver's generic per-parameter dispatch on multi-row statements.
        quote, generic = conn.string_literal, conn.literal

        def literal(value):
            kind = value.__class__
            if kind is bytes:
                return quote(value)
            if kind is int or kind is bool:
                return b"%d" % value
            return b"NULL" if value is None else generic(value)
        return literal

    def _packet(self, conn):
        # The driver's low-level calls (mysql_real_query, store_result,
        # next_result): the cursor's Python layer cost about 35 us a query.
        def packet(statements: bytes):
            conn.query(statements)
            results = []
            while True:
                result = conn.store_result()
                results.append((result.fetch_row(0) if result is not None else None,
                                conn.affected_rows()))
                if conn.next_result() != 0:
                    return results
        return packet

    def _fetch(self, cursor):
        conn, literal = cursor.connection, self._literal(cursor.connection)

        def fetch(sql, params):
            conn.query(sql.encode("ascii") % tuple(map(literal, params)))
            result = conn.store_result()
            return result.fetch_row(0) if result is not None else ()
        return fetch

    def _release(self, conn, broken):
        self._connections.release(conn, broken)      # closes a schema connection

    # Server errors that mean the connection or the server is gone; every
    # client-library error (2000-2999: cannot connect, server gone, lost
    # connection, timeouts) means that too.
    _GONE = frozenset((1045, 1049, 1053, 1152, 1184, 1927, 4031))

    def _classify(self, exc):
        if isinstance(exc, ConnectionsExhausted):
            return "busy"                  # every connection of this process is in use
        code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else 0
        if code in (1062, 1213):           # duplicate key, deadlock
            return "retry"
        if code in (1205, 1040, 1969):     # lock wait, too many connections, statement timeout
            return "busy"
        if 1000 <= code < 2000 and code not in self._GONE:
            return "failed"                # the statement failed; the server is fine
        return "down"

    def close(self):
        self._connections.close()


class SQLitePartition(Partition):
    """A partition in an embedded SQLite file (``path``), for development.

    One connection per thread (re-opened after a fork), WAL journal, writers
    serialised by BEGIN IMMEDIATE, waiting at most read_timeout_seconds for a
    lock.  The schema is applied on first connection.
    """

    engine = "sqlite"
    BEGIN = "BEGIN IMMEDIATE"
    FOR_UPDATE = ""
    UPDATE_EXISTING = (" ON CONFLICT (bucket, k) DO UPDATE SET value = excluded.value,"
                       " version = excluded.version, created_us = excluded.created_us,"
                       " modified_us = excluded.modified_us, expires_us = excluded.expires_us,"
                       " deleted = excluded.deleted, change_epoch = excluded.change_epoch")

    def __init__(self, settings: PartitionSettings, clock: Callable[[], int] = now_us):
        super().__init__(settings, clock)
        import sqlite3
        self._sqlite3 = sqlite3
        self.driver_errors = (sqlite3.Error,)
        self._local = threading.local()
        self._schema_ready = False

    def describe(self) -> str:
        return "sqlite %s" % self.settings.path

    def _sql(self, statement):
        return statement.replace("%s", "?")

    def _acquire(self, schema: bool = False):
        local = self._local
        if getattr(local, "pid", None) != os.getpid():
            os.makedirs(os.path.dirname(self.settings.path) or ".", exist_ok=True)
            conn = self._sqlite3.connect(self.settings.path, timeout=self.settings.read_timeout_seconds,
                                         isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            if not self._schema_ready:
                self._run_schema(conn)
                self._schema_ready = True
            local.conn, local.pid = conn, os.getpid()
        return local.conn

    def _release(self, conn, broken):
        if broken:
            self._local.pid = None
            conn.close()

    def _classify(self, exc):
        if isinstance(exc, self._sqlite3.IntegrityError):
            return "retry"
        if "locked" in str(exc) or "busy" in str(exc):
            return "busy"
        return "down"

    _SPELLINGS = ((r"VARBINARY\(\d+\)|MEDIUMBLOB", "BLOB"), (r"\)\s*ENGINE=InnoDB", ") WITHOUT ROWID"),
                  (r"(ADD|DROP) COLUMN IF (NOT )?EXISTS", r"\1 COLUMN"),
                  (r"(DROP INDEX IF EXISTS \w+) ON \w+", r"\1"), (r"INSERT IGNORE", "INSERT OR IGNORE"))
    # What SQLite says where MariaDB's IF [NOT] EXISTS would have skipped the statement.
    _SKIPPED = ("duplicate column name", "no such column")

    # SQLite ignores declared lengths, and the schema's MODIFY COLUMN only
    # widens a column: nothing to do (and SQLite has no MODIFY).
    _NOTHING_TO_DO = re.compile(r"ALTER TABLE \w+ MODIFY COLUMN ")

    def _schema_statements(self):
        statements = [s for s in super()._schema_statements() if not self._NOTHING_TO_DO.match(s)]
        for pattern, spelling in self._SPELLINGS:
            statements = [re.sub(pattern, spelling, s) for s in statements]
        return statements

    def _run_schema(self, cursor) -> None:
        # SQLite has no ADD/DROP COLUMN IF [NOT] EXISTS: such a statement is skipped by its error.
        for statement in self._schema_statements():
            try:
                cursor.execute(statement)
            except self._sqlite3.OperationalError as e:
                if not str(e).startswith(self._SKIPPED):
                    raise

    def close(self):
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.pid = None


ENGINES = {"mysql": MySQLPartition, "sqlite": SQLitePartition}


def make_partition(settings: PartitionSettings, clock: Callable[[], int] = now_us) -> Partition:
    """Build the partition of ``settings.engine`` (a key of :data:`ENGINES`)."""
    return ENGINES[settings.engine](settings, clock)
