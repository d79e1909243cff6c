"""This module provides the one place where an exception becomes an HTTP
status: :data:`ERROR_STATUS` for the data layer's errors (kv.errors),
:class:`HTTPProblem` for the HTTP layer's own (405, 406, 415, unknown path),
and :func:`problem_of`, which every error answer goes through.
"""

import logging
from typing import Iterable, List, Tuple

from kv.errors import (CursorExpired, DatastoreError, InvalidKey, InvalidRequest, KeyExists,
                       KeyNotFound, PartitionUnavailable, PreconditionFailed, TooManyWaiters,
                       ValueTooLarge)

log = logging.getLogger("kv.controller")      # the HTTP layer logs as it always did


class HTTPProblem(Exception):
    """An error of the HTTP layer itself (405, 406, 415, unknown path, ...).

    Not a data-layer error: nothing below kv.http raises or catches it.

    :param int status: the HTTP status code.
    :param str code: the API error code (API.md "Errors"), e.g. ``not_acceptable``.
    :param str message: client-safe text.
    :param headers: iterable of (name, value) pairs added to the answer (``Allow``).
    """

    def __init__(self, status: int, code: str, message: str,
                 headers: Iterable[Tuple[str, str]] = ()):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.headers = list(headers)


#: Data-layer exception class -> HTTP status, most specific first.  The only such table.
ERROR_STATUS = (
    (InvalidKey, 400),
    (InvalidRequest, 400),
    (ValueTooLarge, 413),
    (KeyNotFound, 404),
    (KeyExists, 409),
    (PreconditionFailed, 412),
    (CursorExpired, 410),
    (PartitionUnavailable, 503),
    (TooManyWaiters, 503),
)

#: The errors whose answer is meant for the client (anything else is a logged 500).
CLIENT_ERRORS = (HTTPProblem, DatastoreError)

STATUS_TEXT = {200: "OK", 201: "Created", 204: "No Content", 304: "Not Modified",
               400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
               405: "Method Not Allowed", 410: "Gone",
               406: "Not Acceptable", 409: "Conflict", 412: "Precondition Failed",
               413: "Content Too Large", 415: "Unsupported Media Type",
               500: "Internal Server Error", 503: "Service Unavailable"}


def status_line(code: int) -> str:
    """The status line of a code, e.g. ``status_line(404) == "404 Not Found"``.

    :raises KeyError: for a code this service never answers.
    """
    return "%d %s" % (code, STATUS_TEXT[code])


def problem_of(exc: Exception) -> Tuple[int, str, str, List[Tuple[str, str]]]:
    """Map an exception to the parts of its error answer; log unexpected ones.

    :returns: (status int, API error code str, client-safe message str,
        list of (header name, value)): ``Retry-After`` for
        PartitionUnavailable and TooManyWaiters, the HTTPProblem's own headers, else none.  Any
        exception not in :data:`ERROR_STATUS` is a 500 with a fixed message
        (its details go to the log only).
    """
    if isinstance(exc, HTTPProblem):
        return exc.status, exc.code, exc.message, exc.headers
    for cls, status in ERROR_STATUS:
        if isinstance(exc, cls):
            headers = []
            if isinstance(exc, (PartitionUnavailable, TooManyWaiters)):
                headers.append(("Retry-After", str(exc.retry_after_seconds)))
            return status, exc.code, exc.message, headers
    log.exception("unexpected error")
    return 500, "internal_error", "internal error; the details are in the server log", []
