"""This module provides the wire formats of API.md ("Representations"): the
formats a client can ask for (:data:`FORMATS`) and the one table
:data:`RENDERERS` of payload kind x format -> renderer.

A handler answers a payload dict with exactly one key, its kind (``record``,
``listing``, ``error``, ``batch``, ``health``, ``empty`` or ``document``); the cell of that
kind in the negotiated format renders it to bytes.  A kind without a cell in
a format has no representation there: asking for it is 406
(:func:`representable`).  A new format is one more :class:`Format` and one
more column of the table.  Renderers are pure functions of the payload value.
"""

import base64
import functools
import json
import re
import time
from typing import Callable, Dict, NamedTuple, Optional, Tuple
from xml.sax.saxutils import escape

import orjson

from kv.http import html

# -- the formats and the table ------------------------------------------------

RECORD, LISTING, ERROR, BATCH, HEALTH, EMPTY, DOCUMENT = (
    "record", "listing", "error", "batch", "health", "empty", "document")


class Format(NamedTuple):
    """One wire format: a column of :data:`RENDERERS`.

    ``name`` is its ``?format=`` value; an ``Accept`` header may ask for any of
    ``media_types``, and ``?format=`` answers the first; ``charset``, when set,
    is appended to the Content-Type (``text/plain; charset=utf-8``).
    """
    name: str
    media_types: Tuple[str, ...]
    charset: str = ""


JSON = Format("json", ("application/json",))
XML = Format("xml", ("application/xml", "text/xml"))
TEXT = Format("text", ("text/plain",), "utf-8")
RAW = Format("raw", ("application/octet-stream",))
HTML = Format("html", ("text/html",), "utf-8")

#: The columns of :data:`RENDERERS`.  Their order is the Accept tie-break
#: order (python-mimeparse prefers the later type of equal quality), except
#: that the default, :data:`DEFAULT_FORMAT`, wins every tie.
FORMATS = (JSON, XML, TEXT, RAW, HTML)
DEFAULT_FORMAT = JSON
#: ``?format=`` values that API.md defines but no column serves yet: 406, not 400.
UNSERVED_FORMATS = ()

FORMAT_OF_MEDIA: Dict[str, Format] = {media: fmt for fmt in FORMATS for media in fmt.media_types}
#: Every media type an Accept header can get, for the body of a 406.
SUPPORTED_TYPES = ", ".join(FORMAT_OF_MEDIA)

Renderer = Callable[[object], bytes]


def _table(*rows) -> Dict[str, Dict[str, Renderer]]:
    """kind -> {format name -> renderer} from rows of (kind, one cell per
    format of FORMATS); a None cell is left out (406).

    :raises ValueError: for a row of the wrong width, or a format that cannot
        render an error or an empty answer (every answer needs those two).
    """
    table = {}
    for kind, *cells in rows:
        if len(cells) != len(FORMATS):
            raise ValueError("row %s has %d cells for %d formats"
                             % (kind, len(cells), len(FORMATS)))
        table[kind] = {fmt.name: cell for fmt, cell in zip(FORMATS, cells) if cell is not None}
    for fmt in FORMATS:
        if not {ERROR, EMPTY} <= {kind for kind, cells in table.items() if fmt.name in cells}:
            raise ValueError("format %s must render errors and empty answers" % fmt.name)
    return table


def renderer(kind: str, media: str) -> Optional[Renderer]:
    """The cell of :data:`RENDERERS` for a payload kind and a negotiated media type.

    :param str kind: RECORD, LISTING, ERROR, BATCH, HEALTH or EMPTY.
    :param str media: a media type of :data:`FORMATS`, e.g. ``text/xml``.
    :returns: the renderer (a function of the payload value returning bytes),
        or None when that kind has no representation in that format.
    :raises KeyError: for an unknown kind or media type.
    """
    return RENDERERS[kind].get(FORMAT_OF_MEDIA[media].name)


def representable(kind: str, media: str, value: Optional[bytes] = None) -> bool:
    """Whether a payload of ``kind`` has a representation in ``media``; with
    ``value`` (the bytes of a record's value), whether that one does too: a
    text/plain answer of a value that is not UTF-8 does not (API.md).

    :raises KeyError: for an unknown kind or media type.
    """
    cell = renderer(kind, media)
    if cell is None:
        return False
    carries = getattr(cell, "carries", None)
    return value is None or carries is None or carries(value)


def render(fmt: Format, **payload) -> bytes:
    """Render a payload dict of one kind (``{"record": record}``, ...) in ``fmt``.

    mimerender calls this (through functools.partial, one per format) with
    the handler's payload as keyword arguments.

    :returns: the body bytes.
    :raises KeyError: when the table has no cell for this kind and format
        (the endpoint answers 406 before that can happen).
    """
    (kind, value), = payload.items()
    return RENDERERS[kind][fmt.name](value)


# -- shared pieces ------------------------------------------------------------

# Characters XML 1.0 cannot carry (section 2.2), besides surrogates.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


@functools.lru_cache(maxsize=4096)
def _utc_second(seconds: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))


def timestamp(us: Optional[int]) -> Optional[str]:
    """RFC 3339 UTC with microseconds, e.g. 2026-11-22T10:00:00.123456Z; None stays None.

    :param int us: microseconds since the Unix epoch, or None.
    """
    if us is None:
        return None
    seconds, micro = divmod(us, 1_000_000)
    return "%s.%06dZ" % (_utc_second(seconds), micro)


def text_of(value: bytes, for_xml: bool = False) -> Tuple[str, str]:
    """(text, encoding): the UTF-8 text of ``value`` and "utf-8", or its
    base64 and "base64" when the bytes are not UTF-8 (or, for XML, hold
    characters XML 1.0 cannot carry)."""
    try:
        text = value.decode("utf-8")
        if not (for_xml and _NOT_XML.search(text)):
            return text, "utf-8"
    except UnicodeDecodeError:
        pass
    return base64.b64encode(value).decode("ascii"), "base64"


def _is_utf8(value: bytes) -> bool:
    try:
        value.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _nothing(_) -> bytes:
    """The body of a 204 or 304 answer, in every format."""
    return b""


# -- JSON -------------------------------------------------------------------

def record_json(record, with_value=True) -> dict:
    """A record as API.md's JSON object (key, value and encoding, version,
    created, modified, expires), for answers that embed records."""
    out = {"key": record.key.decode("utf-8")}
    if with_value:
        out["value"], out["encoding"] = text_of(record.value)
    out.update(version=record.version, created=timestamp(record.created_us),
               modified=timestamp(record.modified_us), expires=timestamp(record.expires_us))
    return out


def _json_error(error) -> dict:
    status, code, message = error
    return {"status": status, "code": code, "message": message}


def _json_result(result) -> dict:
    status, record, error = result
    out = {"status": status}
    if record is not None:
        out["record"] = record_json(record)
    if error is not None:
        out["error"] = _json_error(error)
    return out


def _json_error_doc(error) -> dict:
    return {"error": _json_error(error)}


def _json_batch(results) -> dict:
    return {"results": [_json_result(r) for r in results]}


def _json_listing(listing) -> dict:
    items = []
    for r in listing.items:
        item = {"key": r.key.decode("utf-8"), "version": r.version,
                "modified": timestamp(r.modified_us), "expires": timestamp(r.expires_us)}
        if listing.values and r.value is not None:     # None: the caller may not read it
            item["value"], item["encoding"] = text_of(r.value)
        items.append(item)
    return {"items": items, "prefixes": [p.decode("utf-8") for p in listing.prefixes],
            "next": listing.next}


def _json_health(report) -> dict:
    return {"status": "ok" if all(not reason for _, _, reason in report) else "degraded",
            "partitions": [{"name": n, "engine": e, "up": not reason, "reason": reason}
                           for n, e, reason in report]}


def _json_document(document) -> bytes:
    """A JSON object as compact UTF-8; integers beyond 64 bits (an exact
    sum) through the standard library, which orjson refuses."""
    try:
        return orjson.dumps(document)
    except TypeError:
        return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _json(build):
    """A JSON cell: the document ``build(value)``, as UTF-8 compact bytes
    (orjson: the bytes json.dumps would give)."""
    return lambda value: orjson.dumps(build(value))


# -- XML --------------------------------------------------------------------

def _x(text: str) -> str:
    """``text`` escaped for XML character data; a character XML 1.0 cannot
    carry (a control character of an error message) becomes ``\\xNN``."""
    text = escape(text).replace("\r", "&#13;")
    if _NOT_XML.search(text):
        text = _NOT_XML.sub(lambda m: "\\x%02x" % ord(m.group()), text)
    return text


def _xml_text(tag, value, for_value=True) -> str:
    text, encoding = text_of(value, for_xml=True)
    if not for_value and encoding == "utf-8":
        return "<%s>%s</%s>" % (tag, _x(text), tag)
    return '<%s encoding="%s">%s</%s>' % (tag, encoding, _x(text), tag)


def _xml_time(tag, us) -> str:
    return "<%s/>" % tag if us is None else "<%s>%s</%s>" % (tag, timestamp(us), tag)


def _xml_record(record, with_value=True, tag="record") -> str:
    parts = [_xml_text("key", record.key, for_value=False)]
    if with_value and record.value is not None:
        parts.append(_xml_text("value", record.value))
    parts += ["<version>%d</version>" % record.version, _xml_time("created", record.created_us),
              _xml_time("modified", record.modified_us), _xml_time("expires", record.expires_us)]
    return "<%s>%s</%s>" % (tag, "".join(parts), tag)


def _xml_error(error) -> str:
    status, code, message = error
    return "<error><status>%d</status><code>%s</code><message>%s</message></error>" % (
        status, _x(code), _x(message))


def _xml_listing(listing) -> str:
    return "<keys>%s%s%s</keys>" % (
        "".join(_xml_record(r, with_value=listing.values, tag="item") for r in listing.items),
        "".join(_xml_text("prefix", p, for_value=False) for p in listing.prefixes),
        "<next>%s</next>" % _x(listing.next) if listing.next else "<next/>")


def _xml_batch(results) -> str:
    out = []
    for status, record, error in results:
        inner = "<status>%d</status>" % status
        inner += _xml_record(record) if record is not None else ""
        inner += _xml_error(error) if error is not None else ""
        out.append("<result>%s</result>" % inner)
    return "<results>%s</results>" % "".join(out)


def _xml_health(report) -> str:
    return "<health>%s</health>" % "".join(
        '<partition name="%s" engine="%s" up="%s"%s/>' % (
            _x(n), e, "false" if reason else "true",
            ' reason="%s"' % _x(reason) if reason else "") for n, e, reason in report)


def _xml_element(tag: str, value) -> str:
    """A JSON value as XML: an object's members become child elements, a
    list's items ``<item>`` elements, null an empty element."""
    if value is None:
        return "<%s/>" % tag
    if isinstance(value, dict):
        inner = "".join(_xml_element(k, v) for k, v in value.items())
    elif isinstance(value, list):
        inner = "".join(_xml_element("item", v) for v in value)
    elif isinstance(value, bool):
        inner = "true" if value else "false"
    else:
        inner = _x(str(value))
    return "<%s>%s</%s>" % (tag, inner, tag)


def _xml_document(document) -> str:
    (tag, value), = document.items() if len(document) == 1 else (("document", document),)
    return _xml_element(tag, value)


def _xml(build):
    """An XML cell: the element ``build(value)`` as UTF-8, with a declaration."""
    return lambda value: ('<?xml version="1.0" encoding="UTF-8"?>\n' + build(value)).encode("utf-8")


# -- text and raw bytes -----------------------------------------------------

def _raw_value(record) -> bytes:
    """The value itself, any bytes."""
    return record.value


def _carrying(carries: Callable[[bytes], bool], refusal: str):
    """Mark a record renderer that can carry only the values ``carries``
    accepts (:func:`representable`); ``refusal`` says why it cannot."""
    def mark(render):
        render.carries, render.refusal = carries, refusal
        return render
    return mark


@_carrying(_is_utf8, "the value is not UTF-8 text")
def _text_value(record) -> bytes:
    """The value itself, which must be UTF-8 text."""
    return record.value


def _text_listing(listing) -> bytes:
    """One key or prefix per line, in byte order."""
    lines = [r.key for r in listing.items] + list(listing.prefixes)
    return b"".join(line + b"\n" for line in sorted(lines))


def _text_error(error) -> bytes:
    return ("%d %s: %s\n" % error).encode("utf-8")


def _text_health(report) -> bytes:
    return "".join("%s %s %s\n" % (n, e, reason or "up") for n, e, reason in report).encode()


#: payload kind x format -> renderer of the payload value; None: no
#: representation (406).  Values: RECORD a Record, LISTING a Listing, ERROR
#: (status, code, message), BATCH a list of (status, Record or None, error or
#: None), HEALTH a list of (partition name, engine, reason or None), EMPTY True,
#: DOCUMENT a JSON object (dict of JSON values; in XML a one-member object is
#: its member's element, any other is <document>).
RENDERERS = _table(
    # kind    JSON                     XML                    TEXT           RAW           HTML (kv.http.html)
    (RECORD,  _json(record_json),     _xml(_xml_record),     _text_value,   _raw_value,   html.record_page),
    (LISTING, _json(_json_listing),    _xml(_xml_listing),    _text_listing, None,         html.listing_page),
    (ERROR,   _json(_json_error_doc),  _xml(_xml_error),      _text_error,   _text_error,  html.error_page),
    (BATCH,   _json(_json_batch),      _xml(_xml_batch),      None,          None,         None),
    (HEALTH,  _json(_json_health),     _xml(_xml_health),     _text_health,  _text_health, html.health_page),
    (EMPTY,   _nothing,                _nothing,              _nothing,      _nothing,     _nothing),
    (DOCUMENT, _json_document,         _xml(_xml_document),   None,          None,         html.document_page),
)
