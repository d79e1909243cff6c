"""This module provides what every paged GET shares (``/keys``, ``/buckets``,
cross-bucket reads, the admin listings): the ``limit`` and ``cursor``
parameters (:func:`page_args`), ``values`` of the pages that can carry
values (:func:`values_arg`: listings, the change feed) and the sealed ``next`` cursor with its
``Link`` header (:func:`paged`).  Cursors are sealed by the request's
:class:`kv.http.access.Access` when authentication is on.
"""

import re
import urllib.parse
from typing import List, Optional, Sequence, Tuple

import web

from kv.errors import InvalidRequest
from kv.http.request import query


def page_args() -> Tuple[int, Optional[str]]:
    """(limit, unsealed cursor or None) of a paged GET: ``limit`` is 1 to
    1000 (default 100).

    :raises InvalidRequest: for a bad limit or a cursor this service did not give.
    """
    q = query()
    limit = q.get("limit", "100")
    if not re.fullmatch(r"[0-9]{1,4}", limit) or not 1 <= int(limit) <= 1000:
        raise InvalidRequest("limit must be a whole number from 1 to 1000")
    return int(limit), web.ctx.access.unseal(q.get("cursor") or None)


def values_arg() -> bool:
    """The ``values`` parameter: ``true`` or ``false`` (the default).

    :raises InvalidRequest: for any other value.
    """
    values = query().get("values", "false")
    if values not in ("true", "false"):
        raise InvalidRequest("values must be true or false")
    return values == "true"


def paged(next_cursor: Optional[str],
          unavailable: Sequence[str] = ()) -> Tuple[Optional[str], List[Tuple[str, str]]]:
    """The sealed ``next`` cursor of a page and its headers: ``Link`` with
    ``rel="next"`` (RFC 8288) and ``X-Partitions-Unavailable``.

    :returns: (sealed cursor or None, list of (header, value)).
    """
    sealed = web.ctx.access.seal(next_cursor)
    headers = []
    if sealed:
        args = dict(query(), cursor=sealed)
        headers.append(("Link", '<%s?%s>; rel="next"' % (
            urllib.parse.quote(web.ctx.path), urllib.parse.urlencode(args))))
    if unavailable:
        headers.append(("X-Partitions-Unavailable", ", ".join(unavailable)))
    return sealed, headers
