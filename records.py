"""The vocabulary of the data layer: records, the conflict rule, write
preconditions and errors.

:class:`Record` is one stored row; :func:`winner_key` is the last-writer-wins
rule every replica and sync pass applies; :class:`Condition` evaluates
If-Match / If-None-Match (RFC 9110 section 13); the exceptions carry the
API error codes (API.md) that the controller maps to HTTP statuses.  None of
it talks to a database or knows HTTP.
"""

import time
from typing import NamedTuple, Optional, Sequence


def now_us() -> int:
    """The current time in microseconds since the Unix epoch (UTC)."""
    return time.time_ns() // 1000


# -- errors ----------------------------------------------------------------

class DatastoreError(Exception):
    """Root of the data layer's errors.

    ``code`` is the API error code (API.md); the message is safe to show to
    clients; ``original`` (a driver exception, or None) is for logs only.
    """
    code = "internal_error"

    def __init__(self, message: str = "", original: Optional[BaseException] = None):
        super().__init__(message)
        self.message = message
        self.original = original

    def __str__(self):
        return self.message


class InvalidKey(DatastoreError, ValueError):
    """The key breaks API.md's key rules (empty, > 512 bytes, not UTF-8, control character)."""
    code = "invalid_key"


class InvalidRequest(DatastoreError, ValueError):
    """A parameter or body is malformed (bad ttl, limit, cursor, base64, ...)."""
    code = "bad_request"


class ValueTooLarge(DatastoreError):
    """The value or body is larger than the configured limit (bytes)."""
    code = "too_large"

    def __init__(self, size: int, limit: int, what: str = "value"):
        super().__init__("the %s is %d bytes; at most %d are allowed" % (what, size, limit))
        self.size, self.limit = size, limit


class KeyNotFound(DatastoreError, KeyError):
    """The key is absent, deleted or expired."""
    code = "key_not_found"

    def __init__(self, key: bytes):
        super().__init__("no key %r" % key.decode("utf-8", "replace"))
        self.key = key


class KeyExists(DatastoreError):
    """A create-only write (POST /keys) found the key live."""
    code = "key_exists"

    def __init__(self, key: bytes):
        super().__init__("the key %r exists" % key.decode("utf-8", "replace"))
        self.key = key


class PreconditionFailed(DatastoreError):
    """An If-Match or If-None-Match condition did not hold (RFC 9110 section 13.1)."""
    code = "precondition_failed"


class PartitionUnavailable(DatastoreError):
    """No partition that could serve the request answered in time.

    :ivar list partitions: names of the partitions that failed.
    :ivar str reason: short client-safe reason (no host names, no SQL).
    :ivar int retry_after_seconds: when a retry may succeed.
    :ivar bool down: True when the partition is unreachable (a write may then
        go to the next partition of the placement); False when it answered but
        could not do this now (a lock wait or statement timeout, a full
        connection pool, a refused statement): the write must not go
        elsewhere, or a compare-and-swap could win on a stale replica.
    """
    code = "unavailable"

    def __init__(self, partitions: Sequence[str], reason: str = "", original=None,
                 retry_after_seconds: int = 2, down: bool = True):
        names = ", ".join(partitions) or "no partition"
        super().__init__("partition unavailable: %s%s" % (names, " (%s)" % reason if reason else ""),
                         original)
        self.partitions, self.reason = list(partitions), reason
        self.retry_after_seconds = retry_after_seconds
        self.down = down


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
    :class:`KeyExists` (POST /keys).
    """
    if_match: object = None
    if_none_match: object = None
    create_only: bool = False

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
        if self.if_none_match is not None and live is not None:
            if self.if_none_match == "*":
                raise PreconditionFailed("If-None-Match: the key exists")
            if weak_match(live.etag, self.if_none_match):
                raise PreconditionFailed("If-None-Match: the current ETag matches")
        if self.create_only and live is not None:
            raise KeyExists(live.key)
        return live
