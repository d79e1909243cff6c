"""Buckets and cross-bucket reads (API.md "Buckets (tenants)" and
"Cross-bucket reads and aggregation"): the names of the buckets that hold a
live key, one key in every bucket of an app, and aggregates of that key's
values, each merged from every partition's sorted rows (kv.storage.merge)
in pages bounded before the work, as listings are (kv.cluster.listing).

Permissions are the caller's: every function takes ``visible(bucket) ->
bool`` and shows, counts and aggregates only the buckets it accepts.
Cursors are :func:`kv.cluster.listing.encode_cursor` positions (base64 of a
bucket name): the HTTP layer seals them before a client sees them, since a
page cut by a budget may end at a bucket ``visible`` refused.
"""

import dataclasses
import decimal
import functools
import json
from decimal import Decimal
from typing import Callable, List, Optional, Tuple, Union

from kv.cluster.listing import decode_cursor, encode_cursor
from kv.errors import InvalidRequest, PartitionUnavailable
from kv.records import Record, check_key, winner_key
from kv.storage.merge import SortedStream, merge

BUCKET_READ_AHEAD = 1000        # names per scan_buckets query at most
BUCKET_NAME_BUDGET = 10000      # names a buckets page examines at most (then it ends with next)
CROSS_READ_AHEAD = 1000         # rows per scan_key_across query at most, and at most
CROSS_READ_BYTES = 32 << 20     # this many bytes / max_value_bytes (values come with the rows)
CROSS_ROW_BUDGET = 10000        # rows (copies) a cross-bucket page examines at most
CROSS_VALUE_BYTES = 8 << 20     # bytes of values in one cross-bucket page at most (or one value)
AGGREGATE_PAGE = 1000           # buckets per page that aggregate reads
AGGREGATE_MAX_BUCKETS = 1000000  # buckets holding the key that one aggregate examines at most
AGGREGATE_DIGITS = 100          # significant digits of a sum or average with decimals
FUNCTIONS = ("count", "sum", "min", "max", "avg")
RESERVED = b"_"                 # names starting with it are the service's own (API.md)

Number = Union[int, Decimal]


def show_all(bucket: bytes) -> bool:
    """The ``visible`` filter that shows every bucket (no permissions)."""
    return True


@dataclasses.dataclass
class BucketListing:
    """One page of bucket names.

    ``items``: bucket names (bytes) in byte order; ``next``: the opaque
    cursor of the next page, or None on the last; ``unavailable``: names of
    the partitions that could not be read (a bucket whose every live row is
    on them is missing).
    """
    items: List[bytes]
    next: Optional[str]
    unavailable: List[str]


@dataclasses.dataclass
class CrossListing:
    """One page of a key read in every bucket of an app.

    ``items``: (bucket name, live :class:`Record` with its value) in bucket
    byte order; ``next``, ``unavailable``: as in :class:`BucketListing`.
    """
    items: List[Tuple[bytes, Record]]
    next: Optional[str]
    unavailable: List[str]


@dataclasses.dataclass
class Aggregate:
    """An aggregate of one key's values over the buckets of an app.

    ``function``: one of :data:`FUNCTIONS`.  ``value``: for ``count`` the
    number of buckets shown (an int, 0 when none); for ``sum`` an int when
    every number was an integer, else a Decimal; ``min``/``max`` the number
    as parsed (int or Decimal); ``avg`` a Decimal; None for sum, min, max
    and avg when no value was a number.  ``count``: the values counted, that
    is every bucket shown for ``count`` and the numeric values for the
    others.  ``non_numeric``: the values shown that are not JSON numbers
    (for ``count`` too, where they are also in ``count``).  ``complete``:
    False when a partition could not be read (``unavailable`` names them).
    """
    function: str
    value: Optional[Number]
    count: int
    non_numeric: int
    complete: bool
    unavailable: List[str]


def _after(prefix: bytes) -> Optional[bytes]:
    """The smallest byte string above every one that starts with ``prefix``
    (None when there is none: the prefix is all 0xFF)."""
    prefix = prefix.rstrip(b"\xff")
    return prefix[:-1] + bytes([prefix[-1] + 1]) if prefix else None


def _check_limit(limit: int) -> None:
    if not (isinstance(limit, int) and 1 <= limit <= 1000):
        raise InvalidRequest("limit must be from 1 to 1000")


def _resume(first: bytes, cursor: Optional[str]) -> Tuple[bytes, bool]:
    """Where a page starts: at ``first``, or at the cursor when it is past it.

    :raises InvalidRequest: for a cursor this module did not make.
    """
    if cursor:
        position = decode_cursor(cursor)
        if position[0] >= first:
            return position
    return first, True


def _on_unavailable(store, unavailable: List[str]):
    """The ``merge`` callback: note a partition that does not answer; raise
    once ``replicas`` of them are out, since a bucket could have no copy left."""
    def skip(stream, error):
        unavailable.append(stream.name)
        if len(unavailable) >= store.replicas:
            raise PartitionUnavailable(unavailable) from None
    return skip


def _scan_buckets(partition, end, position, limit):
    return partition.scan_buckets(position[0], position[1], end, limit)


def list_buckets(store, prefix: bytes = b"", cursor: Optional[str] = None, limit: int = 100,
                 visible: Callable[[bytes], bool] = show_all) -> BucketListing:
    """A page of the names of the buckets that hold a live key, in byte order.

    Every partition's :meth:`scan_buckets` is merged, so each name appears
    once.  A bucket shows when some partition holds a live row of it: a
    bucket whose only live row is a stale replica of a key deleted since
    (its tombstone on another partition) shows until sync copies the
    tombstone.  Reserved buckets (names starting with ``_``) never show.

    Each page is bounded before the work: it examines at most
    BUCKET_NAME_BUDGET names (those ``visible`` refuses included), reading
    at most BUCKET_READ_AHEAD names a partition query; a page cut by the
    budget, or holding names ``visible`` refused, has fewer than ``limit``
    names, maybe none, and a ``next`` cursor.  The partitions' cost is in
    :meth:`kv.storage.partition.Partition.scan_buckets`.

    :param Datastore store: the cluster (its partitions, replicas and clock).
    :param bytes prefix: only names starting with these bytes.
    :param str cursor: ``BucketListing.next`` of the previous page, or None.
    :param int limit: names per page, 1 to 1000.
    :param visible: ``visible(name) -> bool``, the caller's permission to list
        in the bucket.
    :returns: :class:`BucketListing`.
    :raises InvalidRequest: for a bad cursor or limit.
    :raises PartitionUnavailable: when ``replicas`` or more partitions are
        down, so some buckets could have no readable row.
    """
    _check_limit(limit)
    if prefix.startswith(RESERVED):
        return BucketListing([], None, [])
    end = _after(prefix)
    streams = [SortedStream(name, functools.partial(_scan_buckets, store.partitions[name], end),
                            bytes, _resume(prefix, cursor), min(limit + 1, BUCKET_READ_AHEAD),
                            BUCKET_READ_AHEAD) for name in store.names]
    unavailable: List[str] = []
    items: List[bytes] = []
    examined, cut, last = 0, None, None
    for name, _ in merge(streams, _on_unavailable(store, unavailable)):
        if name.startswith(RESERVED):
            for stream in streams:
                stream.seek(_after(RESERVED))
            continue
        if len(items) == limit:                 # a name follows: there is a next page
            cut = (items[-1], False)
            break
        if examined >= BUCKET_NAME_BUDGET:
            cut = last
            break
        examined += 1
        last = (name, False)
        if visible(name):
            items.append(name)
    return BucketListing(items, encode_cursor(cut) if cut else None, unavailable)


def _check_app(app: bytes) -> None:
    if not app or len(app) > 254 or b":" in app:
        raise InvalidRequest("an app id is 1 to 254 bytes without ':'")


def _scan_across(partition, end, key, position, limit):
    return partition.scan_key_across(position[0], position[1], end, key, limit)


def _bucket_of(record: Record) -> bytes:
    return record.bucket


def _cross_page(store, app: bytes, key: bytes, cursor: Optional[str], limit: int,
                visible: Callable[[bytes], bool]) -> Tuple[CrossListing, int]:
    """:func:`read_across`, and how many buckets holding a row of the key
    the page examined."""
    check_key(key)
    _check_app(app)
    _check_limit(limit)
    if app.startswith(RESERVED):
        return CrossListing([], None, []), 0
    end = app + b";"                            # b";" follows b":"
    rows = max(1, min(CROSS_READ_AHEAD, CROSS_READ_BYTES // max(1, store.settings.max_value_bytes)))
    streams = [SortedStream(name, functools.partial(_scan_across, store.partitions[name], end, key),
                            _bucket_of, _resume(app + b":", cursor), min(limit + 1, rows), rows)
               for name in store.names]
    unavailable: List[str] = []
    now = store.clock()
    items: List[Tuple[bytes, Record]] = []
    examined, buckets, value_bytes, cut, last = 0, 0, 0, None, None
    for bucket, copies in merge(streams, _on_unavailable(store, unavailable)):
        if len(items) == limit:                 # a bucket follows: there is a next page
            cut = (items[-1][0], False)
            break
        if examined >= CROSS_ROW_BUDGET:
            cut = last
            break
        examined += len(copies)
        buckets += 1
        last = (bucket, False)
        winner = max((row for _, row in copies), key=winner_key)
        if not winner.is_live(now) or not visible(bucket):
            continue
        if items and value_bytes + len(winner.value) > CROSS_VALUE_BYTES:
            cut = (items[-1][0], False)
            break
        value_bytes += len(winner.value)
        items.append((bucket, winner))
    return CrossListing(items, encode_cursor(cut) if cut else None, unavailable), buckets


def read_across(store, app: bytes, key: bytes, cursor: Optional[str] = None, limit: int = 100,
                visible: Callable[[bytes], bool] = show_all) -> CrossListing:
    """A page of one key read in every bucket of an app (``app:`` up to,
    not including, ``app;``), in bucket byte order, with values.

    Every partition's :meth:`scan_key_across` is merged: per bucket the
    newest copy by :func:`winner_key` wins, and a bucket whose newest copy
    is a tombstone or expired is not shown, nor one ``visible`` refuses.

    Each page is bounded before the work: it examines at most
    CROSS_ROW_BUDGET rows, holds at most CROSS_VALUE_BYTES of values (or one
    value, when a single one is larger), and reads at most CROSS_READ_AHEAD
    rows a partition query, fewer when values may be large (at most
    CROSS_READ_BYTES / max_value_bytes, since rows come with their values;
    memory is bounded by partitions x CROSS_READ_BYTES plus the page).  A
    page cut by a budget, or holding buckets ``visible`` refused, has fewer
    than ``limit`` items, maybe none, and a ``next`` cursor.  The
    partitions' cost is in
    :meth:`kv.storage.partition.Partition.scan_key_across`.

    :param Datastore store: the cluster (its partitions, replicas and clock).
    :param bytes app: the application id: 1 to 254 bytes without ``:``; an
        app starting with ``_`` (reserved) has no buckets to show.
    :param bytes key: the key (validated with :func:`check_key`).
    :param str cursor: ``CrossListing.next`` of the previous page, or None.
    :param int limit: buckets per page, 1 to 1000.
    :param visible: ``visible(bucket) -> bool``, the caller's permission to
        read the key in the bucket.
    :returns: :class:`CrossListing`.
    :raises InvalidKey: for an invalid key.
    :raises InvalidRequest: for a bad app, cursor or limit.
    :raises PartitionUnavailable: when ``replicas`` or more partitions are down.
    """
    return _cross_page(store, app, key, cursor, limit, visible)[0]


def number(value: bytes) -> Optional[Number]:
    """The JSON number ``value`` holds, or None when it holds anything else.

    A value is a number when it is UTF-8 JSON text (RFC 8259, surrounding
    whitespace allowed) of one number: integers parse to int, the others
    (fraction or exponent: ``-3.5``, ``1e3``) to Decimal, exactly.  Strings
    (``"7"``), booleans, null, objects, arrays, NaN and Infinity, invalid
    UTF-8 or JSON, integers of more than 4,300 digits (Python's limit on
    int parsing) and exponents beyond Decimal's +-999999999999999999 are
    not numbers.
    """
    text = value.strip(b" \t\n\r")
    if not text or text[:1] not in b"-0123456789":    # no number: skip parsing large values
        return None
    try:
        parsed = json.loads(text.decode("utf-8"), parse_float=Decimal, parse_int=int,
                            parse_constant=_not_a_number)
    except (UnicodeDecodeError, ValueError, decimal.DecimalException):
        return None
    return parsed if type(parsed) in (int, Decimal) else None


def _not_a_number(name: str):
    raise ValueError("%s is not a JSON number" % name)


def _add(context: decimal.Context, a: Decimal, b: Decimal) -> Decimal:
    """a + b in ``context``; InvalidRequest when the sum leaves Decimal's range."""
    try:
        return context.add(a, b)
    except decimal.Overflow:
        raise InvalidRequest("the sum is beyond the decimal range (10 ** %d)"
                             % decimal.MAX_EMAX) from None


def aggregate(store, app: bytes, key: bytes, function: str,
              visible: Callable[[bytes], bool] = show_all) -> Aggregate:
    """Aggregate one key's values over every bucket of an app that
    :func:`read_across` shows (live, and accepted by ``visible``).

    ``count`` counts the buckets shown; ``sum``, ``min``, ``max`` and
    ``avg`` use the values that are JSON numbers (:func:`number`).  The
    arithmetic is decimal: a sum of integers is an exact int; a sum with
    decimals, and an average (the sum divided by the count), are Decimals
    rounded half-even to AGGREGATE_DIGITS significant digits.  See
    :class:`Aggregate` for the fields.

    It reads every page of :func:`read_across` (AGGREGATE_PAGE buckets each,
    each bounded as a page is), so its work grows with the app: when the
    app has more than AGGREGATE_MAX_BUCKETS buckets holding the key
    (visible or not, live or not), it stops with InvalidRequest once its
    pages have examined that many (at most one page more).

    :param Datastore store: the cluster.
    :param bytes app: the application id, as for :func:`read_across`.
    :param bytes key: the key.
    :param str function: one of :data:`FUNCTIONS`.
    :param visible: ``visible(bucket) -> bool``, the caller's permission to
        read the key in the bucket.
    :returns: :class:`Aggregate`.
    :raises InvalidKey: for an invalid key.
    :raises InvalidRequest: for an unknown function or a bad app, when the
        app has more than AGGREGATE_MAX_BUCKETS buckets holding the key, or
        when the sum of sum or avg leaves Decimal's range (beyond
        10 ** 999999999999999999).
    :raises PartitionUnavailable: when ``replicas`` or more partitions are down.
    """
    if function not in FUNCTIONS:
        raise InvalidRequest("the aggregate is one of %s" % ", ".join(FUNCTIONS))
    context = decimal.Context(prec=AGGREGATE_DIGITS, rounding=decimal.ROUND_HALF_EVEN,
                              Emax=decimal.MAX_EMAX, Emin=decimal.MIN_EMIN)
    shown, numbers, integers, decimals = 0, 0, 0, Decimal(0)
    lowest: Optional[Number] = None
    highest: Optional[Number] = None
    exact = True
    unavailable: List[str] = []
    cursor, examined = None, 0
    while True:
        page, buckets = _cross_page(store, app, key, cursor, AGGREGATE_PAGE, visible)
        examined += buckets
        if examined > AGGREGATE_MAX_BUCKETS:
            raise InvalidRequest("the aggregate would examine more than %d buckets holding the "
                                 "key; read them page by page instead" % AGGREGATE_MAX_BUCKETS)
        unavailable += [name for name in page.unavailable if name not in unavailable]
        for _, record in page.items:
            shown += 1
            parsed = number(record.value)
            if parsed is None:
                continue
            numbers += 1
            if function in ("sum", "avg"):
                if type(parsed) is int:
                    integers += parsed
                else:
                    decimals, exact = _add(context, decimals, parsed), False
            lowest = parsed if lowest is None or parsed < lowest else lowest
            highest = parsed if highest is None or parsed > highest else highest
        cursor = page.next
        if cursor is None:
            break
    total = integers if exact else _add(context, Decimal(integers), decimals)
    value: Optional[Number] = None
    if function == "count":
        value = shown
    elif numbers and function == "sum":
        value = total
    elif numbers and function == "avg":
        value = context.divide(Decimal(total), numbers)
    elif numbers:
        value = lowest if function == "min" else highest
    return Aggregate(function, value, shown if function == "count" else numbers,
                     shown - numbers, not unavailable, unavailable)
