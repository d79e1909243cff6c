"""``sync.py --verify``: compare every copy of every key (through the one
merge of kv.storage.merge)."""

import functools
import sys
from typing import Optional

from kv.records import Record, winner_key
from kv.storage.merge import SortedStream, merge
from kv.sync.base import EXAMPLES, Sync


def verify(sync: Sync, out=sys.stdout) -> int:
    """Compare every copy of every key: all placement partitions must hold the
    same row, and no other partition may hold one.

    :returns: the number of divergent keys (examples are printed to ``out``).
    """
    names = sync.sources if len(sync.sources) == 1 else sync.store.names
    streams = [SortedStream(name, functools.partial(_rows_after, sync.partition(name)),
                            _bucket_key, ((b"", b""), False), sync.batch) for name in names]
    for _, heads in merge(streams, lambda stream, error: sync.skip(stream.name, error)):
        copies = {stream.name: row for stream, row in heads}
        if len(sync.sources) == 1:       # --partition: read the other copies of its keys
            record = copies[sync.sources[0]]
            for other in sync.placement(record):
                if other not in copies:
                    found = sync.reach(other, sync.partition(other).read, record.bucket, record.key)
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
                    "; ".join("%s=%s" % (n, _describe(copies.get(n)))
                              for n in sorted(expected | reached))),
                    file=out)
    return sync.summary.divergent


def _describe(record: Optional[Record]) -> str:
    if record is None:
        return "missing"
    return "v%d@%d%s" % (record.version, record.modified_us, " deleted" if record.deleted else "")


def _rows_after(partition, position, limit: int):
    return partition.rows_after(position[0], limit)


def _bucket_key(record: Record):
    return record.bucket, record.key
