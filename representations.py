"""This module provides the wire formats of API.md: renderers of records,
listings, errors, batch results and health (JSON, XML, text, raw bytes), and
parsers of request bodies (JSON, XML through defusedxml, form encoding).

Renderers are pure functions called by mimerender with the handler's payload
dict as keyword arguments; exactly one of ``record``, ``listing``, ``error``,
``batch``, ``health`` or ``empty`` is given.
"""

import base64
import binascii
import functools
import json
import re
import time
import urllib.parse
from xml.etree.ElementTree import ParseError
from xml.sax.saxutils import escape

import defusedxml
import defusedxml.ElementTree
import orjson

from datastore import MAX_TTL_SECONDS, InvalidKey, InvalidRequest

STRUCTURED_TYPES = ("application/json", "application/xml", "text/xml",
                    "application/x-www-form-urlencoded")
MAX_BATCH_OPS = 1000
# Characters XML 1.0 cannot carry (section 2.2), besides surrogates.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def structured_limit(max_value_bytes: int) -> int:
    """Largest JSON/XML/form body for a value of max_value_bytes (bytes).

    Escaping can make a value up to six times longer (JSON ``\\u0000``), plus
    64 KiB for the rest of the document.
    """
    return 6 * max_value_bytes + 65536


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


def key_bytes(key) -> bytes:
    """A key from a parsed body (str) as UTF-8 bytes.

    :raises InvalidKey: when it is not a string or not encodable (lone surrogates).
    """
    if not isinstance(key, str):
        raise InvalidRequest("key must be a string")
    try:
        return key.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidKey("the key is not valid UTF-8") from None


def representable(mime: str, record) -> bool:
    """False for a text/plain answer of a value that is not UTF-8."""
    if mime == "text/plain":
        try:
            record.value.decode("utf-8")
        except UnicodeDecodeError:
            return False
    return True


def parse_ttl(raw) -> int:
    """Parse a TTL: ASCII digits (or a JSON integer), 1 to 315360000 seconds.

    :raises InvalidRequest: otherwise.
    """
    if isinstance(raw, int) and not isinstance(raw, bool):
        ttl = raw
    elif isinstance(raw, str) and re.fullmatch(r"[0-9]{1,10}", raw):
        ttl = int(raw)
    else:
        ttl = 0
    if not 1 <= ttl <= MAX_TTL_SECONDS:
        raise InvalidRequest("ttl must be a whole number of seconds from 1 to %d" % MAX_TTL_SECONDS)
    return ttl


_ETAG = r'(?:W/)?"[\x21\x23-\x7e\x80-\xff]*"'


def etag_list(header: str):
    """Parse an If-Match/If-None-Match value: "*" or a tuple of entity tags.

    :raises InvalidRequest: for a malformed list (RFC 9110 section 8.8.3).
    """
    header = header.strip()
    if header == "*":
        return "*"
    tags = tuple(re.findall(_ETAG, header))
    if not tags or re.sub(_ETAG, "", header).strip(", \t"):
        raise InvalidRequest("malformed entity-tag list: %r" % header[:100])
    return tags


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
                    "modified": timestamp(r.modified_us)}
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


# -- request bodies -----------------------------------------------------------

def _value(text, encoding):
    if encoding in (None, "utf-8"):
        if not isinstance(text, str):
            raise InvalidRequest("value must be a string")
        try:
            return text.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidRequest("value is not valid UTF-8 text") from None
    if encoding == "base64":
        if not isinstance(text, str):
            raise InvalidRequest("value must be a string")
        try:
            return base64.b64decode(text.encode("ascii"), validate=True)
        except (binascii.Error, UnicodeEncodeError):
            raise InvalidRequest("value is not valid base64") from None
    raise InvalidRequest("encoding must be utf-8 or base64")


def _json_document(body: bytes):
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as e:
        raise InvalidRequest("the body is not valid JSON: %s" % str(e)[:200]) from None


def _xml_document(body: bytes):
    try:
        return defusedxml.ElementTree.fromstring(body)
    except defusedxml.DefusedXmlException:
        raise InvalidRequest("XML with a DTD entity declaration or an external reference "
                             "is refused") from None
    except (ParseError, ValueError, RecursionError) as e:
        raise InvalidRequest("the body is not well-formed XML: %s" % str(e)[:200]) from None


_FIELDS = {"key", "value", "encoding", "ttl"}


def _check_json_ttl(fields):
    ttl = fields.get("ttl")
    if ttl is not None and (not isinstance(ttl, int) or isinstance(ttl, bool)):
        raise InvalidRequest("ttl must be a JSON integer")


def _fields_from_mapping(doc) -> dict:
    if not isinstance(doc, dict):
        raise InvalidRequest("the body must be an object")
    unknown = set(doc) - _FIELDS
    if unknown:
        raise InvalidRequest("unknown field %r" % sorted(unknown)[0])
    fields = dict(doc)
    if "value" in fields:
        fields["value"] = _value(fields["value"], fields.pop("encoding", None))
    return fields


def _fields_from_xml(element, allowed=_FIELDS - {"encoding"}) -> dict:
    fields = {}
    for child in element:
        if child.tag not in allowed or child.tag in fields:
            raise InvalidRequest("unexpected element <%s>" % child.tag)
        text = child.text or ""
        if child.tag == "value":
            fields["value"] = _value(text, child.get("encoding"))
        else:
            fields[child.tag] = text.strip() if child.tag == "ttl" else text
    return fields


def parse_record_body(media: str, body: bytes) -> dict:
    """Parse a PUT/POST body of a structured type.

    :returns: dict with optional ``key`` (str), ``value`` (bytes), ``ttl``.
    :raises InvalidRequest: for malformed bodies, unknown fields, bad base64.
    """
    if media == "application/json":
        fields = _fields_from_mapping(_json_document(body))
        _check_json_ttl(fields)
        return fields
    if media == "application/x-www-form-urlencoded":
        try:
            pairs = urllib.parse.parse_qsl(body.decode("ascii"), keep_blank_values=True,
                                           errors="strict", max_num_fields=10)
        except (UnicodeDecodeError, ValueError):
            raise InvalidRequest("the form body is not valid UTF-8 form encoding") from None
        fields = dict(pairs)
        if "value" not in fields and "key" not in fields:
            raise InvalidRequest("a form body is value=...&ttl=... (curl -d 'value=...'); "
                                 "for a raw value send Content-Type: application/octet-stream")
        return _fields_from_mapping(fields)
    root = _xml_document(body)
    if root.tag != "record":
        raise InvalidRequest("the XML root element must be <record>")
    return _fields_from_xml(root)


_OPS = {"get", "put", "delete"}
_OP_FIELDS = {"op", "key", "value", "encoding", "ttl", "if_match", "if_none_match"}


def parse_batch_body(media: str, body: bytes) -> list:
    """Parse a POST /batch body into a list of op dicts, validating all first.

    JSON: ``{"ops": [{"op": "put", "key": ..., "value": ..., ...}, ...]}``;
    XML: ``<batch><op type="put"><key>..</key><value encoding="..">..</value>
    <ttl>..</ttl><if_match>..</if_match></op>...</batch>``.

    :returns: list of dicts with ``op``, ``key`` (bytes), and for put
        ``value`` (bytes), ``ttl`` (int or None), ``if_match``/``if_none_match``
        (None, "*" or a tuple of entity tags).
    :raises InvalidRequest: for a malformed body, an unknown op or more than
        1000 ops (nothing is applied then).
    """
    if media == "application/json":
        doc = _json_document(body)
        if not isinstance(doc, dict) or set(doc) != {"ops"} or not isinstance(doc["ops"], list):
            raise InvalidRequest('the body must be {"ops": [...]}')
        raw_ops = []
        for op in doc["ops"]:
            if not isinstance(op, dict):
                raise InvalidRequest("each op must be an object")
            unknown = set(op) - _OP_FIELDS
            if unknown:
                raise InvalidRequest("unknown op field %r" % sorted(unknown)[0])
            _check_json_ttl(op)
            raw_ops.append(op)
    else:
        root = _xml_document(body)
        if root.tag != "batch":
            raise InvalidRequest("the XML root element must be <batch>")
        raw_ops = []
        for element in root:
            if element.tag != "op":
                raise InvalidRequest("unexpected element <%s>" % element.tag)
            op = _fields_from_xml(element, _OP_FIELDS - {"op", "encoding"})
            op["op"] = element.get("type")
            raw_ops.append(op)
    if len(raw_ops) > MAX_BATCH_OPS:
        raise InvalidRequest("at most %d ops per batch" % MAX_BATCH_OPS)
    ops = []
    for i, op in enumerate(raw_ops):
        kind = op.get("op")
        if kind not in _OPS:
            raise InvalidRequest("op %d: unknown op %r (get, put or delete)" % (i, kind))
        if "key" not in op:
            raise InvalidRequest("op %d: no key" % i)
        out = {"op": kind, "key": key_bytes(op["key"])}
        if kind == "put":
            if "value" not in op:
                raise InvalidRequest("op %d: put needs a value" % i)
            value = op["value"]
            out["value"] = value if isinstance(value, bytes) else _value(value, op.get("encoding"))
            out["ttl"] = parse_ttl(op["ttl"]) if op.get("ttl") is not None else None
        for header in ("if_match", "if_none_match"):
            if op.get(header) is not None:
                if kind == "get" or not isinstance(op[header], str):
                    raise InvalidRequest("op %d: %s must be a string on put or delete" % (i, header))
                out[header] = etag_list(op[header])
        ops.append(out)
    return ops
