"""This module provides the client's errors, one class per API error code.

:class:`KVError` is the root (an ``OSError``, so that callers catching I/O
failures catch it too); the leaves also inherit the builtin they mean, as
requests does: :class:`NotFound` is a ``KeyError``, :class:`InvalidKey`,
:class:`BadRequest` and :class:`TooLarge` are ``ValueError``;
:class:`Unauthorized` (401) and :class:`Forbidden` (403) are ``PermissionError``;
:class:`CursorExpired` (410) is what a change feed watch raises on an old cursor.
:func:`error_for` is the one place an HTTP answer becomes one of them.
"""

import re
from typing import Optional

__all__ = ["KVError", "NotFound", "InvalidKey", "BadRequest", "PreconditionFailed", "Conflict",
           "TooLarge", "Unavailable", "Indeterminate", "ServerError", "Unauthorized", "Forbidden",
           "CursorExpired", "error_for"]


class KVError(OSError):
    """Root of the client's errors.

    :ivar int status: the HTTP status (0 when no answer arrived).
    :ivar str code: the API error code (``key_not_found``, ...).
    :ivar str message: the server's message.
    """

    def __init__(self, status: int, code: str, message: str):
        super().__init__("%s %s: %s" % (status, code, message) if status else message)
        self.status, self.code, self.message = status, code, message

    def __str__(self):
        return self.args[0]


class NotFound(KVError, KeyError):
    """404: the key is absent or expired."""


class InvalidKey(KVError, ValueError):
    """400 invalid_key: empty, over 512 bytes, a control character, not UTF-8."""


class BadRequest(KVError, ValueError):
    """400: a malformed body or parameter (bad ttl, cursor, ...)."""


class PreconditionFailed(KVError):
    """412: If-Match / If-None-Match did not hold."""


class Conflict(KVError):
    """409: create() of a key that exists."""


class TooLarge(KVError, ValueError):
    """413: the value or body is over the server's limit."""


class Unavailable(KVError):
    """503 (after the retries), or no connection: the key's partitions are unreachable.

    :ivar int retry_after: seconds the server suggested, or None.
    """
    retry_after: Optional[int] = None


class Indeterminate(Unavailable):
    """A write was sent but its answer was lost, and no later answer or re-read
    can tell whether it took effect: read the key to see (status 0, code
    ``indeterminate``)."""


class Unauthorized(KVError, PermissionError):
    """401: authentication is on and the request carried no valid credentials
    (``authentication_required`` when it had none, ``invalid_credentials`` when
    they were malformed, unknown, expired or revoked).  Never retried.

    :ivar str challenge: the answer's ``WWW-Authenticate`` header ("" if none).
    """
    challenge: str = ""


class Forbidden(KVError, PermissionError):
    """403 ``forbidden``: the caller is authenticated but no rule allows this
    verb on this bucket and key.  Never retried."""


class CursorExpired(KVError):
    """410 ``cursor_expired``: a change feed cursor is older than the
    server's tombstone window (``[sync] tombstone_days``), so the feed cannot
    promise every change since it (API.md "Change feed (watch)").  Start
    again from ``since="now"`` (changes in between are not delivered) or
    ``since="0"`` (everything still retained), after rereading what you keep."""


class ServerError(KVError):
    """Any other 5xx."""


def error_for(response) -> KVError:
    """The error that the HTTP answer ``response`` (a ``requests.Response``) reports:
    its class chosen by status and code, ``retry_after`` from Retry-After."""
    try:
        error = response.json()["error"]
        code, message = error["code"], error["message"]
    except (ValueError, KeyError, TypeError):
        # The text/plain and raw error form: "404 key_not_found: no key 'x'".
        match = re.match(r"\d{3} ([a-z_]+): (.*)", response.text.strip(), re.S)
        code, message = match.groups() if match else ("http_%d" % response.status_code,
                                                      response.text[:200])
    status = response.status_code
    if status == 404:
        cls = NotFound
    elif status == 400:
        cls = InvalidKey if code == "invalid_key" else BadRequest
    else:
        cls = {401: Unauthorized, 403: Forbidden, 409: Conflict, 410: CursorExpired,
               412: PreconditionFailed, 413: TooLarge, 503: Unavailable}.get(
                   status, ServerError if status >= 500 else KVError)
    exc = cls(status, code, message)
    if isinstance(exc, Unavailable) and response.headers.get("Retry-After", "").isdigit():
        exc.retry_after = int(response.headers["Retry-After"])
    if isinstance(exc, Unauthorized):
        exc.challenge = response.headers.get("WWW-Authenticate", "")
    return exc
