"""The vocabulary of the data layer: keys, records, the conflict rule, the
version rule and write preconditions.

:func:`check_key` is API.md's key grammar; :class:`Record` is one stored row;
:func:`winner_key` is the last-writer-wins rule every replica and sync pass
applies; :func:`put_record` and :func:`tombstone` are the one definition of
what a write stores after the current copy (version and modified time);
:class:`Condition` evaluates If-Match / If-None-Match (RFC 9110 section 13).
None of it talks to a database or knows HTTP.
"""

import re
import time
from typing import NamedTuple, Optional, Sequence, Tuple

from kv.errors import InvalidBucket, InvalidKey, KeyExists, KeyNotFound, PreconditionFailed

MAX_KEY_BYTES = 512
MAX_TTL_SECONDS = 315360000  # ten years, API.md
MAX_BUCKET_BYTES = 255
#: The bucket of the /keys routes (API.md "Buckets": /keys is /buckets/default/keys).
DEFAULT_BUCKET = b"default"
_BUCKET = re.compile(rb"[A-Za-z0-9._~@+-]+(?::[A-Za-z0-9._~@+-]*)?")
_CONTROL = frozenset(range(0x20)) | {0x7F}


def now_us() -> int:
    """The current time in microseconds since the Unix epoch (UTC)."""
    return time.time_ns() // 1000


# -- keys ------------------------------------------------------------------

def check_key(key: bytes) -> bytes:
    """Validate a key as API.md defines it and return it unchanged.

    :param bytes key: the key as UTF-8 bytes.
    :returns: ``key``.
    :raises InvalidKey: when the key is empty, longer than 512 bytes, not UTF-8
        or contains a control character (U+0000 to U+001F, U+007F).
    """
    if not key:
        raise InvalidKey("the key is empty")
    if len(key) > MAX_KEY_BYTES:
        raise InvalidKey("the key is %d bytes long; at most %d are allowed"
                         % (len(key), MAX_KEY_BYTES))
    if _CONTROL.intersection(key):
        raise InvalidKey("the key contains a control character")
    try:
        key.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidKey("the key is not valid UTF-8") from None
    return key


def check_bucket(bucket: bytes) -> bytes:
    """Validate a bucket name as API.md "Buckets (tenants)" defines it and
    return it unchanged: 1 to 255 bytes of ``A-Z a-z 0-9 . _ ~ - @ +`` with
    at most one ``:`` (``{app}:{name}`` belongs to the application ``{app}``;
    the app part is never empty).  Reserved names (``_...``) pass: whether a
    caller may name them is the HTTP layer's rule.

    :param bytes bucket: the name as bytes.
    :returns: ``bucket``.
    :raises InvalidBucket: for anything else.
    """
    if not bucket or len(bucket) > MAX_BUCKET_BYTES or not _BUCKET.fullmatch(bucket):
        raise InvalidBucket("a bucket name is 1 to %d bytes of A-Z a-z 0-9 . _ ~ - @ + with at "
                            "most one ':' after a non-empty application id" % MAX_BUCKET_BYTES)
    return bucket


# -- records and conditions --------------------------------------------------

class Record(NamedTuple):
    """One stored row (immutable; a named tuple, which is built about six
    times faster than a frozen dataclass, and every row read is one).

    ``bucket``/``key``/``value`` are bytes; ``version`` counts writes of the key
    from 1; ``created_us``, ``modified_us`` and ``expires_us`` (None: never) are
    microseconds since the epoch; ``deleted`` marks a tombstone.
    """
    bucket: bytes
    key: bytes
    value: bytes
    version: int
    created_us: int
    modified_us: int
    expires_us: Optional[int]
    deleted: bool

    @property
    def etag(self) -> str:
        """Strong entity tag, quoted (RFC 9110 section 8.8.3).

        Made of version and modified_us, so it changes on every write, a
        delete and re-create included, and is the same on every replica.
        """
        return '"%x-%x"' % (self.version, self.modified_us)

    def is_live(self, now: int) -> bool:
        """True unless this is a tombstone or expired at ``now`` (microseconds)."""
        return not self.deleted and (self.expires_us is None or self.expires_us > now)


def winner_key(record: Record) -> tuple:
    """Sort key of the conflict rule: the greatest wins on every replica.

    Newest ``modified_us``, then the higher version, then a tombstone over a
    value, then the greater value bytes: a total order, so every replica and
    every sync pass picks the same winner (last-writer-wins register).
    """
    return record.modified_us, record.version, record.deleted, record.value


def weak_match(etag: str, tags: Sequence[str]) -> bool:
    """True when ``etag`` matches one of ``tags`` by weak comparison: the
    opaque tags are equal, W/ prefixes ignored (RFC 9110 section 8.8.3.2)."""
    def opaque(tag):
        return tag[2:] if tag.startswith("W/") else tag
    return opaque(etag) in {opaque(t) for t in tags}


class Condition(NamedTuple):
    """Preconditions of a write, evaluated on the live record (RFC 9110 section 13.2.2).

    ``if_match`` / ``if_none_match``: None, ``"*"`` or a tuple of entity tags as
    sent (``'"abc"'``, ``'W/"abc"'``).  If-Match compares strongly, If-None-Match
    weakly (RFC 9110 section 8.8.3.2).  ``create_only`` makes a live key a
    :class:`KeyExists` (POST /keys).  ``unmodified_since`` (Unix seconds, from
    If-Unmodified-Since; ignored when ``if_match`` is given, RFC 9110 section
    13.1.4) fails when the key was modified after that second, and when it
    does not exist (nothing can show it unmodified: a delete is a change).
    """
    if_match: object = None
    if_none_match: object = None
    create_only: bool = False
    unmodified_since: Optional[int] = None

    def check(self, current: Optional[Record], now: int) -> Optional[Record]:
        """Evaluate against ``current`` (newest copy, possibly dead).

        :returns: the live record, or None when the key is absent.
        :raises PreconditionFailed: when a condition fails.
        :raises KeyExists: for create_only on a live key.
        """
        live = current if current is not None and current.is_live(now) else None
        if self.if_match is not None:
            if live is None:
                raise PreconditionFailed("If-Match: the key does not exist")
            if self.if_match != "*" and live.etag not in self.if_match:
                raise PreconditionFailed("If-Match: the current ETag is %s" % live.etag)
        elif self.unmodified_since is not None:
            if live is None:
                raise PreconditionFailed("If-Unmodified-Since: the key does not exist")
            if live.modified_us // 1_000_000 > self.unmodified_since:
                raise PreconditionFailed("If-Unmodified-Since: the key was modified later")
        if self.if_none_match is not None and live is not None:
            if self.if_none_match == "*":
                raise PreconditionFailed("If-None-Match: the key exists")
            if weak_match(live.etag, self.if_none_match):
                raise PreconditionFailed("If-None-Match: the current ETag matches")
        if self.create_only and live is not None:
            raise KeyExists(live.key)
        return live


# -- the version rule ----------------------------------------------------------

def put_record(bucket: bytes, key: bytes, value: bytes, ttl_seconds: Optional[int],
               condition: Condition, current: Optional[Record], now: int) -> Record:
    """The record a put writes after ``current`` (raises if ``condition`` fails).

    The one definition of a put: the one-round-trip UPDATE of
    kv.storage.partition.Partition._overwrite_live does the same in SQL, and the
    contract test test_an_overwrite_does_what_its_make_would holds the two
    equal on both engines.
    """
    live = condition.check(current, now)
    version, modified = next_version(current, now)
    expires = modified + ttl_seconds * 1_000_000 if ttl_seconds else None
    return Record(bucket, key, value, version, live.created_us if live else modified,
                  modified, expires, False)


def tombstone(key: bytes, condition: Condition, current: Optional[Record], now: int) -> Record:
    """The tombstone a delete writes after ``current`` (KeyNotFound if not live)."""
    live = condition.check(current, now)
    if live is None:
        raise KeyNotFound(key)
    version, modified = next_version(current, now)
    return Record(live.bucket, key, b"", version, live.created_us, modified, None, True)


def next_version(current: Optional[Record], now: int) -> Tuple[int, int]:
    """(version, modified_us) of the next write after ``current``.

    The version continues through tombstones and expiry; modified_us never goes
    backwards for a key, so the newest write also wins when web nodes' clocks
    disagree by less than the time between two writes of the key.
    """
    if current is None:
        return 1, now
    return current.version + 1, max(now, current.modified_us + 1)
