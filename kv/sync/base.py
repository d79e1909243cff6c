"""The state of one sync pass: its counts, the cluster-wide lease and the
helpers every phase uses (skipping a partition that does not answer, copying
rows where they win, reporting progress)."""

import dataclasses
import os
import socket
import sys
import time
from typing import List, Optional, Set

from kv.errors import PartitionUnavailable
from kv.placement import placement
from kv.processes import alive
from kv.records import Record, winner_key

LEASE_SECONDS = 60             # a holder that stops renewing loses the lock after this
PROGRESS_SECONDS = 10          # how often long passes report progress
EXAMPLES = 10                  # divergent keys printed by --verify
#: Expired rows are purged this long after they expired, so that a sync host
#: whose clock runs ahead (by less than this) never removes a live row.
EXPIRY_GRACE_SECONDS = 3600

LOCK = b"lock"
#: Per partition: how far its changes are converged, "EPOCH HEXBUCKET HEXKEY" (the
#: position of the last row) or "EPOCH" (every row of epochs up to EPOCH).
WATERMARK = b"epoch-watermark"
#: Per partition: the partition list and replicas its rows last converged on.
TOPOLOGY = b"topology"
#: Per partition: the holder of the last pass that ran to its end; the row's
#: updated_us is when (that partition's clock): kv_sync_last_pass_timestamp_seconds.
LAST_PASS = b"last-pass"


@dataclasses.dataclass
class Summary:
    """Counts of one pass (rows), for the summary line."""
    scanned: int = 0
    copied: int = 0
    moved: int = 0
    purged: int = 0
    conflicts: int = 0
    divergent: int = 0
    skipped: Set[str] = dataclasses.field(default_factory=set)
    started: float = dataclasses.field(default_factory=time.monotonic)

    def line(self, dry_run: bool = False) -> str:
        return ("sync%s: scanned=%d copied=%d moved=%d purged=%d conflicts=%d skipped=%d%s "
                "seconds=%.2f" % (" (dry run)" if dry_run else "", self.scanned, self.copied,
                                  self.moved, self.purged, self.conflicts, len(self.skipped),
                                  " (%s)" % ",".join(sorted(self.skipped)) if self.skipped else "",
                                  time.monotonic() - self.started))


class LeaseLost(Exception):
    """The pass can no longer renew its lease (taken over, or its partition is
    unreachable): it must stop writing."""


class Sync:
    """State of one pass over ``store``.

    :param Datastore store: the cluster (its settings give batch_size and
        tombstone_days).
    :param bool dry_run: count what would change, change nothing (no lock,
        no epochs closed, no watermarks).
    :param str only: a partition name: only rows held by it are processed.
    :param bool full: converge every row, not only those changed since the
        watermarks.
    """

    def __init__(self, store, dry_run: bool = False, only: Optional[str] = None,
                 full: bool = False):
        self.store, self.dry_run, self.full = store, dry_run, full
        self.batch = store.settings.sync.batch_size
        self.sources = [only] if only else list(store.names)
        self.summary = Summary()
        self.holder = "%s:%d" % (socket.gethostname(), os.getpid())
        self.lock_partition = None
        #: False when the lease could not be taken on the first partition: a
        #: second pass may then hold it there, and only copies (always safe)
        #: may run beside another pass; moves and purges delete rows.
        self.may_delete = True
        self._reported = time.monotonic()
        self.topology = ("%s|replicas=%d|change-epoch" % (",".join(store.names),
                                                          store.replicas)).encode()

    # -- helpers ----------------------------------------------------------------
    def partition(self, name):
        return self.store.partitions[name]

    def placement(self, record: Record) -> List[str]:
        return placement(record.bucket, record.key, self.store.names, self.store.replicas)

    def skip(self, name: str, error: PartitionUnavailable) -> None:
        """Note that ``name`` could not be reached: the pass goes on without
        it and exits 1, and purge is skipped."""
        if name not in self.summary.skipped:
            print("sync: %s skipped: %s" % (name, error), file=sys.stderr)
        self.summary.skipped.add(name)

    def reach(self, name: str, call, *args):
        """``call(*args)``, or None after :meth:`skip` when partition ``name``
        does not answer."""
        try:
            return call(*args)
        except PartitionUnavailable as e:
            self.skip(name, e)
            return None

    def progress(self, phase: str, name: str) -> None:
        """Report progress now and then, and keep the lease alive.

        :raises LeaseLost: when the lease cannot be renewed.
        """
        if time.monotonic() - self._reported >= PROGRESS_SECONDS:
            self._reported = time.monotonic()
            print("sync: %s %s: %d rows scanned, %d copied, %d moved"
                  % (phase, name, self.summary.scanned, self.summary.copied, self.summary.moved),
                  file=sys.stderr)
        if self.lock_partition is not None and not self.dry_run:
            mine = self.holder.encode()
            try:
                renewed = self.lock_partition.set_state(
                    LOCK, mine, unless=lambda current, now: current is not None
                    and current[0] != mine)
            except PartitionUnavailable as e:
                self.skip(self.lock_partition.name, e)
                raise LeaseLost("the lease's partition %s is unreachable"
                                % self.lock_partition.name) from None
            if not renewed:
                raise LeaseLost("another sync took the lease over")

    def copy(self, records: List[Record], target: str) -> Optional[List[Record]]:
        """Copy records to ``target`` where they win; None if it is unreachable.

        :returns: the records written (or that would be, in a dry run).
        """
        partition = self.partition(target)
        try:
            current = partition.read_many([(r.bucket, r.key) for r in records])
            newer = []
            for record in records:
                there = current.get((record.bucket, record.key))
                if there is None or winner_key(record) > winner_key(there):
                    newer.append(record)
                if there is not None and _concurrent(record, there):
                    self.summary.conflicts += 1
            if self.dry_run or not newer:
                return newer
            return partition.store_if_newer(newer)
        except PartitionUnavailable as e:
            self.skip(target, e)
            return None

    # -- the lease ----------------------------------------------------------------
    def acquire(self) -> Optional[str]:
        """Take the cluster-wide lease.

        It lives on the first reachable partition in name order.  A lease is
        free when absent, not renewed for LEASE_SECONDS by that partition's
        clock, or held by a dead process of this host.

        :returns: None when taken, else a description of the holder.
        :raises PartitionUnavailable: when no partition answers.
        """
        mine = self.holder.encode()
        seen = {}

        def held(current, now):
            if current is None or current[0] in (mine, b""):
                return False
            holder, updated = current[0].decode("utf-8", "replace"), current[1]
            host, _, pid = holder.rpartition(":")
            if now - updated > LEASE_SECONDS * 1_000_000:
                return False
            if host == socket.gethostname() and pid.isdigit() and not alive(int(pid)):
                return False
            seen["holder"] = "%s (renewed %.0f s ago)" % (holder, (now - updated) / 1e6)
            return True

        errors = []
        for name in self.store.names:
            try:
                if self.partition(name).set_state(LOCK, mine, unless=held):
                    self.lock_partition = self.partition(name)
                    self.may_delete = name == self.store.names[0]
                    if not self.may_delete:
                        print("sync: the lease is on %s (%s did not answer): this pass copies"
                              " but moves and purges nothing" % (name, self.store.names[0]),
                              file=sys.stderr)
                    return None
                return seen["holder"]
            except PartitionUnavailable as e:
                errors.append(name)
                self.skip(name, e)
        raise PartitionUnavailable(errors, "no partition for the lock")

    def release(self) -> None:
        if self.lock_partition is not None:
            mine = self.holder.encode()
            try:
                # Empty the lease only while it is still ours (another pass may
                # have taken over an expired one); an empty holder is free.
                self.lock_partition.set_state(LOCK, b"", unless=lambda c, now: c is None
                                              or c[0] != mine)
            except PartitionUnavailable:
                pass             # the lease expires by itself


def _concurrent(a: Record, b: Record) -> bool:
    """True when neither copy descends from the other: two writes were made
    on different partitions (the higher version is not the newer one, or the
    same version was written twice).  Resolved by winner_key."""
    if winner_key(a) == winner_key(b):
        return False
    return (a.version > b.version) != (a.modified_us > b.modified_us) or a.version == b.version
