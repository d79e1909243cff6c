"""The change feed's notifier: one per process, it settles the partitions'
change epochs (closes an epoch that holds committed rows, so they become
readable by the feed) and wakes the long polls of the buckets that changed.

One poller thread per process does the probing while long polls wait, so
the cost of waiting is one probe per partition per tick, whatever the number
of waiters; the waiters themselves hold their request thread (web.py is
WSGI) and are capped per process (``[server] max_watchers``).
"""

import logging
import math
import os
import threading
import time
from typing import Dict, Optional, Tuple

from kv.errors import PartitionUnavailable, TooManyWaiters
from kv.storage.feed import PROBE_ROWS

log = logging.getLogger("kv.watch")

#: Seconds between two probes of the poller while long polls wait; also how
#: old a settle may be for a feed read to reuse it.
TICK_SECONDS = 0.05
#: Seconds without a close attempt on a partition after one found a write
#: holding the old epoch (each attempt makes that partition's new writes
#: wait up to the close's statement time, 0.25 s).
CLOSE_BACKOFF_SECONDS = 1.0


class ChangeNotifier:
    """Settles change epochs and wakes long polls (API.md "Change feed").

    :param dict partitions: partition name -> :class:`kv.storage.partition.Partition`.
    :param int max_waiters: long polls this process holds at most.
    """

    def __init__(self, partitions: Dict[str, object], max_waiters: int):
        self._partitions = partitions
        self.max_waiters = max_waiters
        self._settling = threading.Lock()          # one settle at a time
        self._cond = threading.Condition()
        self._generation: Dict[bytes, int] = {}   # bucket -> changes announced
        self._everything = 0                      # announcements of "many buckets"
        self._waiters = 0
        self._seen: Dict[str, int] = {}           # partition -> first epoch not yet probed past
        self._backoff: Dict[str, float] = {}
        self._settled_at = -math.inf
        self._poller: Optional[Tuple[int, threading.Thread]] = None
        #: partition name -> the newest current epoch read from it.
        self.last_epoch: Dict[str, int] = {}

    def stamp(self, bucket: bytes) -> Tuple[int, int]:
        """What has been announced for ``bucket`` so far; :meth:`wait` returns
        once it differs."""
        return self._generation.get(bucket, 0), self._everything

    def settle(self, max_age: float = TICK_SECONDS) -> None:
        """Probe every partition and close each open epoch that holds
        committed rows, then wake the waiters of the buckets that changed.

        Skipped when the last settle ended less than ``max_age`` seconds ago.
        A partition that does not answer is skipped; one whose close finds a
        write holding the old epoch is not tried again for
        CLOSE_BACKOFF_SECONDS (its rows wait for that close, or sync's).
        """
        with self._settling:
            if time.monotonic() - self._settled_at < max_age:
                return
            changed, many = set(), False
            for name, partition in self._partitions.items():
                try:
                    if name not in self._seen:
                        self._seen[name] = partition.probe_changes(None)[0]
                    current, rows = partition.probe_changes(self._seen[name])
                except PartitionUnavailable:
                    continue
                self.last_epoch[name] = current
                changed.update(bucket for bucket, _ in rows)
                many = many or len(rows) >= PROBE_ROWS
                seen = current
                if rows and rows[0][1] >= current:          # the open epoch holds rows
                    seen = self._seen[name]
                    if time.monotonic() >= self._backoff.get(name, 0):
                        try:
                            closed = partition.close_epoch()
                            # probe again from the closed epoch: rows that
                            # committed during the close are announced next tick
                            seen = closed
                            self.last_epoch[name] = closed + 1
                        except PartitionUnavailable:
                            self._backoff[name] = time.monotonic() + CLOSE_BACKOFF_SECONDS
                self._seen[name] = seen
            self._settled_at = time.monotonic()
        if changed or many:
            with self._cond:
                for bucket in changed:
                    self._generation[bucket] = self._generation.get(bucket, 0) + 1
                self._everything += many
                self._cond.notify_all()

    def wait(self, bucket: bytes, stamp: Tuple[int, int], timeout: float) -> None:
        """Block until a change of ``bucket`` is announced after ``stamp``
        (see :meth:`stamp`), or ``timeout`` seconds pass.

        :raises TooManyWaiters: when ``max_waiters`` long polls already wait
            in this process (the caller answers 503 with Retry-After).
        """
        with self._cond:
            if self._waiters >= self.max_waiters:
                raise TooManyWaiters(self.max_waiters)
            self._waiters += 1
            self._start_poller()
            self._cond.notify_all()
            try:
                self._cond.wait_for(lambda: self.stamp(bucket) != stamp, timeout)
            finally:
                self._waiters -= 1

    def _start_poller(self) -> None:
        """Start this process's poller thread unless it runs (called with
        the condition held; a forked worker starts its own)."""
        if self._poller is not None and self._poller[0] == os.getpid() \
                and self._poller[1].is_alive():
            return
        thread = threading.Thread(target=self._poll, name="kv-change-poller", daemon=True)
        self._poller = (os.getpid(), thread)
        thread.start()

    def _poll(self) -> None:
        """The poller: settle every TICK_SECONDS while long polls wait, park otherwise."""
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._waiters > 0)
            try:
                self.settle()
            except Exception:                 # never let the poller die: waiters time out
                log.exception("change poller")
            time.sleep(TICK_SECONDS)
