"""Sync: one pass, run from cron, that makes every key's placement converge.

A pass takes a cluster-wide lease (a row of kv_sync_state on the first
reachable partition, aged by that partition's clock; a pass whose lease is
not on the first partition only copies), then, for every partition:

- closes its change epoch (kv.storage.replication's close_epoch): every
  client write stamped with a closed epoch has committed, so the scan below
  misses no late commit, and no web node's or sync host's clock decides what
  it reads;
- converges the rows that changed since its watermark (kept in that
  partition): each row is copied to the other partitions of its placement
  where it wins by ``kv.records.winner_key`` (newest modified, then version,
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

import datetime
import sys
import time

from kv.errors import PartitionUnavailable
from kv.sync.base import (EXPIRY_GRACE_SECONDS, LAST_PASS, LOCK, TOPOLOGY, WATERMARK, LeaseLost,
                          Summary, Sync)
from kv.sync.phases import converge_partition, purge
from kv.sync.verify import verify

__all__ = ["run", "Sync", "Summary", "LeaseLost", "verify", "LOCK", "TOPOLOGY", "WATERMARK",
           "LAST_PASS", "EXPIRY_GRACE_SECONDS"]


def run(store, full=False, dry_run=False, check=False, only=None,
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
        if not dry_run and only is None:          # when a whole pass ended (metrics)
            for name in sync.store.names:
                if name not in sync.summary.skipped:
                    sync.reach(name, sync.partition(name).set_state, LAST_PASS,
                               sync.holder.encode())
    except LeaseLost as e:
        lost = e
        print("sync: pass stopped: %s" % e, file=sys.stderr)
    finally:
        if not dry_run:
            sync.release()
    print(sync.summary.line(dry_run), file=out)
    return 1 if sync.summary.skipped or lost else 0
