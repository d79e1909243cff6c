"""This module provides conditional requests (RFC 9110 section 13) on the
HTTP side: the write :class:`~kv.records.Condition` of If-Match /
If-None-Match (:func:`write_condition`; the datastore evaluates it
atomically), the 304 decision of a GET (:func:`not_modified`) and the
validators every record answer carries (:func:`record_headers`).
"""

import functools
from email.utils import formatdate, parsedate_to_datetime
from typing import List, Optional, Tuple

import web

from kv.http.bodies import etag_list
from kv.records import Condition, Record, weak_match


def write_condition(create_only: bool = False) -> Condition:
    """The Condition of this request's If-Match / If-None-Match /
    If-Unmodified-Since headers (RFC 9110 section 13.1).

    :param bool create_only: POST /keys: the key must not exist.
    :returns: a Condition (its tag lists are None when the header is absent).
    :raises InvalidRequest: for a malformed entity-tag list.
    """
    env = web.ctx.env
    if_match = env.get("HTTP_IF_MATCH")
    if_none_match = env.get("HTTP_IF_NONE_MATCH")
    return Condition(etag_list(if_match) if if_match is not None else None,
                     etag_list(if_none_match) if if_none_match is not None else None,
                     create_only, _http_seconds(env.get("HTTP_IF_UNMODIFIED_SINCE")))


def check_read_condition(record: Record) -> None:
    """Steps 1 and 2 of RFC 9110 section 13.2.2 for a GET/HEAD of ``record``:
    If-Match (strong comparison), else If-Unmodified-Since.

    :raises PreconditionFailed: 412 when the condition is false.
    :raises InvalidRequest: for a malformed If-Match.
    """
    env = web.ctx.env
    if_match = env.get("HTTP_IF_MATCH")
    since = env.get("HTTP_IF_UNMODIFIED_SINCE")
    if if_match is not None or since is not None:
        condition = Condition(etag_list(if_match) if if_match is not None else None,
                              unmodified_since=_http_seconds(since))
        condition.check(record, record.modified_us)      # the record is live as read


def not_modified(record: Record) -> bool:
    """Whether a GET/HEAD of ``record`` is answered 304 (RFC 9110 sections
    13.1.2 and 13.1.3): If-None-Match by weak comparison, else
    If-Modified-Since to the second (an invalid date is ignored).

    :raises InvalidRequest: for a malformed If-None-Match.
    """
    env = web.ctx.env
    if_none_match = env.get("HTTP_IF_NONE_MATCH")
    if if_none_match is not None:
        tags = etag_list(if_none_match)
        return tags == "*" or weak_match(record.etag, tags)
    since = _http_seconds(env.get("HTTP_IF_MODIFIED_SINCE"))
    return since is not None and record.modified_us // 1_000_000 <= since


def _http_seconds(value: Optional[str]) -> Optional[int]:
    """The Unix seconds of an HTTP-date (RFC 9110 section 5.6.7), or None
    when absent or invalid (an invalid date is ignored, sections 13.1.3-4)."""
    if not value:
        return None
    try:
        return int(parsedate_to_datetime(value).timestamp())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


@functools.lru_cache(maxsize=4096)
def http_date(seconds: int) -> str:
    """IMF-fixdate of a Unix time in seconds (RFC 9110 section 5.6.7)."""
    return formatdate(seconds, usegmt=True)


def record_headers(record: Record, partition: str) -> List[Tuple[str, str]]:
    """The headers of an answer about one record: ETag, Last-Modified and
    X-Partition (the section name of the partition that served it).

    :returns: list of (name, value).
    """
    return [("ETag", record.etag), ("Last-Modified", http_date(record.modified_us // 1_000_000)),
            ("X-Partition", partition)]
