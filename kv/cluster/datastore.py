"""The router: places every key on ``replicas`` of the configured partitions
(rendezvous hashing, kv.placement), reads and writes it through a
:class:`kv.storage.partition.Partition`, and answers for the cluster as one
store.  It decides the placement, the current copy and the record a write
stores; the partitions store what they are given.  It knows nothing of HTTP.
"""

import logging
import sys
from typing import Callable, List, Optional, Sequence, Tuple

from kv.cluster.batch import run_batch
from kv.cluster.buckets import (Aggregate, BucketListing, CrossListing, aggregate, list_buckets,
                                read_across, show_all)
from kv.cluster.changes import ChangePage, read_changes
from kv.cluster.listing import Listing, list_keys
from kv.cluster.watch import ChangeNotifier
from kv.configuration import ConfigurationError, Settings, load_config
from kv.errors import (InvalidRequest, KeyNotFound, PartitionUnavailable, ValueTooLarge)
from kv.placement import ranking
from kv.records import (MAX_TTL_SECONDS, Condition, Record, check_key, now_us, put_record,
                        tombstone, winner_key)
from kv.storage.engines import make_partition
from kv.storage.partition import NeedOthers, Partition, WriteRequest

log = logging.getLogger("kv.datastore")


class Datastore:
    """The cluster: routes every operation to the partitions of a key's placement.

    It mirrors a partition's API at the level of live keys.  Reads go to the
    first reachable partition of the placement; on a miss there (no row, a
    tombstone or an expired row) the other replicas and the next partition in
    rendezvous order (where a key sat before the last partition was added) are
    read too, and the newest copy by :func:`winner_key` answers.  Writes commit
    on the first reachable partition of the placement.  Expired keys and
    tombstones are absent for every operation.

    :param Settings settings: from :func:`kv.configuration.load_config`.
    :param partitions: optional ready partitions by name (tests inject them).
    :param clock: ``clock()`` -> microseconds since the Unix epoch (UTC), the
        web node's time (``modified``, TTLs, expiry); handed to the partitions
        it makes.  Tests inject a shifted one.
    """

    def __init__(self, settings: Settings, partitions=None, clock: Callable[[], int] = now_us):
        self.settings = settings
        self.replicas = settings.replicas
        self.clock = clock
        self.partitions = partitions or {p.name: make_partition(p, clock)
                                         for p in settings.partitions}
        self.names = sorted(self.partitions)
        #: settles change epochs and wakes the change feed's long polls
        self.notifier = ChangeNotifier(self.partitions, settings.max_watchers)

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
        return [self.partitions[n] for n in ranking(bucket, key, self.names)[:self.replicas]]

    def _candidates(self, bucket: bytes, key: bytes) -> Tuple[List[Partition], List[Partition]]:
        """(placement, lookaside): lookaside is the next partition in rendezvous order."""
        ranked = [self.partitions[n] for n in ranking(bucket, key, self.names)]
        return ranked[:self.replicas], ranked[self.replicas:self.replicas + 1]

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
        now = self.clock()
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
                record, previous = self.send_with_others(
                    partition, bucket, [key] if strict else [],
                    lambda others: partition.write(WriteRequest(
                        bucket, key, make, others.get(key), overwrite, strict)))
                return record, previous, partition.name
            except PartitionUnavailable as e:
                if not e.down:
                    raise
                unavailable.append(partition.name)
        raise PartitionUnavailable(unavailable)

    def send_with_others(self, partition: Partition, bucket: bytes, strict: List[bytes], send):
        """``send(others)`` to ``partition`` with the other copies it needs.

        The ``strict`` keys' other copies are read first (outside the row
        locks); the rest only when the partition finds a row missing or not
        live and answers :class:`NeedOthers`, then ``send`` runs again with
        them, at most three times in all.

        :param send: ``send(others)`` with others a dict key ->
            kv.storage.partition.Others; what it returns is returned.
        :raises PartitionUnavailable: as ``send``, or (not ``down``) when the
            keys kept changing.
        """
        others = self.others_of(bucket, strict, partition)
        for _ in range(3):
            try:
                return send(others)
            except NeedOthers as e:
                others.update(self.others_of(bucket, e.keys, partition))
        raise PartitionUnavailable([partition.name], "the keys changed too often", down=False)

    def others_of(self, bucket: bytes, keys: List[bytes], exclude: Partition) -> dict:
        """key -> what :meth:`newest_many` finds of its other copies, as
        kv.storage.partition.Others (newest copy or None, error or None)."""
        newest, unknown = self.newest_many(bucket, keys, exclude)
        return {key: (newest.get(key), unknown.get(key)) for key in keys}

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
        self.check_put(key, value, ttl_seconds)
        unconditional = condition == Condition()
        record, previous, name = self._write(
            bucket, key, lambda current, now: put_record(bucket, key, value, ttl_seconds,
                                                         condition, current, now),
            (value, ttl_seconds) if unconditional else None, strict=not unconditional)
        return record, previous is None or not previous.is_live(record.modified_us), name

    def check_put(self, key: bytes, value: bytes, ttl_seconds: Optional[int]) -> None:
        """Validate a put's key, value size and TTL before any work.

        :raises InvalidKey, ValueTooLarge, InvalidRequest: as :meth:`put`.
        """
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
        """Many ops in one call: :func:`kv.cluster.batch.run_batch`."""
        return run_batch(self, bucket, ops)

    def newest_many(self, bucket: bytes, keys: List[bytes], exclude: Partition):
        """The other copies of ``keys``: on every candidate (placement and
        lookaside) but ``exclude``, one read_many per partition.

        :returns: (key -> newest copy found, key -> PartitionUnavailable naming
            the partitions of its placement that could not be read), as
            the router hands to the partitions.  An unreachable lookaside partition is not
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
                if len(group) == 1:            # a single write: coalesced with other threads'
                    row = partition.read(bucket, group[0])
                    found = {(bucket, group[0]): row} if row is not None else {}
                else:
                    found = partition.read_many([(bucket, k) for k in group])
            except PartitionUnavailable:
                for key in group:
                    if partition in placed_on[key]:
                        missed.setdefault(key, []).append(partition.name)
                continue
            for (_, key), record in found.items():
                if key not in newest or winner_key(record) > winner_key(newest[key]):
                    newest[key] = record
        return newest, {key: PartitionUnavailable(names, "cannot read the key's other copies",
                                                  down=False)
                        for key, names in missed.items()}

    # -- listing ---------------------------------------------------------
    def list(self, bucket: bytes, prefix: bytes = b"", delimiter: bytes = b"",
             cursor: Optional[str] = None, limit: int = 100, values: bool = False,
             visible=None) -> Listing:
        """A page of the bucket's live keys: :func:`kv.cluster.listing.list_keys`."""
        return list_keys(self, bucket, prefix, delimiter, cursor, limit, values, visible)

    # -- change feed -------------------------------------------------------
    def changes(self, bucket: bytes, since: Optional[str], prefix: bytes = b"", limit: int = 100,
                values: bool = False, visible: Optional[Callable[[bytes], bool]] = None,
                wait: Optional[float] = None) -> ChangePage:
        """A page of the bucket's change feed: :func:`kv.cluster.changes.read_changes`."""
        return read_changes(self, bucket, since, prefix, limit, values, visible, wait)

    # -- buckets and cross-bucket reads ------------------------------------
    def buckets(self, prefix: bytes = b"", cursor: Optional[str] = None, limit: int = 100,
                visible: Callable[[bytes], bool] = show_all) -> BucketListing:
        """A page of the names of the buckets holding a live key:
        :func:`kv.cluster.buckets.list_buckets`."""
        return list_buckets(self, prefix, cursor, limit, visible)

    def read_across(self, app: bytes, key: bytes, cursor: Optional[str] = None, limit: int = 100,
                    visible: Callable[[bytes], bool] = show_all) -> CrossListing:
        """A page of one key in every bucket of ``app``:
        :func:`kv.cluster.buckets.read_across`."""
        return read_across(self, app, key, cursor, limit, visible)

    def aggregate(self, app: bytes, key: bytes, function: str,
                  visible: Callable[[bytes], bool] = show_all) -> Aggregate:
        """count, sum, min, max or avg of one key over the buckets of ``app``:
        :func:`kv.cluster.buckets.aggregate`."""
        return aggregate(self, app, key, function, visible)

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


def open_store(config_path: Optional[str]) -> Optional[Datastore]:
    """The Datastore of a command's ``--config`` (None: $KV_CONFIG or
    configuration.cfg), or None after printing the configuration error to
    stderr; the command then exits with status 2."""
    try:
        return Datastore.from_config(config_path)
    except ConfigurationError as e:
        print("configuration error: %s" % e, file=sys.stderr)
        return None
