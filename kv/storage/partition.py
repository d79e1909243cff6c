"""This module provides partitions: the storage of one shard of the key space.

:class:`Partition` is the contract (documented in its docstring): client reads
and writes here, the calls of sync in kv.storage.replication, the SQL
machinery in kv.storage.connection; the engines in kv.storage.engines
(MySQL through mysqlclient, embedded SQLite) override only connecting,
transaction start and the translation of driver errors.  A partition stores
what it is given and never calls up into the router.
"""

from typing import Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

from kv.configuration import PartitionSettings
from kv.errors import DatastoreError, PartitionUnavailable
from kv.records import Record, now_us, winner_key
from kv.storage.coalescing import Coalescer
from kv.storage.connection import COLUMNS, NO_VALUE, Connection, record_of
from kv.storage.feed import FeedCalls
from kv.storage.replication import ReplicationCalls
from kv.storage.transaction import Transaction

#: The most single-key reads / writes one coalesced query / transaction takes.
COALESCE_READS = 64
COALESCE_WRITES = 64
#: Index rows one step of the walk over buckets reads at most (scan_buckets,
#: scan_key_across).
WALK_ROWS = 1000

#: What the router read of a key's other copies: (the newest one, or None;
#: a PartitionUnavailable naming the partitions of its placement that could
#: not be read, or None).
Others = Tuple[Optional[Record], Optional[PartitionUnavailable]]

#: No other copy exists (a new key, as far as the caller knows).
NO_OTHERS: Others = (None, None)


class NeedOthers(Exception):
    """The write cannot be decided without the key's other copies, and came
    without them: ``keys`` are missing or not live here (or the write is
    strict).  Nothing was written; the router reads them and sends it again.

    :ivar list keys: the keys whose other copies are needed.
    """

    def __init__(self, keys: Sequence[bytes]):
        super().__init__("the other copies of %d keys are needed" % len(keys))
        self.keys = list(keys)


class WriteRequest(NamedTuple):
    """One single-key write queued for :meth:`Partition.write`: data, so the
    partition stores what it is given and never calls up into the router.

    ``make(current, now_us)`` is the write's rule (kv.records.put_record or
    tombstone, with the request's value and condition bound) and returns the
    record to store or raises; ``others`` is what the router read of the
    key's other copies (:data:`Others`), or None when it has not read them;
    ``strict`` says the outcome depends on the current copy (a delete or a
    condition), so it needs ``others`` whatever this row is, and an
    unreachable copy fails the write; ``overwrite`` = (value, ttl_seconds)
    marks an unconditional put that may take the one-round-trip path.
    """
    bucket: bytes
    key: bytes
    make: Callable[[Optional[Record], int], Record]
    others: Optional[Others] = None
    overwrite: Optional[Tuple[bytes, Optional[int]]] = None
    strict: bool = False


class Partition(FeedCalls, ReplicationCalls, Connection):
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
    - ``scan`` returns rows (tombstones included) in byte order of key;
      ``scan_buckets`` the names of the buckets holding a live row, and
      ``scan_key_across`` the rows of one key in a range of buckets, in
      byte order of bucket (both walk the primary key in bounded steps).
    - Any failure to reach the database, or a timeout, raises
      :class:`PartitionUnavailable` (the driver exception in ``original``).
      When the database is unreachable (``down``) the partition then counts
      as down for ``retry_interval_seconds`` and fails fast meanwhile; a lock
      wait or statement timeout, a full connection pool or a refused
      statement is not ``down`` and marks nothing.  Nothing else leaks driver
      exceptions.

    :param PartitionSettings settings: the partition's section of the configuration.
    """

    def __init__(self, settings: PartitionSettings, clock: Callable[[], int] = now_us):
        super().__init__(settings, clock)
        self._reads = Coalescer(self._read_batch, COALESCE_READS)
        self._writes = Coalescer(self._write_batch, COALESCE_WRITES)

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

    def read_many(self, keys: Sequence[Tuple[bytes, bytes]]) -> dict:
        """The stored rows of many (bucket, key) pairs, 500 keys a query.

        :returns: dict (bucket, key) -> :class:`Record` for the rows that exist.
        :raises PartitionUnavailable: when the database does not answer.
        """
        with self._cursor() as cursor:
            return self._select_many(cursor, keys, lock=False)

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
        sql = ("SELECT " + NO_VALUE + ", LENGTH(value) FROM kv_rows WHERE bucket = %s"
               " AND k " + (">=" if inclusive else ">") + " %s")
        params = [bucket, start]
        if end is not None:
            sql += " AND k < %s"
            params.append(end)
        sql += " ORDER BY k LIMIT %s"
        params.append(limit)
        with self._cursor(op="scan") as cursor:
            cursor.execute(self._sql(sql), params)
            return [(record_of(row), row[8]) for row in cursor.fetchall()]

    def _bucket_walk(self, start: bytes, inclusive: bool, end: Optional[bytes],
                     rows: int) -> Tuple[str, list]:
        """One step of the walk over the buckets: the SQL of a derived table
        ``(bucket, n)``, the distinct buckets among the next ``rows`` rows of
        the primary key after ``start`` (or from it, ``inclusive``) and below
        ``end`` (None: no end), each with ``n`` its rows among them; and its
        parameters.  A step reads at most ``rows`` index rows and moves past
        at least one bucket: a step that ends inside a large bucket resumes
        after it, so a bucket of a million keys costs one step, not a million
        rows, and a range of small buckets up to ``rows`` names a step.  (A
        skip scan of the index in one statement is not portable: MariaDB
        10.11 chooses its loose index scan only when the statistics say the
        buckets are large on average, and a recursive query of index dives
        took minutes there for 100 names: its correlated subquery read the
        range again at each step.)
        """
        sql = ("SELECT bucket, COUNT(*) AS n FROM (SELECT bucket FROM kv_rows WHERE bucket "
               + (">=" if inclusive else ">") + " %s")
        params: list = [start]
        if end is not None:
            sql += " AND bucket < %s"
            params.append(end)
        return sql + " ORDER BY bucket, k LIMIT %s) t GROUP BY bucket", params + [rows]

    def scan_buckets(self, start: bytes, inclusive: bool, end: Optional[bytes],
                     limit: int) -> List[bytes]:
        """Distinct names of the buckets that hold at least one live row here
        (not a tombstone, not expired at this partition's ``clock()``), in
        byte order, from ``start`` (``inclusive``) or after it, below ``end``.

        Cost: it walks the primary key (bucket, k) in steps of at most
        WALK_ROWS index rows (:meth:`_bucket_walk`: a step moves past at
        least one bucket, skipping the rest of a large one), and for each
        bucket it passes reads that bucket's rows in key order up to its
        first live one: a bucket whose rows are all tombstones or expired is
        read whole.  Steps go on until ``limit`` live buckets are found or
        the range ends; fewer than ``limit`` names means the range is done.

        :param bytes start: first name (``inclusive``) or the name to start after.
        :param bytes end: exclusive upper bound, or None for no end.
        :param int limit: at most this many names (>= 1).
        :returns: list of bucket names (bytes).
        :raises PartitionUnavailable: when the database does not answer.
        """
        now = self.clock()
        rows = min(WALK_ROWS, max(limit, 100))
        found: List[bytes] = []
        with self._cursor(op="scan") as cursor:
            while len(found) < limit:
                walk, params = self._bucket_walk(start, inclusive, end, rows)
                cursor.execute(self._sql(
                    "SELECT g.bucket, g.n, EXISTS (SELECT 1 FROM kv_rows r"
                    " WHERE r.bucket = g.bucket AND r.deleted = 0"
                    " AND (r.expires_us IS NULL OR r.expires_us > %s))"
                    " FROM (" + walk + ") g ORDER BY g.bucket"), [now] + params)
                step = cursor.fetchall()
                found += [bytes(name) for name, _, live in step if live]
                if sum(n for _, n, _ in step) < rows:
                    break
                start, inclusive = bytes(step[-1][0]), False
        return found[:limit]

    def scan_key_across(self, start: bytes, inclusive: bool, end: Optional[bytes], key: bytes,
                        limit: int) -> List[Record]:
        """The rows of ``key`` in the buckets from ``start`` (``inclusive``)
        or after it, below ``end``, in bucket byte order, with their values;
        tombstones and expired rows included (the router decides what is
        live).  The range of an app ``notes`` is ``b"notes:"`` to ``b"notes;"``.

        Cost: the walk of :meth:`scan_buckets` (steps of at most WALK_ROWS
        index rows) with a point read of (bucket, key) for each bucket it
        passes, then a second statement reads the values of at most the
        rows still wanted, so a call reads at most ``limit`` values.  Steps
        go on until ``limit`` rows are found or the range ends: a key that
        few buckets of a large app hold walks every bucket of the range.

        :param bytes start: first bucket (``inclusive``) or the bucket to start after.
        :param bytes end: exclusive upper bound of the bucket, or None.
        :param bytes key: the key (not validated here).
        :param int limit: at most this many rows (>= 1).
        :returns: list of :class:`Record` with values.
        :raises PartitionUnavailable: when the database does not answer.
        """
        found: List[Record] = []
        with self._cursor(op="scan") as cursor:
            while len(found) < limit:
                walk, params = self._bucket_walk(start, inclusive, end, WALK_ROWS)
                cursor.execute(self._sql(
                    "SELECT g.bucket, g.n, r.k FROM (" + walk + ") g LEFT JOIN kv_rows r"
                    " ON r.bucket = g.bucket AND r.k = %s ORDER BY g.bucket"), params + [key])
                step = cursor.fetchall()
                holding = [bytes(bucket) for bucket, _, k in step if k is not None]
                wanted = holding[:limit - len(found)]
                if wanted:
                    cursor.execute(self._sql(
                        "SELECT " + COLUMNS + " FROM kv_rows WHERE k = %s AND bucket IN ("
                        + ", ".join(["%s"] * len(wanted)) + ") ORDER BY bucket"), [key] + wanted)
                    found += [record_of(row) for row in cursor.fetchall()]
                if len(wanted) < len(holding):     # the rest of the step comes in the next call
                    start, inclusive = wanted[-1], False
                    continue
                if sum(n for _, n, _ in step) < WALK_ROWS:
                    break
                start, inclusive = bytes(step[-1][0]), False
        return found

    def write(self, request: WriteRequest) -> Tuple[Record, Optional[Record]]:
        """Atomically read-check-write one key (a :class:`WriteRequest`).

        ``current`` is this partition's row, or, when that is missing or not
        live, the newer of it and ``request.others`` (the newest copy the
        router read on the other partitions, so versions continue and
        preconditions hold before sync has copied a key here); a ``strict``
        request uses ``others`` whatever this row is, and when one of the
        other copies could not be read the write fails with that
        :class:`PartitionUnavailable` (API.md: a write decided on the current
        copy answers 503 rather than deciding on a stale replica).  When
        ``others`` is needed and was not given, nothing is written and the
        outcome is :class:`NeedOthers`.  ``make(current, now_us)`` returns the
        record to store or raises (nothing is then written for this call).

        Concurrent calls are coalesced into one :meth:`write_many`
        transaction per bucket, applied in arrival order: a later call on the
        same key sees the record of the earlier one as ``current``.

        ``overwrite`` = (value, ttl_seconds) says that ``make`` is an
        unconditional put of that value (API.md PUT without preconditions):
        on an engine that folds statements, a batch of such calls on distinct
        live rows, with at most FOLD_BYTES of values in all, is then written
        without running ``make``, in one round trip (lock, update, commit);
        rows that are missing or not live go the ``make`` way.

        :returns: (record stored, current); on the one-round-trip way
            ``current`` carries no value (its ``value`` is empty).
        :raises PartitionUnavailable: when the database does not answer.
        :raises Exception: whatever ``make`` raises.
        """
        return self._writes.submit(request)

    def _write_batch(self, items: List[WriteRequest]) -> list:
        if not (self.FOLDS and all(item.overwrite is not None for item in items)
                and len({item.bucket for item in items}) == 1
                and len({item.key for item in items}) == len(items)
                and sum(len(item.overwrite[0]) for item in items) <= Transaction.FOLD_BYTES):
            return self._make_batch(items)
        try:
            done = self._transact(lambda tx: self._overwrite_live(tx, items), stamp=True)
        except DatastoreError as e:
            return [e] * len(items)
        rest = [i for i in range(len(items)) if i not in done]
        for i, outcome in zip(rest, self._make_batch([items[i] for i in rest])):
            done[i] = outcome
        return [done[i] for i in range(len(items))]

    def _overwrite_live(self, tx: Transaction, items: List[WriteRequest]) -> dict:
        """The one-round-trip write of :meth:`write` (``overwrite`` given,
        one bucket, distinct keys): lock the rows (reading them without
        their values), update the live ones with one statement, commit.
        Returns index -> (record, current) for the rows that were live, which
        got written.

        The UPDATE does what ``make`` does to a live row: version + 1,
        modified_us = max(now, modified_us + 1), created_us kept, the new
        value and TTL (expires_us is assigned before modified_us, so it reads
        the old one whatever the sql_mode).  The rows are locked from the
        first statement to the commit, so the records stored follow from
        the locked rows: they are computed here, not read back (one
        statement fewer per batch, issue 15); test/partition_contract.py
        checks that both ways store the same records.
        """
        bucket, now = items[0].bucket, self.clock()
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
        results = tx.final([("SELECT " + NO_VALUE + where + self.FOR_UPDATE, [bucket] + keys),
                            (update, values + expires + [now, bucket] + keys + [now])])
        before = {record.key: record for record in map(record_of, results[0][0])}
        done = {}
        for i, item in enumerate(items):
            current = before.get(item.key)
            if current is not None and current.is_live(now):
                value, ttl = item.overwrite
                modified = max(now, current.modified_us + 1)
                done[i] = (current._replace(value=value, version=current.version + 1,
                                            modified_us=modified, expires_us=modified
                                            + ttl * 1_000_000 if ttl else None), current)
        return done

    def _make_batch(self, items: List[WriteRequest]) -> list:
        outcomes: list = [None] * len(items)
        by_bucket: dict = {}
        for i, item in enumerate(items):
            by_bucket.setdefault(item.bucket, []).append(i)
        for bucket, indexes in by_bucket.items():
            while indexes:
                # apply is made anew for each try: a try may only decide the
                # requests it holds (those sent back with NeedOthers keep
                # that outcome, and an error of this try fails only its own).
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
                    self.write_many(bucket, list(dict.fromkeys(item.key for item in group)),
                                    apply, {item.key: item.others for item in group
                                            if item.others is not None},
                                    {item.key for item in group if item.strict})
                except NeedOthers as e:              # those go back; the others run again
                    need = set(e.keys)
                    for i in indexes:
                        if items[i].key in need:
                            outcomes[i] = NeedOthers([items[i].key])
                    indexes = [i for i in indexes if items[i].key not in need]
                    continue
                except DatastoreError as e:
                    for i in indexes:
                        outcomes[i] = e
                break
        return outcomes

    def write_many(self, bucket: bytes, keys: Sequence[bytes],
                   apply: Callable[[dict, int, dict], dict],
                   others: Optional[Dict[bytes, Others]] = None, strict=frozenset()) -> dict:
        """Atomically read-check-write many keys of one bucket (POST /batch).

        One transaction: the rows of ``keys`` are locked; for those missing or
        not live here, and for every key in ``strict``, ``others`` (key ->
        :data:`Others`, what the router read of the other copies) must be
        given, else nothing is written and :class:`NeedOthers` names them;
        the newer copy counts.  Then ``apply(current, now_us, unknown)`` gets
        key -> Record or None, and key -> PartitionUnavailable for the
        ``strict`` keys whose other copies could not all be read (their
        outcome is not to be decided here), and returns key -> Record to
        store for the keys it changed.  Locked rows are updated in place by
        one multi-row upsert, new ones written by one multi-row INSERT (a
        concurrent insert of the same key makes the whole call run again),
        each stamped with the change epoch.

        :returns: what ``apply`` returned.
        :raises NeedOthers: when ``others`` lacks a key that needs them.
        :raises PartitionUnavailable: when the database does not answer.
        """
        others = others or {}

        def body(cursor):
            locked = self._select_many(cursor, [(bucket, k) for k in keys], True)
            stored = {k: r for (_, k), r in locked.items()}
            now = self.clock()
            need = [k for k in keys if k not in others
                    and (k in strict or k not in stored or not stored[k].is_live(now))]
            if need:
                raise NeedOthers(need)
            current = dict(stored)
            unknown = {}
            for key, (other, unreachable) in others.items():
                if other is not None and (current.get(key) is None
                                          or winner_key(other) > winner_key(current[key])):
                    current[key] = other
                if unreachable is not None and key in strict:
                    unknown[key] = unreachable
            final = apply(current, now, unknown)
            self._store_many(cursor, list(final.values()), locked, self.EPOCH)
            return final
        return self._transact(body, stamp=True)
