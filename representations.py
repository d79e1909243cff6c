"""This module provides the wire formats of API.md: renderers of records,
listings, errors, batch results and health (JSON, XML, text, raw bytes).
The parsers of request bodies live in :mod:`kv.http.bodies`; their public
names are re-exported here for the controller.

Renderers are pure functions called by mimerender with the handler's payload
dict as keyword arguments; exactly one of ``record``, ``listing``, ``error``,
``batch``, ``health`` or ``empty`` is given.
"""

import base64
import functools
import re
import time
from xml.sax.saxutils import escape

import orjson

from kv.http.bodies import (MAX_BATCH_OPS, STRUCTURED_TYPES, etag_list,  # noqa: F401
                            key_bytes, parse_batch_body, parse_record_body, parse_ttl,
                            structured_limit)

# Characters XML 1.0 cannot carry (section 2.2), besides surrogates.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


@functools.lru_cache(maxsize=4096)
def _utc_second(seconds: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))


def timestamp(us):
    """RFC 3339 UTC with microseconds, e.g. 2026-11-22T10:00:00.123456Z; None stays None."""
    if us is None:
        return None
    seconds, micro = divmod(us, 1_000_000)
    return "%s.%06dZ" % (_utc_second(seconds), micro)


def text_of(value: bytes, for_xml: bool = False):
    """(text, encoding): the UTF-8 text of ``value``, or its base64 when the
    bytes are not UTF-8 (or, for XML, hold characters XML cannot carry)."""
    try:
        text = value.decode("utf-8")
        if not (for_xml and _NOT_XML.search(text)):
            return text, "utf-8"
    except UnicodeDecodeError:
        pass
    return base64.b64encode(value).decode("ascii"), "base64"


def representable(mime: str, value: bytes) -> bool:
    """False for a text/plain answer of a value that is not UTF-8."""
    if mime == "text/plain":
        try:
            value.decode("utf-8")
        except UnicodeDecodeError:
            return False
    return True


# -- JSON -------------------------------------------------------------------

def _json_record(record, with_value=True):
    out = {"key": record.key.decode("utf-8")}
    if with_value:
        out["value"], out["encoding"] = text_of(record.value)
    out.update(version=record.version, created=timestamp(record.created_us),
               modified=timestamp(record.modified_us), expires=timestamp(record.expires_us))
    return out


def _json_error(status, code, message):
    return {"status": status, "code": code, "message": message}


def _json_result(result):
    status, record, error = result
    out = {"status": status}
    if record is not None:
        out["record"] = _json_record(record)
    if error is not None:
        out["error"] = _json_error(*error)
    return out


def render_json(record=None, listing=None, error=None, batch=None, health=None, empty=None):
    """Render a payload as application/json (API.md)."""
    if empty:
        return b""
    if record is not None:
        doc = _json_record(record)
    elif listing is not None:
        items = []
        for r in listing.items:
            item = {"key": r.key.decode("utf-8"), "version": r.version,
                    "modified": timestamp(r.modified_us), "expires": timestamp(r.expires_us)}
            if listing.values:
                item["value"], item["encoding"] = text_of(r.value)
            items.append(item)
        doc = {"items": items, "prefixes": [p.decode("utf-8") for p in listing.prefixes],
               "next": listing.next}
    elif error is not None:
        doc = {"error": _json_error(*error)}
    elif batch is not None:
        doc = {"results": [_json_result(r) for r in batch]}
    else:
        doc = {"status": "ok" if all(not reason for _, _, reason in health) else "degraded",
               "partitions": [{"name": n, "engine": e, "up": not reason, "reason": reason}
                              for n, e, reason in health]}
    return orjson.dumps(doc)          # UTF-8, compact: the bytes json.dumps would give


# -- XML --------------------------------------------------------------------

def _x(text: str) -> str:
    return escape(text).replace("\r", "&#13;")


def _xml_text(tag, value, for_value=True):
    text, encoding = text_of(value, for_xml=True)
    if not for_value and encoding == "utf-8":
        return "<%s>%s</%s>" % (tag, _x(text), tag)
    return '<%s encoding="%s">%s</%s>' % (tag, encoding, _x(text), tag)


def _xml_time(tag, us):
    return "<%s/>" % tag if us is None else "<%s>%s</%s>" % (tag, timestamp(us), tag)


def _xml_record(record, with_value=True, tag="record"):
    parts = [_xml_text("key", record.key, for_value=False)]
    if with_value:
        parts.append(_xml_text("value", record.value))
    parts += ["<version>%d</version>" % record.version, _xml_time("created", record.created_us),
              _xml_time("modified", record.modified_us), _xml_time("expires", record.expires_us)]
    return "<%s>%s</%s>" % (tag, "".join(parts), tag)


def _xml_error(status, code, message):
    return "<error><status>%d</status><code>%s</code><message>%s</message></error>" % (
        status, _x(code), _x(message))


def render_xml(record=None, listing=None, error=None, batch=None, health=None, empty=None):
    """Render a payload as application/xml (API.md), UTF-8 with a declaration."""
    if empty:
        return b""
    if record is not None:
        body = _xml_record(record)
    elif listing is not None:
        body = "<keys>%s%s%s</keys>" % (
            "".join(_xml_record(r, with_value=listing.values, tag="item")
                    for r in listing.items),
            "".join(_xml_text("prefix", p, for_value=False) for p in listing.prefixes),
            "<next>%s</next>" % _x(listing.next) if listing.next else "<next/>")
    elif error is not None:
        body = _xml_error(*error)
    elif batch is not None:
        results = []
        for status, record, err in batch:
            inner = "<status>%d</status>" % status
            inner += _xml_record(record) if record is not None else ""
            inner += _xml_error(*err) if err is not None else ""
            results.append("<result>%s</result>" % inner)
        body = "<results>%s</results>" % "".join(results)
    else:
        body = "<health>%s</health>" % "".join(
            '<partition name="%s" engine="%s" up="%s"%s/>' % (
                _x(n), e, "false" if reason else "true",
                ' reason="%s"' % _x(reason) if reason else "") for n, e, reason in health)
    return ('<?xml version="1.0" encoding="UTF-8"?>\n' + body).encode("utf-8")


# -- text and raw -----------------------------------------------------------

def render_text(record=None, listing=None, error=None, batch=None, health=None, empty=None):
    """Render a payload as text/plain: the value, one key per line, or a message."""
    if empty:
        return b""
    if record is not None:
        return record.value
    if listing is not None:
        lines = [r.key for r in listing.items] + list(listing.prefixes)
        return b"".join(line + b"\n" for line in sorted(lines))
    if error is not None:
        return ("%d %s: %s\n" % error).encode("utf-8")
    if health is not None:
        return "".join("%s %s %s\n" % (n, e, reason or "up") for n, e, reason in health).encode()
    return b""


def render_raw(record=None, listing=None, error=None, batch=None, health=None, empty=None):
    """Render a payload as application/octet-stream: the raw value bytes."""
    if record is not None:
        return record.value
    return render_text(listing=listing, error=error, health=health, empty=empty)
