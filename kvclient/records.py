"""This module provides :class:`Record`, one key as the server holds it, and
the decoding of API.md's JSON records (:func:`decode_value`, :func:`parse_time`)
and the writing of its times (:func:`format_time`).
"""

import base64
import dataclasses
import datetime
from typing import Optional, Union

__all__ = ["Record", "decode_value", "parse_time", "format_time"]


def parse_time(text: Optional[str]) -> Optional[datetime.datetime]:
    """An API.md timestamp (RFC 3339 UTC, microseconds) as an aware datetime; None stays None."""
    if text is None:
        return None
    return datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(
        tzinfo=datetime.timezone.utc)


def format_time(moment: Union[None, str, datetime.datetime]) -> Optional[str]:
    """A time as API.md writes times (RFC 3339 UTC with microseconds and
    ``Z``: ``2026-11-22T10:00:00.123456Z``), the inverse of :func:`parse_time`:
    a datetime is converted (a naive one is taken as UTC), a str is kept as it
    is, None stays None."""
    if isinstance(moment, datetime.datetime):
        if moment.tzinfo is not None:
            moment = moment.astimezone(datetime.timezone.utc)
        return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return moment


def decode_value(item: dict) -> bytes:
    """The bytes of a JSON record or list item (its value and encoding)."""
    if item.get("encoding") == "base64":
        return base64.b64decode(item["value"])
    return item["value"].encode("utf-8")


@dataclasses.dataclass(frozen=True)
class Record:
    """One key as the server holds it.

    ``value`` is bytes; ``version`` counts writes from 1; ``etag`` is the
    quoted strong ETag for If-Match; ``created``, ``modified`` and ``expires``
    (None: never) are aware UTC datetimes with microseconds.  A record from a
    listing (:meth:`Store.iter_records`) has no ``etag`` and no ``created``
    (None): listing items do not carry them.
    """
    key: str
    value: bytes
    version: int
    etag: Optional[str]
    created: Optional[datetime.datetime]
    modified: datetime.datetime
    expires: Optional[datetime.datetime]

    @classmethod
    def from_json(cls, doc: dict, etag: Optional[str] = None) -> "Record":
        """Build from an API.md JSON record (or a values=true list item) and
        the response's ETag."""
        return cls(doc["key"], decode_value(doc), doc["version"], etag,
                   parse_time(doc.get("created")), parse_time(doc["modified"]),
                   parse_time(doc.get("expires")))
