"""This module provides the data layer of the key-value service.

It places every key on ``replicas`` of the configured partitions with
rendezvous hashing, reads and writes them through a :class:`Partition`
(MySQL via mysqlclient, or embedded SQLite), and merges the partitions'
sorted key streams for listing.  It knows nothing of HTTP: the controller maps
the exceptions below to status codes, and ``sync.py`` uses the same classes.

Command line: ``python datastore.py schema`` applies ``database_definition.sql``
to every configured partition (idempotent).
"""

import argparse
import base64
import dataclasses
import functools
import hashlib
import logging
import sys
from typing import List, Optional, Sequence, Tuple

from kv.configuration import ConfigurationError, Settings, load_config
from engines import make_partition
from partitions import Partition, WriteRequest
from kv.errors import (DatastoreError, InvalidKey, InvalidRequest, KeyExists, KeyNotFound,
                       PartitionUnavailable, PreconditionFailed, ValueTooLarge)
from kv.records import (MAX_TTL_SECONDS, Condition, Record, check_key, now_us, put_record,
                        tombstone, winner_key)

__all__ = [
    "Datastore", "Listing", "open_store", "placement", "check_key", "encode_cursor",
    "decode_cursor",
    "Condition", "Record", "DatastoreError", "InvalidKey", "InvalidRequest",
    "KeyExists", "KeyNotFound", "PartitionUnavailable", "PreconditionFailed",
    "ValueTooLarge", "ConfigurationError", "load_config", "now_us", "winner_key",
]

log = logging.getLogger("kv.datastore")

LIST_READ_AHEAD = 1000          # rows per listing query at most
LIST_ROW_BUDGET = 10000         # rows a listing page examines at most (then it ends with next)
LIST_VALUE_BYTES = 8 << 20      # bytes of values in one values=true page at most (or one value)
DEFAULT_BUCKET = b"default"


def _ranking(bucket: bytes, key: bytes, names: Sequence[str]) -> List[str]:
    """All partition names in rendezvous order for (bucket, key), best first."""
    suffix = b"\x00" + bucket + b"\x00" + key
    scored = [(hashlib.blake2b(name.encode("utf-8") + suffix, digest_size=8).digest(), name)
              for name in names]
    scored.sort(reverse=True)
    return [name for _, name in scored]


def placement(bucket: bytes, key: bytes, names: Sequence[str], replicas: int) -> List[str]:
    """Return the partitions that store (bucket, key), in serving order.

    Rendezvous (highest random weight) hashing: every partition name gets the
    score blake2b-64(name NUL bucket NUL key) and the ``replicas`` highest
    scores win, ties broken by the greater name.  Adding a partition moves a key
    only if the new partition enters its top ``replicas``, about
    replicas/(N+1) of the keys, and never between two old partitions.  NUL
    cannot occur in names, buckets or keys, so the hashed bytes are unambiguous.
    Source: Thaler and Ravishankar, "Using Name-Based Mappings to Increase Hit
    Rates", IEEE/ACM Transactions on Networking 6(1), 1998.

    :param bytes bucket: the namespace (``b"default"`` for /keys).
    :param bytes key: the key, UTF-8 bytes.
    :param names: the partition names (configuration section names).
    :param int replicas: how many partitions to return (1 to len(names)).
    :returns: list of ``replicas`` partition names, first = preferred.
    """
    return _ranking(bucket, key, names)[:replicas]


def _successor(prefix: bytes) -> bytes:
    """The smallest byte string greater than every string starting with prefix.

    Valid UTF-8 never contains 0xFF, so incrementing the last byte suffices.
    """
    return prefix[:-1] + bytes([prefix[-1] + 1])


def encode_cursor(position: Tuple[bytes, bool]) -> str:
    """Encode a listing position (key, inclusive) as an opaque URL-safe cursor."""
    key, inclusive = position
    return base64.urlsafe_b64encode((b"i" if inclusive else b"x") + key).decode("ascii").rstrip("=")


def decode_cursor(cursor: str) -> Tuple[bytes, bool]:
    """Decode a cursor made by :func:`encode_cursor`.

    :returns: (key, inclusive) where the listing resumes.
    :raises InvalidRequest: when the cursor was not made by this service.
    """
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
    except (ValueError, TypeError):
        raise InvalidRequest("the cursor is not valid") from None
    if len(raw) < 2 or raw[:1] not in (b"i", b"x"):
        raise InvalidRequest("the cursor is not valid")
    return raw[1:], raw[:1] == b"i"


@dataclasses.dataclass
class Listing:
    """One page of a listing.

    ``items``: live records in key order (values empty unless asked for);
    ``prefixes``: common prefixes (bytes) when a delimiter was given;
    ``next``: the opaque cursor of the next page, or None on the last page;
    ``unavailable``: names of partitions that could not be read (the page may
    miss keys whose every copy is on them).
    """
    items: List[Record]
    prefixes: List[bytes]
    next: Optional[str]
    unavailable: List[str]
    values: bool = False


class _Stream:
    """A lazily fetched, sorted stream of one partition's rows for a listing,
    without values: (record, value size) pairs.  Each query reads twice as
    many rows as the one before, from ``batch`` up to LIST_READ_AHEAD, so a
    range full of tombstones costs a few queries, not one per page item."""

    def __init__(self, partition, bucket, start, inclusive, end, batch):
        self.partition, self.bucket, self.end = partition, bucket, end
        self.batch = batch
        self.position = (start, inclusive)
        self.rows: List[Tuple[Record, int]] = []
        self.index = 0
        self.exhausted = False

    def peek(self) -> Optional[Tuple[Record, int]]:
        if self.index >= len(self.rows) and not self.exhausted:
            start, inclusive = self.position
            self.rows = self.partition.scan(self.bucket, start, inclusive, self.end, self.batch)
            self.index = 0
            self.exhausted = len(self.rows) < self.batch
            self.batch = min(self.batch * 2, LIST_READ_AHEAD)
            if self.rows:
                self.position = (self.rows[-1][0].key, False)
        return self.rows[self.index] if self.index < len(self.rows) else None

    def pop(self) -> None:
        self.index += 1

    def seek(self, key: bytes) -> None:
        """Skip every row with a key below ``key``."""
        while self.index < len(self.rows) and self.rows[self.index][0].key < key:
            self.index += 1
        if self.index >= len(self.rows) and not self.exhausted:
            self.position = (key, True)


class Datastore:
    """The cluster: routes every operation to the partitions of a key's placement.

    It mirrors a partition's API at the level of live keys.  Reads go to the
    first reachable partition of the placement; on a miss there (no row, a
    tombstone or an expired row) the other replicas and the next partition in
    rendezvous order (where a key sat before the last partition was added) are
    read too, and the newest copy by :func:`winner_key` answers.  Writes commit
    on the first reachable partition of the placement.  Expired keys and
    tombstones are absent for every operation.

    :param Settings settings: from :func:`configuration.load_config`.
    :param partitions: optional ready partitions by name (tests inject them).
    """

    def __init__(self, settings: Settings, partitions=None):
        self.settings = settings
        self.replicas = settings.replicas
        self.partitions = partitions or {p.name: make_partition(p) for p in settings.partitions}
        self.names = sorted(self.partitions)

    @classmethod
    def from_config(cls, path: Optional[str] = None) -> "Datastore":
        """Build a Datastore from ``path``, ``$KV_CONFIG`` or configuration.cfg."""
        return cls(load_config(path))

    def close(self) -> None:
        """Close every partition's connections."""
        for partition in self.partitions.values():
            partition.close()

    # -- placement -------------------------------------------------------
    def placement(self, bucket: bytes, key: bytes) -> List[Partition]:
        """The partitions of (bucket, key)'s placement, in serving order."""
        return [self.partitions[n] for n in placement(bucket, key, self.names, self.replicas)]

    def _candidates(self, bucket: bytes, key: bytes) -> Tuple[List[Partition], List[Partition]]:
        """(placement, lookaside): lookaside is the next partition in rendezvous order."""
        ranking = [self.partitions[n] for n in _ranking(bucket, key, self.names)]
        return ranking[:self.replicas], ranking[self.replicas:self.replicas + 1]

    # -- reads -----------------------------------------------------------
    def get(self, bucket: bytes, key: bytes) -> Tuple[Record, str]:
        """Read a live key.

        :param bytes bucket: the namespace.
        :param bytes key: the key (validated with :func:`check_key`).
        :returns: (record, name of the partition that answered).
        :raises InvalidKey: for an invalid key.
        :raises KeyNotFound: when no reachable copy is live.
        :raises PartitionUnavailable: when nothing live was found and a partition
            of the placement could not be read.
        """
        check_key(key)
        now = now_us()
        placed, lookaside = self._candidates(bucket, key)
        found: List[Tuple[Record, Partition]] = []
        unavailable = []
        for partition in placed + lookaside:
            try:
                record = partition.read(bucket, key)
            except PartitionUnavailable:
                if partition in placed:
                    unavailable.append(partition.name)
                continue
            if record is not None:
                if not found and not unavailable and record.is_live(now) and partition in placed:
                    return record, partition.name
                found.append((record, partition))
        if found:
            record, partition = max(found, key=lambda pair: winner_key(pair[0]))
            if record.is_live(now):
                return record, partition.name
        if unavailable:
            raise PartitionUnavailable(unavailable)
        raise KeyNotFound(key)

    # -- writes ----------------------------------------------------------
    def _write(self, bucket: bytes, key: bytes, make, overwrite=None,
               strict: bool = False) -> Tuple[Record, Optional[Record], str]:
        """Write on the first partition of the placement that is not down.

        A partition that answered but could not do it now (``down`` false:
        a lock wait, a full pool) fails the write with 503 rather than
        sending it to the next replica, where a compare-and-swap could win on
        a stale copy.  ``strict``: see :class:`partitions.WriteRequest`.
        """
        unavailable = []
        for partition in self.placement(bucket, key):
            try:
                record, previous = partition.write(WriteRequest(
                    bucket, key, make, functools.partial(self._newest_many, bucket,
                                                         exclude=partition),
                    overwrite, strict))
            except PartitionUnavailable as e:
                if not e.down:
                    raise
                unavailable.append(partition.name)
                continue
            return record, previous, partition.name
        raise PartitionUnavailable(unavailable)

    def put(self, bucket: bytes, key: bytes, value: bytes, ttl_seconds: Optional[int] = None,
            condition: Condition = Condition()) -> Tuple[Record, bool, str]:
        """Create or replace a key (upsert), atomically checking ``condition``.

        :param bytes value: 0 to ``max_value_bytes`` bytes.
        :param int ttl_seconds: seconds until the key expires, 1 to 315360000,
            or None for never (a write without TTL clears an earlier one).
        :param Condition condition: preconditions (If-Match, If-None-Match,
            create-only), checked on the partition in the same transaction as
            the write (RFC 9110 section 13.1).
        :returns: (record written, True if the key did not exist before,
            partition name).
        :raises InvalidKey, InvalidRequest, ValueTooLarge: for bad input.
        :raises PreconditionFailed: when an If-Match/If-None-Match fails.
        :raises KeyExists: for a create-only write of an existing key.
        :raises PartitionUnavailable: when no partition of the placement answers.
        """
        self._check_put(key, value, ttl_seconds)
        unconditional = condition == Condition()
        record, previous, name = self._write(
            bucket, key, lambda current, now: put_record(bucket, key, value, ttl_seconds,
                                                         condition, current, now),
            (value, ttl_seconds) if unconditional else None, strict=not unconditional)
        return record, previous is None or not previous.is_live(record.modified_us), name

    def _check_put(self, key: bytes, value: bytes, ttl_seconds: Optional[int]) -> None:
        check_key(key)
        if len(value) > self.settings.max_value_bytes:
            raise ValueTooLarge(len(value), self.settings.max_value_bytes)
        if ttl_seconds is not None and not (isinstance(ttl_seconds, int)
                                            and 1 <= ttl_seconds <= MAX_TTL_SECONDS):
            raise InvalidRequest("ttl must be a whole number of seconds from 1 to %d"
                                 % MAX_TTL_SECONDS)

    def delete(self, bucket: bytes, key: bytes,
               condition: Condition = Condition()) -> Tuple[Record, str]:
        """Delete a live key by writing a tombstone (which sync copies).

        :returns: (the tombstone written, partition name).
        :raises KeyNotFound: when the key is absent or expired.
        :raises PreconditionFailed, InvalidKey, PartitionUnavailable: as for put.
        """
        check_key(key)
        record, _, name = self._write(
            bucket, key, lambda current, now: tombstone(key, condition, current, now),
            strict=True)
        return record, name

    # -- batch -------------------------------------------------------------
    def batch(self, bucket: bytes, ops: Sequence[dict]) -> list:
        """Run many ops, grouped by partition into one transaction each.

        Ops on different keys are independent; ops on the same key apply in
        order, with the semantics of :meth:`get`, :meth:`put` and
        :meth:`delete`.  A key with only reads is read with one query per
        partition; a key with a write is locked, checked and written in its
        partition's transaction (multi-row statements).

        :param ops: dicts with ``op`` ("get", "put", "delete"), ``key`` (bytes)
            and for put ``value`` (bytes), ``ttl`` (seconds or None); puts and
            deletes take ``if_match``/``if_none_match`` (as :class:`Condition`).
        :returns: one entry per op, in order: for get a Record, for put a
            (Record, created) pair, for delete the tombstone Record, or the
            :class:`DatastoreError` the single-key call would have raised.
        """
        results: list = [None] * len(ops)
        by_key: dict = {}
        for i, op in enumerate(ops):
            try:
                if op["op"] == "put":
                    self._check_put(op["key"], op["value"], op.get("ttl"))
                else:
                    check_key(op["key"])
            except DatastoreError as e:
                results[i] = e
                continue
            by_key.setdefault(op["key"], []).append(i)
        readers = {k for k, idx in by_key.items() if all(ops[i]["op"] == "get" for i in idx)}
        self._batch_reads(bucket, [k for k in by_key if k in readers], by_key, results)
        writers = [k for k in by_key if k not in readers]
        self._batch_writes(bucket, writers, by_key, ops, results)
        return results

    def _batch_reads(self, bucket, keys, by_key, results) -> None:
        groups: dict = {}
        for key in keys:
            groups.setdefault(self.placement(bucket, key)[0], []).append(key)
        now = now_us()
        for partition, group in groups.items():
            try:
                found = partition.read_many([(bucket, k) for k in group])
            except PartitionUnavailable:
                found = {}
            for key in group:
                record = found.get((bucket, key))
                if record is None or not record.is_live(now):
                    try:
                        record = self.get(bucket, key)[0]      # the full read path
                    except DatastoreError as e:
                        record = e
                for i in by_key[key]:
                    results[i] = record

    def _batch_writes(self, bucket, keys, by_key, ops, results) -> None:
        """Write the keys of ``keys`` (each with its ops by_key[key]) on the
        first partition of their placement that is not down (see :meth:`_write`)."""
        strict = {key for key in keys if any(_is_strict(ops[i]) for i in by_key[key])}
        pending, failures = list(keys), {}
        for rank in range(self.replicas):
            groups: dict = {}
            for key in pending:
                groups.setdefault(self.placement(bucket, key)[rank], []).append(key)
            pending = []
            for partition, group in groups.items():
                def apply(current, now, unknown, group=group):
                    final = {}
                    for key in group:
                        state = current.get(key)
                        for i in by_key[key]:
                            if key in unknown and _is_strict(ops[i]):
                                results[i] = unknown[key]
                                continue
                            results[i], state, changed = _apply_op(bucket, key, ops[i], state, now)
                            if changed:
                                final[key] = state
                    return final
                try:
                    partition.write_many(bucket, group, apply,
                                         functools.partial(self._newest_many, bucket,
                                                           exclude=partition), strict)
                except PartitionUnavailable as e:
                    if not e.down:
                        for key in group:
                            for i in by_key[key]:
                                results[i] = e
                        continue
                    pending += group
                    for key in group:
                        failures.setdefault(key, []).append(partition.name)
        for key in pending:
            for i in by_key[key]:
                results[i] = PartitionUnavailable(failures[key])

    def _newest_many(self, bucket: bytes, keys: List[bytes], exclude: Partition):
        """The other copies of ``keys``: on every candidate (placement and
        lookaside) but ``exclude``, one read_many per partition.

        :returns: (key -> newest copy found, key -> PartitionUnavailable naming
            the partitions of its placement that could not be read), as
            partitions.Elsewhere.  An unreachable lookaside partition is not
            named: it holds a key only until sync has moved it after a
            partition was added, and naming it would fail every strict write
            while any one partition is down.
        """
        groups: dict = {}
        placed_on: dict = {}
        for key in keys:
            placed, lookaside = self._candidates(bucket, key)
            placed_on[key] = placed
            for partition in placed + lookaside:
                if partition is not exclude:
                    groups.setdefault(partition, []).append(key)
        newest: dict = {}
        missed: dict = {}
        for partition, group in groups.items():
            try:
                found = partition.read_many([(bucket, k) for k in group])
            except PartitionUnavailable:
                for key in group:
                    if partition in placed_on[key]:
                        missed.setdefault(key, []).append(partition.name)
                continue
            for (_, key), record in found.items():
                if key not in newest or winner_key(record) > winner_key(newest[key]):
                    newest[key] = record
        return newest, {key: PartitionUnavailable(names, "cannot read the key's other copies")
                        for key, names in missed.items()}

    # -- listing ---------------------------------------------------------
    def list(self, bucket: bytes, prefix: bytes = b"", delimiter: bytes = b"",
             cursor: Optional[str] = None, limit: int = 100, values: bool = False) -> Listing:
        """List live keys in byte order, merging every partition's sorted rows.

        Each live key appears once (the newest copy wins, tombstones hide older
        copies).  With a delimiter, keys containing it after the prefix are
        rolled up into one common prefix each, as S3 ListObjectsV2 does; a
        prefix counts as one entry towards ``limit``.

        Every page is bounded before the work: it examines at most
        LIST_ROW_BUDGET rows (tombstones and expired rows included) and, with
        ``values``, holds at most LIST_VALUE_BYTES of values (or one value,
        when a single one is larger); a page cut short by a budget has fewer
        than ``limit`` entries (maybe none) and a ``next`` cursor.  Values
        are read only for the keys of the page, after the merge.  Memory is
        bounded by partitions x LIST_READ_AHEAD keys plus the value budget.

        :param bytes prefix: only keys starting with these bytes.
        :param bytes delimiter: roll-up delimiter, or empty for none.
        :param str cursor: ``Listing.next`` of the previous page, or None.
        :param int limit: entries per page, 1 to 1000.
        :param bool values: include values in the records.
        :returns: :class:`Listing`.
        :raises InvalidRequest: for a bad cursor or limit.
        :raises PartitionUnavailable: when ``replicas`` or more partitions are
            down, so some keys could have no readable copy.
        """
        if not 1 <= limit <= 1000:
            raise InvalidRequest("limit must be from 1 to 1000")
        start, inclusive = (prefix, True)
        if cursor:
            position = decode_cursor(cursor)
            if position[0] >= prefix:
                start, inclusive = position
        end = _successor(prefix) if prefix else None
        streams = [_Stream(p, bucket, start, inclusive, end, min(limit + 1, LIST_READ_AHEAD))
                   for p in (self.partitions[n] for n in self.names)]
        unavailable: List[str] = []
        now = now_us()
        entries = []  # (record or None, prefix or None, resume position, source partition)
        examined, value_bytes, cut, last = 0, 0, None, None
        while len(entries) <= limit:
            heads = []
            for stream in list(streams):
                try:
                    head = stream.peek()
                except PartitionUnavailable:
                    streams.remove(stream)
                    unavailable.append(stream.partition.name)
                    if len(unavailable) >= self.replicas:
                        raise PartitionUnavailable(unavailable) from None
                    continue
                if head is not None:
                    heads.append((stream, head))
            if not heads:
                break
            if examined >= LIST_ROW_BUDGET:
                cut = last
                break
            key = min(head[0].key for _, head in heads)
            copies = [(head, stream) for stream, head in heads if head[0].key == key]
            for _, stream in copies:
                stream.pop()
            examined += len(copies)
            (winner, size), source = max(copies, key=lambda c: winner_key(c[0][0]))
            last = (key, False)
            if not winner.is_live(now):
                continue
            cut_at = key.find(delimiter, len(prefix)) if delimiter else -1
            if cut_at >= 0:
                common = key[:cut_at + len(delimiter)]
                resume = _successor(common)
                for stream in streams:
                    stream.seek(resume)
                last = (resume, True)
                entries.append((None, common, last, None))
                continue
            if values and entries and value_bytes + size > LIST_VALUE_BYTES \
                    and len(entries) < limit:
                cut = entries[-1][2]
                break
            value_bytes += size
            entries.append((winner, None, (key, False), source.partition))
        next_cursor = encode_cursor(cut) if cut else None
        if len(entries) > limit:
            entries = entries[:limit]
            next_cursor = encode_cursor(entries[-1][2])
        items = [e for e in entries if e[0] is not None]
        records = self._with_values(bucket, items, now) if values else [e[0] for e in items]
        return Listing(records, [e[1] for e in entries if e[1] is not None], next_cursor,
                       unavailable, values)

    def _with_values(self, bucket: bytes, items: list, now: int) -> List[Record]:
        """The records of a listing page's items with their values, read from
        the partition each came from (one query per partition); a key written
        since the scan shows its new state, a key deleted since is left out."""
        groups: dict = {}
        for record, _, _, partition in items:
            groups.setdefault(partition, []).append(record.key)
        found: dict = {}
        for partition, keys in groups.items():
            found.update(partition.read_many([(bucket, k) for k in keys]))
        records = (found.get((bucket, record.key)) for record, _, _, _ in items)
        return [r for r in records if r is not None and r.is_live(now)]

    # -- health ----------------------------------------------------------
    def health(self) -> List[Tuple[str, str, Optional[str]]]:
        """Ping every partition.

        :returns: list of (partition name, engine, None if up else a short
            client-safe reason), in name order.
        """
        report = []
        for name in self.names:
            partition = self.partitions[name]
            try:
                partition.ping()
                report.append((name, partition.engine, None))
            except PartitionUnavailable as e:
                report.append((name, partition.engine, e.reason or "unreachable"))
        return report

    def apply_schema(self) -> None:
        """Apply database_definition.sql to every partition (idempotent).

        :raises PartitionUnavailable: when a partition cannot be reached.
        """
        for name in self.names:
            self.partitions[name].apply_schema()


def _is_strict(op: dict) -> bool:
    """True for a batch op whose outcome depends on the current copy."""
    return op["op"] == "delete" or op.get("if_match") is not None \
        or op.get("if_none_match") is not None


def _apply_op(bucket: bytes, key: bytes, op: dict, state: Optional[Record], now: int):
    """Apply one batch op to ``state``: (result, new state, changed)."""
    kind = op["op"]
    try:
        if kind == "get":
            if state is not None and state.is_live(now):
                return state, state, False
            raise KeyNotFound(key)
        condition = Condition(op.get("if_match"), op.get("if_none_match"))
        if kind == "delete":
            record = tombstone(key, condition, state, now)
            return record, record, True
        record = put_record(bucket, key, op["value"], op.get("ttl"), condition, state, now)
        return (record, state is None or not state.is_live(now)), record, True
    except DatastoreError as e:
        return e, state, False


def open_store(config_path: Optional[str]) -> Optional[Datastore]:
    """The Datastore of a command's ``--config`` (None: $KV_CONFIG or
    configuration.cfg), or None after printing the configuration error to
    stderr; the command then exits with status 2."""
    try:
        return Datastore.from_config(config_path)
    except ConfigurationError as e:
        print("configuration error: %s" % e, file=sys.stderr)
        return None


def main(argv=None) -> int:
    """``python datastore.py schema``: apply the schema to every partition."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["schema"],
                        help="schema: apply database_definition.sql to every partition")
    parser.add_argument("--config", help="configuration file (default: $KV_CONFIG or "
                                         "configuration.cfg beside this file)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    store = open_store(args.config)
    if store is None:
        return 2
    failed = 0
    for name in store.names:
        partition = store.partitions[name]
        try:
            partition.apply_schema()
            print("%s (%s): schema applied" % (name, partition.describe()))
        except PartitionUnavailable as e:
            failed += 1
            print("%s (%s): FAILED: %s" % (name, partition.describe(), e), file=sys.stderr)
    store.close()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
