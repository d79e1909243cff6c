"""This module provides what a web node reports of sync at scrape time
(API.md "Metrics"): when the last whole pass ended and how old each
partition's watermark is, read from the kv_sync_state rows that sync keeps
in every partition (kv.sync.base: WATERMARK, LAST_PASS).  Both times are
the partition's own clock, so neither the web node's nor the sync host's
clock enters an age.
"""

from typing import Dict, NamedTuple, Optional

from kv.errors import PartitionUnavailable
from kv.sync.base import LAST_PASS, WATERMARK


class SyncStatus(NamedTuple):
    """``last_pass_seconds``: when the newest whole pass ended (seconds since
    the Unix epoch, UTC), None when no partition that answered knows of one;
    ``watermark_age_seconds``: partition name -> seconds since sync last
    advanced its watermark (every row changed before then is converged),
    for the partitions that answered and have one."""
    last_pass_seconds: Optional[float]
    watermark_age_seconds: Dict[str, float]


def sync_status(store, skip=()) -> SyncStatus:
    """Read the sync state of every partition of ``store`` but those in
    ``skip`` (known to be down: a scrape does not wait on them).

    Three short queries a partition (two rows of kv_sync_state and the
    partition's clock); a partition that does not answer is left out.

    :returns: :class:`SyncStatus`.
    """
    last, ages = None, {}
    for name in store.names:
        if name in skip:
            continue
        partition = store.partitions[name]
        try:
            watermark = partition.get_state(WATERMARK)
            ended = partition.get_state(LAST_PASS)
            now = partition.clock_us() if watermark is not None else None
        except PartitionUnavailable:
            continue
        if watermark is not None:
            ages[name] = max(0.0, (now - watermark[1]) / 1e6)
        if ended is not None and (last is None or ended[1] / 1e6 > last):
            last = ended[1] / 1e6
    return SyncStatus(last, ages)
