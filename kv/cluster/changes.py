"""The change feed of a bucket (API.md "Change feed (watch)"): the rows that
client writes stored, read from every partition in change order (its change
epoch, then key) up to its newest closed epoch, merged into pages, with an
opaque cursor holding one position per partition.

Guarantees and their source:

- At least once: a partition's rows below its current epoch are all
  committed (closing an epoch waits for the writes that read it), so a
  position never moves past a row that commits late; a key written again
  moves to a later epoch and appears again, with its newest state.
- Sync's copies (replication, rebalancing) are stored with epoch 0 and are
  never entries; a write that failed over to another replica is stamped by
  the partition that took it, once.
- A position per partition: order holds per partition only.
"""

import base64
import dataclasses
import hashlib
import heapq
import json
import time
from typing import Callable, Dict, List, Optional, Tuple

from kv.errors import CursorExpired, InvalidRequest, KeyNotFound, PartitionUnavailable
from kv.records import Record, winner_key

#: The most seconds a long poll waits (API.md: wait is 1 to 30).
MAX_WAIT_SECONDS = 30
#: Bytes of values in one values=true page at most (or one value, when larger).
FEED_VALUE_BYTES = 8 << 20
#: Reads of one request while its pages come out empty (every row filtered
#: out by prefix or permission) before it answers an empty page.
EMPTY_ROUNDS = 10
#: A read reuses a settle of the epochs (kv.cluster.watch) at most this old
#: (seconds), so a write acknowledged before the read is usually in its page.
READ_SETTLE_SECONDS = 0.005
#: Rows one catching-up query examines at most (most may be older than the
#: cursor and passed over).
CATCH_UP_ROWS = 2000
_CHECK_BYTES = 8

#: A partition's position: (epoch, key) after the row (epoch, key) in change
#: order (key b"": before every row of that epoch); or, while catching up on
#: a partition without one, (0, key, since_us, epoch): after that key in key
#: order, rows modified since since_us, then (epoch, b"") (0: the epoch when
#: the catching up began, still unread).
Position = Tuple


@dataclasses.dataclass
class FeedCursor:
    """Where a feed resumes: ``positions`` maps partition name ->
    :data:`Position`; ``issued_us`` (microseconds since the Unix epoch) is when the feed last
    had nothing older to deliver, which the tombstone window is counted from."""
    bucket: bytes
    issued_us: int
    positions: Dict[str, Position]

    def encode(self) -> str:
        """The cursor as an opaque URL-safe string, with a checksum so that
        a mangled or made-up one is refused (authentication on: the HTTP
        layer also seals it, so it cannot be forged)."""
        payload = json.dumps({"b": self.bucket.hex(), "t": self.issued_us,
                              "p": {n: [p[0], p[1].hex()] + list(p[2:])
                                    for n, p in sorted(self.positions.items())}},
                             separators=(",", ":")).encode()
        token = payload + hashlib.sha256(b"kv-changes\0" + payload).digest()[:_CHECK_BYTES]
        return base64.urlsafe_b64encode(token).decode("ascii").rstrip("=")

    @classmethod
    def decode(cls, text: str, bucket: bytes) -> "FeedCursor":
        """Parse a cursor made by :meth:`encode` for ``bucket``.

        :raises InvalidRequest: when it is not one, or is another bucket's.
        """
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
            payload, check = raw[:-_CHECK_BYTES], raw[-_CHECK_BYTES:]
            if hashlib.sha256(b"kv-changes\0" + payload).digest()[:_CHECK_BYTES] != check:
                raise ValueError("checksum")
            doc = json.loads(payload)
            cursor = cls(bytes.fromhex(doc["b"]), int(doc["t"]),
                         {str(n): _position(p) for n, p in doc["p"].items()})
        except (ValueError, TypeError, KeyError, AttributeError):
            raise InvalidRequest("the cursor is not a change feed cursor of this service") from None
        if cursor.bucket != bucket:
            raise InvalidRequest("the cursor belongs to another bucket's change feed")
        return cursor


def _position(item) -> Position:
    """A position from its JSON list. :raises ValueError: for a bad one."""
    epoch, key = int(item[0]), bytes.fromhex(item[1])
    if epoch > 0 and len(item) == 2:
        return epoch, key
    if epoch == 0 and len(item) == 4 and all(int(x) >= 0 for x in item[2:]):
        return 0, key, int(item[2]), int(item[3])
    raise ValueError("position")


@dataclasses.dataclass
class ChangePage:
    """One page of the feed: ``changes`` are records (values empty unless
    asked for; deleted ones are tombstones), ``cursor`` where the next page
    starts, ``unavailable`` the partitions that could not be read (their
    entries come in a later page), ``more`` true when rows are left now."""
    changes: List[Record]
    cursor: FeedCursor
    unavailable: List[str]
    more: bool

    @property
    def complete(self) -> bool:
        """API.md's ``complete``: every partition was read."""
        return not self.unavailable


def start(store, bucket: bytes, since: Optional[str]) -> FeedCursor:
    """The cursor of ``since``: ``now`` (None too), ``0`` or a ``next``.

    ``now`` starts each partition at the current epoch that the settle just
    before read (:attr:`kv.cluster.watch.ChangeNotifier.last_epoch`; a
    partition that does not answer: the newest this process has seen of
    it, else by catching up from now; it takes no writes while down, so
    little is repeated).

    :raises InvalidRequest: for a cursor that is not this bucket's.
    :raises CursorExpired: for one older than ``[sync] tombstone_days``.
    """
    now = store.clock()
    if since in (None, "now"):              # the epochs the settle before this read
        known = store.notifier.last_epoch
        return FeedCursor(bucket, now, {name: (known[name], b"") if name in known
                                        else (0, b"", now, 0) for name in store.names})
    if since == "0":                        # every row of every partition, in key order first
        return FeedCursor(bucket, now, {name: (0, b"", 0, 0) for name in store.names})
    cursor = FeedCursor.decode(since, bucket)
    if now - cursor.issued_us > store.settings.sync.tombstone_days * 86400 * 1_000_000:
        raise CursorExpired("the cursor is older than the tombstone window (%d days); "
                            "start again with since=now or since=0"
                            % store.settings.sync.tombstone_days)
    # A partition added since the cursor was made: every row modified since
    # (rebalancing copied there writes that sync moved off the partition that
    # took them, maybe before this feed read them there).
    cursor.positions = {name: cursor.positions.get(name, (0, b"", cursor.issued_us, 0))
                        for name in store.names}
    return cursor


def read_changes(store, bucket: bytes, since: Optional[str], prefix: bytes = b"",
                 limit: int = 100, values: bool = False,
                 visible: Optional[Callable[[bytes], bool]] = None,
                 wait: Optional[float] = None) -> ChangePage:
    """A page of ``bucket``'s feed after ``since`` (see :func:`start`).

    With ``wait`` (seconds, at most MAX_WAIT_SECONDS) and nothing new, the
    call blocks until the notifier announces a change of the bucket (then
    reads again) or the time is up (then answers an empty page).

    :param bytes prefix: only keys starting with it.
    :param int limit: entries at most, 1 to 1000.
    :param bool values: read the values of the entries (within FEED_VALUE_BYTES).
    :param visible: None or ``visible(key) -> bool`` (the caller's ``list``
        permission): a row it refuses is passed over, not shown.
    :returns: :class:`ChangePage`.
    :raises InvalidRequest: bad cursor or limit; CursorExpired: old cursor;
        TooManyWaiters: the process holds max_watchers long polls already.
    """
    if not 1 <= limit <= 1000:
        raise InvalidRequest("limit must be from 1 to 1000")
    deadline = time.monotonic() + (wait or 0)
    notifier = store.notifier
    notifier.settle(READ_SETTLE_SECONDS)       # first: ``now`` then starts after the close
    cursor = start(store, bucket, since)
    passed_over = 0
    while True:
        stamp = notifier.stamp(bucket)
        page = _page(store, cursor, prefix, limit, values, visible)
        cursor = page.cursor
        if page.changes:
            return page
        if page.more:
            passed_over += 1
            if passed_over < EMPTY_ROUNDS:
                continue
            return page
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return page
        notifier.wait(bucket, stamp, remaining)


def _read_partition(store, name: str, bucket: bytes, position: Position, end, limit: int):
    """One partition's rows after ``position``: (stream, more), the stream a
    list of (modified_us, name, position after the row, record, value size),
    in the partition's order; the last item's position is where the
    partition stands once the stream is consumed (an empty stream: the
    position to take at once, as the only item, with record None).

    :raises PartitionUnavailable: when it does not answer.
    """
    partition = store.partitions[name]
    if position[0] > 0:
        current, rows = partition.changes(bucket, position, end, limit)
        items = [(r.modified_us, name, (e, r.key), r, size) for e, r, size in rows]
        if len(rows) == limit:
            return items, True
        final, left = (current, b""), False
    else:                        # catching up: every row modified since, in key order
        _, after, since_us, epoch = position
        current, rows, last = partition.catch_up(bucket, after, end, since_us,
                                                 max(limit, CATCH_UP_ROWS))
        epoch = epoch or current            # rows stamped from here on come by epoch
        items = [(r.modified_us, name, (0, r.key, since_us, epoch), r, size) for _, r, size in rows]
        final = (0, last, since_us, epoch) if last is not None else (epoch, b"")
        left = last is not None
    if items:
        items[-1] = items[-1][:2] + (final,) + items[-1][3:]
        return items, left
    return [(0, name, final, None, 0)], left


def _page(store, cursor: FeedCursor, prefix: bytes, limit: int, values: bool,
          visible) -> ChangePage:
    """Read up to ``limit`` rows after each partition's position and merge
    them by modification time, taking each partition's rows in order."""
    end = (prefix, prefix[:-1] + bytes([prefix[-1] + 1])) if prefix else (b"", None)
    streams, positions, unavailable, more = [], dict(cursor.positions), [], False
    for name in store.names:
        try:
            stream, left = _read_partition(store, name, cursor.bucket, positions[name], end, limit)
        except PartitionUnavailable:
            unavailable.append(name)
            continue
        if stream[0][3] is None:            # nothing to deliver: move on at once
            positions[name] = stream[0][2]
        else:
            streams.append(stream)
        more = more or left
    taken: Dict[bytes, int] = {}
    entries: List[Tuple[Record, str]] = []
    value_bytes = 0
    for _, name, position, record, size in heapq.merge(*streams, key=lambda t: t[0]):
        if len(entries) == limit or (values and entries and value_bytes + size > FEED_VALUE_BYTES):
            more = True
            break
        positions[name] = position
        if visible is not None and not visible(record.key):
            continue
        value_bytes += size
        seen = taken.get(record.key)
        if seen is None:
            taken[record.key] = len(entries)
            entries.append((record, name))
        elif winner_key(record) > winner_key(entries[seen][0]):   # the newer of two copies
            entries[seen] = (record, name)
    records = _with_values(store, cursor.bucket, entries) if values else [r for r, _ in entries]
    issued = store.clock() if not unavailable and not more else cursor.issued_us
    return ChangePage(records, FeedCursor(cursor.bucket, issued, positions), unavailable, more)


def _with_values(store, bucket: bytes, entries: List[Tuple[Record, str]]) -> List[Record]:
    """The entries with their values, read from the partition each came from
    (one query per partition): a key written since shows its newer state; a
    key no longer there (sync moved it) is read through the ordinary path,
    and one deleted since shows as the entry it was, without a value."""
    groups: Dict[str, List[bytes]] = {}
    for record, name in entries:
        if not record.deleted:
            groups.setdefault(name, []).append(record.key)
    found: dict = {}
    for name, keys in groups.items():
        try:
            found.update(store.partitions[name].read_many([(bucket, k) for k in keys]))
        except PartitionUnavailable:
            pass
    out = []
    for record, _ in entries:
        if record.deleted:
            out.append(record)
            continue
        current = found.get((bucket, record.key))
        if current is None:
            try:
                current = store.get(bucket, record.key)[0]
            except (KeyNotFound, PartitionUnavailable):
                current = record._replace(value=None)
        out.append(current if winner_key(current) >= winner_key(record) else record)
    return out

