"""Listing: the live keys of a bucket in byte order, merged from every
partition's sorted rows, in pages bounded before the work (API.md "List")."""

import base64
import dataclasses
import functools
from typing import Callable, List, Optional, Tuple

from kv.errors import InvalidRequest, KeyNotFound, PartitionUnavailable
from kv.records import Record, winner_key
from kv.storage.merge import SortedStream, merge

LIST_READ_AHEAD = 1000          # rows per listing query at most
LIST_ROW_BUDGET = 10000         # rows a listing page examines at most (then it ends with next)
LIST_VALUE_BYTES = 8 << 20      # bytes of values in one values=true page at most (or one value)


def _successor(prefix: bytes) -> bytes:
    """The smallest byte string greater than every string starting with prefix.

    Valid UTF-8 never contains 0xFF, so incrementing the last byte suffices.
    """
    return prefix[:-1] + bytes([prefix[-1] + 1])


def encode_cursor(position: Tuple[bytes, bool]) -> str:
    """Encode a listing position (key, inclusive) as an opaque URL-safe cursor."""
    key, inclusive = position
    return base64.urlsafe_b64encode((b"i" if inclusive else b"x") + key).decode("ascii").rstrip("=")


def decode_cursor(cursor: str) -> Tuple[bytes, bool]:
    """Decode a cursor made by :func:`encode_cursor`.

    :returns: (key, inclusive) where the listing resumes.
    :raises InvalidRequest: when the cursor was not made by this service.
    """
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
    except (ValueError, TypeError):
        raise InvalidRequest("the cursor is not valid") from None
    if len(raw) < 2 or raw[:1] not in (b"i", b"x"):
        raise InvalidRequest("the cursor is not valid")
    return raw[1:], raw[:1] == b"i"


@dataclasses.dataclass
class Listing:
    """One page of a listing.

    ``items``: live records in key order (values empty unless asked for);
    ``prefixes``: common prefixes (bytes) when a delimiter was given;
    ``next``: the opaque cursor of the next page, or None on the last page;
    ``unavailable``: names of partitions that could not be read (the page may
    miss keys whose every copy is on them).
    """
    items: List[Record]
    prefixes: List[bytes]
    next: Optional[str]
    unavailable: List[str]
    values: bool = False


def _scan(partition, bucket: bytes, end: Optional[bytes], position, limit: int):
    start, inclusive = position
    return partition.scan(bucket, start, inclusive, end, limit)


def _key_of(row) -> bytes:
    return row[0].key


def list_keys(store, bucket: bytes, prefix: bytes = b"", delimiter: bytes = b"",
              cursor: Optional[str] = None, limit: int = 100, values: bool = False,
              visible: Optional[Callable[[bytes, bool], bool]] = None) -> Listing:
    """List live keys in byte order, merging every partition's sorted rows.

    Each live key appears once (the newest copy wins, tombstones hide older
    copies).  With a delimiter, keys containing it after the prefix are
    rolled up into one common prefix each, as S3 ListObjectsV2 does; a
    prefix counts as one entry towards ``limit``.

    Every page is bounded before the work: it examines at most
    LIST_ROW_BUDGET rows (tombstones and expired rows included) and, with
    ``values``, holds at most LIST_VALUE_BYTES of values (or one value,
    when a single one is larger); a page cut short by a budget has fewer
    than ``limit`` entries (maybe none) and a ``next`` cursor.  Values
    are read only for the keys of the page, after the merge.  Memory is
    bounded by partitions x LIST_READ_AHEAD keys plus the value budget.

    :param Datastore store: the cluster (its partitions, replicas and clock).
    :param bytes prefix: only keys starting with these bytes.
    :param bytes delimiter: roll-up delimiter, or empty for none.
    :param str cursor: ``Listing.next`` of the previous page, or None.
    :param int limit: entries per page, 1 to 1000.
    :param bool values: include values in the records.
    :param visible: None, or a filter ``visible(name, is_prefix) -> bool``
        (the caller's permissions): a key or common prefix it refuses is
        examined but not shown, so a page may hold fewer than ``limit``
        entries, even none, with a ``next`` cursor.
    :returns: :class:`Listing`.
    :raises InvalidRequest: for a bad cursor or limit.
    :raises PartitionUnavailable: when ``replicas`` or more partitions are
        down, so some keys could have no readable copy.
    """
    if not 1 <= limit <= 1000:
        raise InvalidRequest("limit must be from 1 to 1000")
    start, inclusive = (prefix, True)
    if cursor:
        position = decode_cursor(cursor)
        if position[0] >= prefix:
            start, inclusive = position
    end = _successor(prefix) if prefix else None
    streams = [SortedStream(name, functools.partial(_scan, store.partitions[name], bucket, end),
                            _key_of, (start, inclusive), min(limit + 1, LIST_READ_AHEAD),
                            LIST_READ_AHEAD) for name in store.names]
    unavailable: List[str] = []

    def skip(stream, error):
        unavailable.append(stream.name)
        if len(unavailable) >= store.replicas:
            raise PartitionUnavailable(unavailable) from None
    now = store.clock()
    entries = []  # (record or None, prefix or None, resume position, source partition)
    examined, value_bytes, cut, last = 0, 0, None, None
    for key, copies in merge(streams, skip):
        if len(entries) > limit:
            break
        if examined >= LIST_ROW_BUDGET:
            cut = last
            break
        examined += len(copies)
        source, (winner, size) = max(copies, key=lambda c: winner_key(c[1][0]))
        last = (key, False)
        if not winner.is_live(now):
            continue
        cut_at = key.find(delimiter, len(prefix)) if delimiter else -1
        if cut_at >= 0:
            common = key[:cut_at + len(delimiter)]
            resume = _successor(common)
            for stream in streams:
                stream.seek(resume)
            last = (resume, True)
            if visible is None or visible(common, True):
                entries.append((None, common, last, None))
            continue
        if visible is not None and not visible(key, False):
            continue
        if values and entries and value_bytes + size > LIST_VALUE_BYTES and len(entries) < limit:
            cut = entries[-1][2]
            break
        value_bytes += size
        entries.append((winner, None, (key, False), store.partitions[source.name]))
    next_cursor = encode_cursor(cut) if cut else None
    if len(entries) > limit:
        entries = entries[:limit]
        next_cursor = encode_cursor(entries[-1][2])
    items = [e for e in entries if e[0] is not None]
    records = _with_values(store, bucket, items, now) if values else [e[0] for e in items]
    return Listing(records, [e[1] for e in entries if e[1] is not None], next_cursor,
                   unavailable, values)


def _with_values(store, bucket: bytes, items: list, now: int) -> List[Record]:
    """The records of a listing page's items with their values, read from
    the partition each came from (one query per partition); a key written
    since the scan shows its new state.  A key that partition no longer
    holds live (sync moved it meanwhile, or it cannot be read now) is read
    through the ordinary read path; one deleted since is left out."""
    groups: dict = {}
    for record, _, _, partition in items:
        groups.setdefault(partition, []).append(record.key)
    found: dict = {}
    for partition, keys in groups.items():
        try:
            found.update(partition.read_many([(bucket, k) for k in keys]))
        except PartitionUnavailable:
            pass                               # each key falls back to store.get
    records = []
    for record, _, _, _ in items:
        current = found.get((bucket, record.key))
        if current is None or not current.is_live(now):
            try:
                current = store.get(bucket, record.key)[0]
            except KeyNotFound:
                continue
        records.append(current)
    return records
