"""This module provides sync: one pass, run from cron, that makes every key's
placement converge.

A pass takes a cluster-wide lease (a row of kv_sync_state on the first
reachable partition), then runs four phases, each a function taking a
:class:`Sync`:

- replicate: for every partition, the rows stored since its watermark (kept in
  that partition) are copied to the other partitions of their placement where
  the incoming copy wins by ``datastore.winner_key`` (newest modified, then
  version, then tombstone, then value bytes): last-writer-wins, the same
  winner on every replica.  Tombstones travel like values.  A watermark
  advances only past batches delivered to every target, and is rescanned
  with an overlap of OVERLAP_US, so commits that land late are not missed.
- rebalance: when the partition list changed since a partition's last
  rebalance (and on the first pass), its rows that are no longer in their
  placement are copied to it, then deleted, each only if unchanged since.
- purge: tombstones older than tombstone_days and expired rows are deleted
  once no other copy of the key is older (nothing can resurrect).
- verify (``--verify`` only): compare every copy of every key.

Every copy is conditional (``store_if_newer``), every delete too
(``delete_if_unchanged``): killing a pass at any instant and running it again
converges with nothing lost or resurrected.

    python sync.py [--full] [--dry-run] [--verify] [--partition NAME]

Exit codes: 0 done (or another sync holds the lock), 1 a partition was
skipped (a later pass catches up), 2 --verify found divergent keys, or a
usage or configuration error.
"""

import argparse
import collections
import dataclasses
import logging
import os
import socket
import sys
import time
from typing import Dict, List, Optional, Set

from datastore import (Datastore, PartitionUnavailable, Record, now_us, open_store,
                       placement, winner_key)

log = logging.getLogger("kv.sync")

OVERLAP_US = 10_000_000        # rescan this much behind a watermark (late commits)
LEASE_SECONDS = 60             # a holder that stops renewing loses the lock after this
PROGRESS_SECONDS = 10          # how often long passes report progress
EXAMPLES = 10                  # divergent keys printed by --verify

LOCK, WATERMARK, TOPOLOGY = b"lock", b"watermark", b"topology"


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


class Sync:
    """State of one pass over ``store``.

    :param Datastore store: the cluster (its settings give batch_size and
        tombstone_days).
    :param bool dry_run: count what would change, change nothing (no lock,
        no watermarks).
    :param str only: a partition name: only rows held by it are processed.
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
        self.topology = ("%s|replicas=%d" % (",".join(store.names), store.replicas)).encode()

    # -- helpers ----------------------------------------------------------------
    def partition(self, name):
        return self.store.partitions[name]

    def placement(self, record: Record) -> List[str]:
        return placement(record.bucket, record.key, self.store.names, self.store.replicas)

    def skip(self, name: str, error: PartitionUnavailable) -> None:
        if name not in self.summary.skipped:
            print("sync: %s skipped: %s" % (name, error), file=sys.stderr)
        self.summary.skipped.add(name)

    def progress(self, phase: str, name: str) -> None:
        """Report progress now and then, and keep the lease alive."""
        if time.monotonic() - self._reported >= PROGRESS_SECONDS:
            self._reported = time.monotonic()
            print("sync: %s %s: %d rows scanned, %d copied, %d moved"
                  % (phase, name, self.summary.scanned, self.summary.copied, self.summary.moved),
                  file=sys.stderr)
        if self.lock_partition is not None and not self.dry_run:
            self.lock_partition.set_state(LOCK, self.holder.encode(),
                                          unless=lambda current: current is not None
                                          and current[0] != self.holder.encode())

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
        free when absent, older than LEASE_SECONDS, or held by a dead process
        of this host.

        :returns: None when taken, else a description of the holder.
        :raises PartitionUnavailable: when no partition answers.
        """
        mine = self.holder.encode()
        now = now_us()
        seen = {}

        def held(current):
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
                self.lock_partition.set_state(LOCK, b"", unless=lambda c: c is None
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


# -- phases ---------------------------------------------------------------------

def replicate(sync: Sync) -> None:
    """Copy rows changed since each partition's watermark to their placement.

    With ``sync.full`` every row is read (anti-entropy for a new or restored
    partition).  Memory is bounded by batch_size rows.
    """
    for name in sync.sources:
        if name in sync.summary.skipped:
            continue
        source = sync.partition(name)
        try:
            state = None if sync.full else source.get_state(WATERMARK)
        except PartitionUnavailable as e:
            sync.skip(name, e)
            continue
        after, delivered = _resume_position(state[0] if state else None), True
        while True:
            try:
                rows = source.rows_by("changed_us", after, sync.batch)
            except PartitionUnavailable as e:
                sync.skip(name, e)
                break
            if not rows:
                break
            sync.summary.scanned += len(rows)
            targets: Dict[str, List[Record]] = collections.defaultdict(list)
            for _, record in rows:
                names = sync.placement(record)
                if name in names:       # rows off their placement are rebalance's
                    for target in names:
                        if target != name:
                            targets[target].append(record)
            delivered = copy_grouped(sync, targets) and delivered
            last = rows[-1]
            after = (last[0], last[1].bucket, last[1].key)
            if delivered and not sync.dry_run:
                try:
                    source.set_state(WATERMARK, b"%d %s %s" % (
                        last[0], last[1].bucket.hex().encode(), last[1].key.hex().encode()))
                except PartitionUnavailable as e:
                    sync.skip(name, e)
                    break
            sync.progress("replicate", name)
            if len(rows) < sync.batch:
                break


def _resume_position(watermark: Optional[bytes]):
    """Where replicate resumes: after the watermark's (changed_us, bucket, key)
    position, or OVERLAP_US before it (rows stored in one statement share a
    changed_us, so the position, not the time alone, marks what was read)."""
    if watermark is None:
        return -1, b"", b""
    changed, bucket, key = watermark.split(b" ")
    if OVERLAP_US:
        return int(changed) - OVERLAP_US, b"", b""
    return int(changed), bytes.fromhex(bucket.decode()), bytes.fromhex(key.decode())


def copy_grouped(sync: Sync, targets: Dict[str, List[Record]]) -> bool:
    """Copy each target's records to it; False if a target was unreachable."""
    complete = True
    for target, records in sorted(targets.items()):
        written = sync.copy(records, target)
        if written is None:
            complete = False
        else:
            sync.summary.copied += len(written)
    return complete


def rebalance(sync: Sync) -> None:
    """Move rows that are no longer in their placement (after the partition
    list changed) to it: copy everything first, then delete each moved row
    whose copies are all in place and that nobody changed meanwhile.  A
    partition is scanned whole once per change of the partition list."""
    for name in sync.sources:
        if name in sync.summary.skipped:
            continue
        source = sync.partition(name)
        try:
            state = source.get_state(TOPOLOGY)
        except PartitionUnavailable as e:
            sync.skip(name, e)
            continue
        if state and state[0] == sync.topology and not sync.full:
            continue
        complete = _scan_off_placement(sync, name, delete=False)
        complete = complete and _scan_off_placement(sync, name, delete=True)
        if complete and not sync.dry_run:
            try:
                source.set_state(TOPOLOGY, sync.topology)
            except PartitionUnavailable as e:
                sync.skip(name, e)


def _scan_off_placement(sync: Sync, name: str, delete: bool) -> bool:
    """One scan of partition ``name``; returns True if every target answered."""
    source = sync.partition(name)
    after, complete = (b"", b""), True
    while True:
        try:
            rows = source.rows_after(after, sync.batch)
        except PartitionUnavailable as e:
            sync.skip(name, e)
            return False
        if not rows:
            return complete
        if not delete:
            sync.summary.scanned += len(rows)
        targets: Dict[str, List[Record]] = collections.defaultdict(list)
        off = [r for r in rows if name not in sync.placement(r)]
        for record in off:
            for target in sync.placement(record):
                targets[target].append(record)
        if delete:
            present = {}
            for target, records in targets.items():
                try:
                    present[target] = sync.partition(target).read_many(
                        [(r.bucket, r.key) for r in records])
                except PartitionUnavailable as e:
                    sync.skip(target, e)
                    complete = False
            placed = [record for record in off
                      if all(c is not None and winner_key(c) >= winner_key(record)
                             for c in (present.get(t, {}).get((record.bucket, record.key))
                                       for t in sync.placement(record)))]
            try:
                sync.summary.moved += len(placed) if sync.dry_run else \
                    source.delete_if_unchanged(placed)
            except PartitionUnavailable as e:
                sync.skip(name, e)
                return False
        else:
            complete = copy_grouped(sync, targets) and complete
        after = (rows[-1].bucket, rows[-1].key)
        sync.progress("rebalance", name)
        if len(rows) < sync.batch:
            return complete


def purge(sync: Sync) -> None:
    """Delete tombstones older than tombstone_days and expired rows, where no
    other copy of the key on its placement is older (so none can come back).
    Skipped entirely when a partition was unreachable in this pass."""
    if sync.summary.skipped:
        return
    now = now_us()
    cutoff = now - sync.store.settings.sync.tombstone_days * 86400 * 1_000_000
    for name in sync.sources:
        source = sync.partition(name)
        for column, where, param in (("tombstone_us", "tombstone_us < %s", cutoff),
                                     ("expires_us", "expires_us <= %s", now)):
            after = (-1, b"", b"")
            while True:
                try:
                    rows = source.rows_by(column, after, sync.batch, where, (param,))
                except PartitionUnavailable as e:
                    sync.skip(name, e)
                    return
                if not rows:
                    break
                records = [r for _, r in rows if name in sync.placement(r)]
                others = collections.defaultdict(list)
                for record in records:
                    for target in sync.placement(record):
                        if target != name:
                            others[target].append(record)
                copies = {}
                try:
                    for target, group in others.items():
                        copies[target] = sync.partition(target).read_many(
                            [(r.bucket, r.key) for r in group])
                except PartitionUnavailable as e:
                    sync.skip(target, e)
                    return
                gone = [record for record in records
                        if not any(c is not None and winner_key(c) < winner_key(record)
                                   for t in sync.placement(record) if t != name
                                   for c in [copies[t].get((record.bucket, record.key))])]
                try:
                    sync.summary.purged += len(gone) if sync.dry_run else \
                        source.delete_if_unchanged(gone)
                except PartitionUnavailable as e:
                    sync.skip(name, e)
                    return
                after = (rows[-1][0], rows[-1][1].bucket, rows[-1][1].key)
                sync.progress("purge", name)
                if len(rows) < sync.batch:
                    break


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
    if not dry_run:
        try:
            holder = sync.acquire()
        except PartitionUnavailable as e:
            print("sync: cannot take the lock: %s" % e, file=sys.stderr)
            return 1
        if holder is not None:
            print("sync: another sync holds the lock: %s; nothing done" % holder, file=out)
            return 0
    try:
        replicate(sync)
        rebalance(sync)
        purge(sync)
    finally:
        if not dry_run:
            sync.release()
    print(sync.summary.line(dry_run), file=out)
    return 1 if sync.summary.skipped else 0


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
