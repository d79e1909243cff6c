"""The data layer's errors, each with its API error code (API.md).

The HTTP side maps them to statuses in one table
(kv.http.errors.ERROR_STATUS); messages are safe to show to clients; a driver's exception
travels in ``original`` for the logs only.
"""

from typing import Optional, Sequence


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


class InvalidBucket(InvalidRequest):
    """The bucket name breaks API.md's bucket rules (1 to 255 bytes of
    ``A-Z a-z 0-9 . _ ~ - @ +`` with at most one ``:``)."""
    code = "invalid_bucket"


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


class CursorExpired(DatastoreError):
    """A change feed cursor is older than the tombstone window
    (``[sync] tombstone_days``): deletes after it may be purged, so the feed
    cannot promise every change since; the client starts again (API.md
    "Change feed")."""
    code = "cursor_expired"


class TooManyWaiters(DatastoreError):
    """A long poll found this process's waiters at their cap; the client
    retries after ``retry_after_seconds`` (seconds)."""
    code = "unavailable"

    def __init__(self, cap: int, retry_after_seconds: int = 1):
        super().__init__("too many long polls are waiting on this worker (at most %d); "
                         "retry shortly" % cap)
        self.retry_after_seconds = retry_after_seconds


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
