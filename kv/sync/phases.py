"""The phases of a pass: converge (each partition's changed rows, or all of
them after a change of partition list or replicas, reach their whole
placement; rows off their placement move) and purge (old tombstones and long
expired rows go once nothing older can come back)."""

import collections
from typing import Dict, List, Optional, Tuple

from kv.errors import PartitionUnavailable
from kv.records import Record, winner_key
from kv.sync.base import EXPIRY_GRACE_SECONDS, TOPOLOGY, WATERMARK, Sync

CLOSE_EPOCH_TRIES = 4          # a hot row may hold the old epoch past one 0.25 s wait


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
    if not sync.may_delete:
        return False                   # not moved yet: the watermark stays before them
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
        closed = _close_epoch(source) if not sync.dry_run else None
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


def _close_epoch(source, tries: int = CLOSE_EPOCH_TRIES) -> int:
    """``source.close_epoch()``, tried again while a write holds the old
    epoch past the wait (busy, not down)."""
    for attempt in range(tries):
        try:
            return source.close_epoch()
        except PartitionUnavailable as e:
            if e.down or attempt == tries - 1:
                raise
    raise AssertionError("unreachable")


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
    if sync.summary.skipped or not sync.may_delete:
        return
    for name in sync.store.names:
        state = sync.reach(name, sync.partition(name).get_state, TOPOLOGY)
        if state is None or state[0] != sync.topology:
            return
    now = sync.store.clock()
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
