"""This module provides sync: one pass, run from cron, that makes every key's
placement converge.

A pass takes a cluster-wide lease (a row of kv_sync_state on the first
reachable partition, aged by that partition's clock), then, for every
partition:

- closes its change epoch (partitions.Partition.close_epoch): every client
  write stamped with a closed epoch has committed, so the scan below misses
  no late commit, and no web node's or sync host's clock decides what it
  reads;
- converges the rows that changed since its watermark (kept in that
  partition): each row is copied to the other partitions of its placement
  where it wins by ``datastore.winner_key`` (newest modified, then version,
  then tombstone, then value bytes: last-writer-wins, the same winner on
  every replica), and a row that is not in its placement (written by a web
  node with the old partition list, by a failover, or left by a partition
  addition) is moved: copied to every partition of its placement, then
  deleted here once they all hold it or a newer copy and nobody changed it
  meanwhile.  Tombstones travel like values.  The watermark advances only
  past rows delivered to every target.  Copies that sync stores carry epoch
  0: sync delivers each row to its whole placement at once, so a copy is no
  new change to scan again;
- after the partition list or ``replicas`` changed (and on the first pass,
  and with ``--full``) converges every row of the partition instead, so that
  every key's placement is complete and every moved key has left.

Then purge: tombstones older than tombstone_days and rows expired for
EXPIRY_GRACE_SECONDS are deleted once no other partition holds an older copy
of the key (nothing can come back), and only when every partition answered
and has converged on the current partition list.  ``--verify`` compares
every copy of every key instead.

Every copy is conditional (``store_if_newer``), every delete too
(``delete_if_unchanged``): killing a pass at any instant and running it again
converges with nothing lost or resurrected.

    python sync.py [--full] [--dry-run] [--verify] [--partition NAME]

Exit codes: 0 done (or another sync holds the lock), 1 a partition was
skipped or the lease was lost (a later pass catches up), 2 --verify found
divergent keys, or a usage or configuration error.
"""

import argparse
import collections
import dataclasses
import datetime
import logging
import os
import socket
import sys
import time
from typing import Dict, List, Optional, Set, Tuple

from datastore import (Datastore, PartitionUnavailable, Record, now_us, open_store,
                       placement, winner_key)

log = logging.getLogger("kv.sync")

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

    def __init__(self, store: Datastore, dry_run: bool = False, only: Optional[str] = None,
                 full: bool = False):
        self.store, self.dry_run, self.full = store, dry_run, full
        self.batch = store.settings.sync.batch_size
        self.sources = [only] if only else list(store.names)
        self.summary = Summary()
        self.holder = "%s:%d" % (socket.gethostname(), os.getpid())
        self.lock_partition = None
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
            if host == socket.gethostname() and pid.isdigit() and not _alive(int(pid)):
                return False
            seen["holder"] = "%s (renewed %.0f s ago)" % (holder, (now - updated) / 1e6)
            return True

        errors = []
        for name in self.store.names:
            try:
                if self.partition(name).set_state(LOCK, mine, unless=held):
                    self.lock_partition = self.partition(name)
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


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# -- converging ------------------------------------------------------------------

def converge(sync: Sync, name: str, rows: List[Record]) -> bool:
    """Make the placement of every row of partition ``name`` in ``rows`` hold it.

    A row in its placement is copied to the placement's other partitions; a
    row outside it is copied to every partition of its placement, then
    deleted from ``name`` where they all hold it (or a newer copy) and it is
    unchanged.

    :returns: True when every target answered (the rows are delivered).
    """
    targets: Dict[str, List[Record]] = collections.defaultdict(list)
    off = []
    for record in rows:
        names = sync.placement(record)
        if name not in names:
            off.append(record)
        for target in names:
            if target != name:
                targets[target].append(record)
    complete = True
    for target, records in sorted(targets.items()):
        written = sync.copy(records, target)
        if written is None:
            complete = False
        else:
            sync.summary.copied += len(written)
    if off:
        complete = _move_off(sync, name, off) and complete
    return complete


def _move_off(sync: Sync, name: str, off: List[Record]) -> bool:
    """Delete from ``name`` the rows of ``off`` whose whole placement holds
    them or a newer copy; False when a placement partition did not answer."""
    present, complete = {}, True
    wanted = collections.defaultdict(list)
    for record in off:
        for target in sync.placement(record):
            wanted[target].append((record.bucket, record.key))
    for target, keys in wanted.items():
        found = sync.reach(target, sync.partition(target).read_many, keys)
        if found is None:
            complete = False
        present[target] = found or {}
    placed = [record for record in off
              if all(c is not None and winner_key(c) >= winner_key(record)
                     for c in (present[t].get((record.bucket, record.key))
                               for t in sync.placement(record)))]
    if sync.dry_run:
        sync.summary.moved += len(placed)
        return complete
    moved = sync.reach(name, sync.partition(name).delete_if_unchanged, placed)
    if moved is None:
        return False
    sync.summary.moved += moved
    return complete


def _position(watermark: Optional[bytes]) -> Optional[Tuple[int, bytes, bytes]]:
    """The (epoch, bucket, key) after which the scan resumes, or None.

    "E" means every row of epochs 1..E: the scan resumes at (E + 1, b"", b""),
    before every row of epoch E + 1 (no bucket is empty).
    """
    if watermark is None:
        return None
    parts = watermark.split(b" ")
    if len(parts) == 1:
        return int(parts[0]) + 1, b"", b""
    return int(parts[0]), bytes.fromhex(parts[1].decode()), bytes.fromhex(parts[2].decode())


def converge_partition(sync: Sync, name: str) -> None:
    """Close ``name``'s change epoch, then converge what changed since its
    watermark, or every row after a change of partition list or replicas
    (and with ``--full``).  Skips the partition when it does not answer."""
    source = sync.partition(name)
    try:
        closed = source.close_epoch() if not sync.dry_run else None
        state = source.get_state(TOPOLOGY)
        after = _position((source.get_state(WATERMARK) or (None,))[0])
    except PartitionUnavailable as e:
        sync.skip(name, e)
        return
    if sync.full or after is None or state is None or state[0] != sync.topology:
        if _scan_all(sync, name) and closed is not None:
            sync.reach(name, source.set_state, WATERMARK, b"%d" % closed)
            sync.reach(name, source.set_state, TOPOLOGY, sync.topology)
        return
    delivered = True
    while True:
        rows = sync.reach(name, source.rows_by, "change_epoch", after, sync.batch,
                          *(("change_epoch <= %s", (closed,)) if closed is not None else ()))
        if rows is None:
            return
        if rows:
            sync.summary.scanned += len(rows)
            delivered = converge(sync, name, [r for _, r in rows]) and delivered
            last = rows[-1]
            after = (last[0], last[1].bucket, last[1].key)
            if delivered and closed is not None and len(rows) == sync.batch:
                if sync.reach(name, source.set_state, WATERMARK, b"%d %s %s" % (
                        last[0], last[1].bucket.hex().encode(), last[1].key.hex().encode())) is None:
                    return
            sync.progress("converge", name)
        if len(rows) < sync.batch:
            break
    if delivered and closed is not None:
        sync.reach(name, source.set_state, WATERMARK, b"%d" % closed)


def _scan_all(sync: Sync, name: str) -> bool:
    """Converge every row of ``name``; True if every target answered."""
    source = sync.partition(name)
    after, complete = (b"", b""), True
    while True:
        rows = sync.reach(name, source.rows_after, after, sync.batch)
        if rows is None:
            return False
        if not rows:
            return complete
        sync.summary.scanned += len(rows)
        complete = converge(sync, name, rows) and complete
        after = (rows[-1].bucket, rows[-1].key)
        sync.progress("converge (all rows)", name)
        if len(rows) < sync.batch:
            return complete


def purge(sync: Sync) -> None:
    """Delete tombstones older than tombstone_days and rows expired for
    EXPIRY_GRACE_SECONDS, where no other partition holds an older copy of the
    key (so none can come back, through a read or a later move).  Skipped
    entirely when a partition was unreachable in this pass or has not yet
    converged on the current partition list."""
    if sync.summary.skipped:
        return
    for name in sync.store.names:
        state = sync.reach(name, sync.partition(name).get_state, TOPOLOGY)
        if state is None or state[0] != sync.topology:
            return
    now = now_us()
    cutoff = now - sync.store.settings.sync.tombstone_days * 86400 * 1_000_000
    expired = now - EXPIRY_GRACE_SECONDS * 1_000_000
    for name in sync.sources:
        source = sync.partition(name)
        for column, where, param in (("tombstone_us", "tombstone_us < %s", cutoff),
                                     ("expires_us", "expires_us <= %s", expired)):
            after = (-1, b"", b"")
            while True:
                rows = sync.reach(name, source.rows_by, column, after, sync.batch, where, (param,))
                if rows is None:
                    return
                if not rows:
                    break
                gone = _unshadowed(sync, name, [r for _, r in rows])
                if gone is None:
                    return
                purged = len(gone) if sync.dry_run else \
                    sync.reach(name, source.delete_if_unchanged, gone)
                if purged is None:
                    return
                sync.summary.purged += purged
                after = (rows[-1][0], rows[-1][1].bucket, rows[-1][1].key)
                sync.progress("purge", name)
                if len(rows) < sync.batch:
                    break


def _unshadowed(sync: Sync, name: str, records: List[Record]) -> Optional[List[Record]]:
    """The records of which no other partition holds an older copy; None
    when a partition did not answer."""
    by_key = {(r.bucket, r.key): r for r in records}
    older = set()
    for other in sync.store.names:
        if other == name:
            continue
        found = sync.reach(other, sync.partition(other).read_many, list(by_key))
        if found is None:
            return None
        older.update(key for key, copy in found.items()
                     if winner_key(copy) < winner_key(by_key[key]))
    return [r for key, r in by_key.items() if key not in older]


def verify(sync: Sync, out=sys.stdout) -> int:
    """Compare every copy of every key: all placement partitions must hold the
    same row, and no other partition may hold one.

    :returns: the number of divergent keys (examples are printed to ``out``).
    """
    streams = {}
    for name in sync.sources if len(sync.sources) == 1 else sync.store.names:
        streams[name] = _RowStream(sync.partition(name), sync.batch)
    names = list(sync.store.names)
    while True:
        heads = {}
        for name, stream in list(streams.items()):
            try:
                head = stream.peek()
            except PartitionUnavailable as e:
                sync.skip(name, e)
                del streams[name]
                continue
            if head is not None:
                heads[name] = head
        if not heads:
            break
        key = min((r.bucket, r.key) for r in heads.values())
        copies = {}
        for name in names:
            head = heads.get(name)
            if head is not None and (head.bucket, head.key) == key:
                copies[name] = head
                streams[name].pop()
        if len(sync.sources) == 1:       # --partition: read the other copies of its keys
            record = copies[sync.sources[0]]
            for other in sync.placement(record):
                if other not in copies:
                    try:
                        found = sync.partition(other).read(record.bucket, record.key)
                    except PartitionUnavailable as e:
                        sync.skip(other, e)
                        continue
                    if found is not None:
                        copies[other] = found
        sync.summary.scanned += 1
        sample = next(iter(copies.values()))
        expected = set(sync.placement(sample)) - sync.summary.skipped
        reached = set(copies) - sync.summary.skipped
        newest = max(winner_key(c) for c in copies.values())
        if reached != expected or any(winner_key(copies[n]) != newest for n in reached):
            sync.summary.divergent += 1
            if sync.summary.divergent <= EXAMPLES:
                print("divergent %r: %s" % (
                    sample.key.decode("utf-8", "replace"),
                    "; ".join("%s=%s" % (n, _describe(copies.get(n))) for n in sorted(expected | reached))),
                    file=out)
    return sync.summary.divergent


def _describe(record: Optional[Record]) -> str:
    if record is None:
        return "missing"
    return "v%d@%d%s" % (record.version, record.modified_us, " deleted" if record.deleted else "")


class _RowStream:
    """A partition's rows in (bucket, key) order, fetched in batches."""

    def __init__(self, partition, batch):
        self.partition, self.batch = partition, batch
        self.rows, self.index, self.after, self.done = [], 0, (b"", b""), False

    def peek(self) -> Optional[Record]:
        if self.index >= len(self.rows) and not self.done:
            self.rows = self.partition.rows_after(self.after, self.batch)
            self.index = 0
            self.done = len(self.rows) < self.batch
            if self.rows:
                self.after = (self.rows[-1].bucket, self.rows[-1].key)
        return self.rows[self.index] if self.index < len(self.rows) else None

    def pop(self) -> None:
        self.index += 1


def run(store: Datastore, full=False, dry_run=False, check=False, only=None,
        out=sys.stdout) -> int:
    """One pass (or a --verify) over ``store``; prints the summary line to ``out``.

    :returns: the exit code (see the module docstring).
    """
    sync = Sync(store, dry_run=dry_run or check, only=only, full=full)
    if check:
        divergent = verify(sync, out)
        print("verify: %d keys, %d divergent, %d partitions skipped, %.2f s"
              % (sync.summary.scanned, divergent, len(sync.summary.skipped),
                 time.monotonic() - sync.summary.started), file=out)
        return 2 if divergent else (1 if sync.summary.skipped else 0)
    print("sync%s: pass started %s by %s" % (
        " (dry run)" if dry_run else "",
        datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        sync.holder), file=out)
    if not dry_run:
        try:
            holder = sync.acquire()
        except PartitionUnavailable as e:
            print("sync: cannot take the lock: %s" % e, file=sys.stderr)
            return 1
        if holder is not None:
            print("sync: another sync holds the lock: %s; nothing done" % holder, file=out)
            return 0
    lost = None
    try:
        for name in sync.sources:
            converge_partition(sync, name)
        purge(sync)
    except LeaseLost as e:
        lost = e
        print("sync: pass stopped: %s" % e, file=sys.stderr)
    finally:
        if not dry_run:
            sync.release()
    print(sync.summary.line(dry_run), file=out)
    return 1 if sync.summary.skipped or lost else 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="One pass of replication, rebalancing and "
                                                 "purging over every partition.")
    parser.add_argument("--full", action="store_true",
                        help="anti-entropy over all rows, not only those changed since the "
                             "watermarks (for a new or restored partition)")
    parser.add_argument("--dry-run", action="store_true",
                        help="report what would change; change nothing")
    parser.add_argument("--verify", action="store_true",
                        help="compare every replica of every key; exit 2 if any diverge")
    parser.add_argument("--partition", metavar="NAME", help="only rows held by this partition")
    parser.add_argument("--config", help="configuration file (default: $KV_CONFIG or "
                                         "configuration.cfg)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR, format="%(asctime)s %(levelname)s %(message)s")
    store = open_store(args.config)
    if store is None:
        return 2
    if args.partition and args.partition not in store.partitions:
        print("unknown partition %r (known: %s)" % (args.partition, ", ".join(store.names)),
              file=sys.stderr)
        return 2
    try:
        return run(store, args.full, args.dry_run, args.verify, args.partition)
    finally:
        store.close()


if __name__ == "__main__":
    sys.exit(main())
