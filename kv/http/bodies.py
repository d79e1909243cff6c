"""This module provides the parsers of request bodies (API.md "Request
bodies" and "Batch"): JSON, XML through defusedxml, form encoding, and the
header and query values that go with them (ttl, entity-tag lists).

Every parser does work bounded by what a valid body can hold, not by the
body's size: a document is refused as soon as the parser meets a container
wider or deeper than its body type allows (:class:`_Shape`), so a 16 MiB body
of junk costs about what a valid one does.  Errors are InvalidRequest (400)
or InvalidKey, with a message fit for the client.
"""

import base64
import binascii
import json
import json.decoder
import json.scanner
import re
import urllib.parse
from typing import NamedTuple, Tuple
from xml.etree.ElementTree import ParseError, TreeBuilder

import defusedxml
import defusedxml.ElementTree

from kv.errors import InvalidKey, InvalidRequest
from kv.records import MAX_TTL_SECONDS, check_bucket

STRUCTURED_TYPES = ("application/json", "application/xml", "text/xml",
                    "application/x-www-form-urlencoded")
#: The media types :func:`parse_batch_body` reads.
BATCH_TYPES = ("application/json", "application/xml", "text/xml")
MAX_BATCH_OPS = 1000


def structured_limit(max_value_bytes: int) -> int:
    """Largest JSON/XML/form body for a value of max_value_bytes (bytes).

    Escaping can make a value up to six times longer (JSON ``\\u0000``), plus
    64 KiB for the rest of the document.
    """
    return 6 * max_value_bytes + 65536


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


# -- documents ----------------------------------------------------------------

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


class _Shape(NamedTuple):
    """The largest document of a body type, bounding the work of parsing one.

    ``limits[d]`` is (most members, their name in the error) of a container at
    depth d + 1, the outermost first; nothing nests deeper than ``limits``
    (deeper JSON values are strings or numbers; deeper XML elements hold text).
    """
    what: str
    limits: Tuple[Tuple[int, str], ...]


# More '{', '[' and ',' bytes than this and json.loads could build more objects
# than a valid body holds (a 16 MiB "[[],[],...]" is 8 million lists, 400 MiB):
# such a body goes through _BoundedDecoder, which stops at the shape's limits.
_FAST_JSON_TOKENS = 65536
# An XML body is fed to expat in pieces this large; a tag, comment or other
# markup still unfinished this many bytes after its start when a piece has been
# fed is refused, so none over 128 KiB gets through (16 MiB of attributes in one
# tag cost expat 500 MiB once the tag is complete).
_XML_FEED_BYTES = _MAX_XML_MARKUP_BYTES = 65536


class _BoundedDecoder(json.JSONDecoder):
    """A JSON decoder (the pure-Python scanner, C string decoding) that raises
    InvalidRequest at the first container member past its :class:`_Shape`."""

    def __init__(self, shape: _Shape):
        super().__init__()
        self.shape, self.depth = shape, 0
        self.parse_object, self.parse_array = self._object, self._array
        self.scan_once = json.scanner.py_make_scanner(self)

    def _bounded(self, parse, scan_once):
        if self.depth >= len(self.shape.limits):
            raise InvalidRequest("the body nests deeper than a %s can" % self.shape.what)
        limit, words = self.shape.limits[self.depth]
        count = 0

        def counted(string, index):
            nonlocal count
            count += 1
            if count > limit:
                raise InvalidRequest("at most %d %s" % (limit, words))
            return scan_once(string, index)
        self.depth += 1
        try:
            return parse(counted)
        finally:
            self.depth -= 1

    def _object(self, s_and_end, strict, scan_once, *hooks):
        return self._bounded(lambda scan: json.decoder.JSONObject(s_and_end, strict, scan, *hooks),
                             scan_once)

    def _array(self, s_and_end, scan_once):
        return self._bounded(lambda scan: json.decoder.JSONArray(s_and_end, scan), scan_once)


def _json_document(body: bytes, shape: _Shape):
    """Parse a JSON body, doing no more work than a document of ``shape`` needs.

    A body with few structural bytes goes to the C parser whole (its objects
    are bounded by those bytes); any other is counted as it is parsed.

    :raises InvalidRequest: for invalid JSON or a document beyond ``shape``.
    """
    try:
        if len(body) - len(body.translate(None, b"{[,")) <= _FAST_JSON_TOKENS:
            return json.loads(body)
        return json.loads(body, cls=_BoundedDecoder, shape=shape)
    except InvalidRequest:
        raise
    except (ValueError, RecursionError) as e:
        raise InvalidRequest("the body is not valid JSON: %s" % str(e)[:200]) from None


class _BoundedTreeBuilder:
    """An ElementTree parser target building the tree of a document that fits
    a :class:`_Shape`, and raising InvalidRequest at the first element past it."""

    def __init__(self, shape: _Shape):
        self.shape, self.builder = shape, TreeBuilder()
        self.children = [0]          # children seen so far by each open element

    def start(self, tag, attrib):
        depth = len(self.children) - 1          # of the parent; 0: the document
        if depth > len(self.shape.limits):
            raise InvalidRequest("<%s> nests deeper than a %s can" % (tag[:60], self.shape.what))
        if depth:
            limit, words = self.shape.limits[depth - 1]
            self.children[-1] += 1
            if self.children[-1] > limit:
                raise InvalidRequest("at most %d %s" % (limit, words))
        self.children.append(0)
        return self.builder.start(tag, attrib)

    def end(self, tag):
        self.children.pop()
        return self.builder.end(tag)

    def data(self, text):
        self.builder.data(text)

    def close(self):
        return self.builder.close()


def _xml_document(body: bytes, shape: _Shape):
    """Parse an XML body (defusedxml: no entity declarations, no external
    references) into its root element, fed in pieces so that a document past
    ``shape`` or an overlong tag stops the parse early.

    :raises InvalidRequest: for XML that is refused, not well-formed or beyond ``shape``.
    """
    parser = defusedxml.ElementTree.DefusedXMLParser(target=_BoundedTreeBuilder(shape))
    data = memoryview(body)
    try:
        for fed in range(_XML_FEED_BYTES, len(data) + _XML_FEED_BYTES, _XML_FEED_BYTES):
            parser.feed(data[fed - _XML_FEED_BYTES:fed])
            # defusedxml's parser is ElementTree's Python one; .parser is its expat
            # parser, whose byte index stays at the start of an unfinished token.
            if min(fed, len(data)) - parser.parser.CurrentByteIndex > _MAX_XML_MARKUP_BYTES:
                raise InvalidRequest("an XML tag or comment is over %d bytes"
                                     % _MAX_XML_MARKUP_BYTES)
        return parser.close()
    except InvalidRequest:
        raise
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


def _shown(thing) -> str:
    """repr() of a client's field name or op for an error message, cut short."""
    text = repr(thing)
    return text if len(text) <= 60 else text[:57] + "..."


def _fields_from_mapping(doc) -> dict:
    if not isinstance(doc, dict):
        raise InvalidRequest("the body must be an object")
    unknown = set(doc) - _FIELDS
    if unknown:
        raise InvalidRequest("unknown field %s" % _shown(sorted(unknown)[0]))
    fields = dict(doc)
    if "value" in fields:
        fields["value"] = _value(fields["value"], fields.pop("encoding", None))
    return fields


def _fields_from_xml(element, allowed=_FIELDS - {"encoding"}) -> dict:
    fields = {}
    for child in element:
        if child.tag not in allowed or child.tag in fields:
            raise InvalidRequest("unexpected element <%s>" % _shown(child.tag)[1:-1])
        text = child.text or ""
        if child.tag == "value":
            fields["value"] = _value(text, child.get("encoding"))
        else:
            fields[child.tag] = text.strip() if child.tag == "ttl" else text
    return fields


_RECORD_JSON = _Shape("record body", ((len(_FIELDS), "fields in a record body"),))
_RECORD_XML = _Shape("record body", ((len(_FIELDS) - 1, "elements in <record>"),))


def parse_record_body(media: str, body: bytes) -> dict:
    """Parse a PUT/POST body of a structured type.

    :returns: dict with optional ``key`` (str), ``value`` (bytes), ``ttl``.
    :raises InvalidRequest: for malformed bodies, unknown fields, bad base64.
    """
    if media == "application/json":
        fields = _fields_from_mapping(_json_document(body, _RECORD_JSON))
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
    root = _xml_document(body, _RECORD_XML)
    if root.tag != "record":
        raise InvalidRequest("the XML root element must be <record>")
    return _fields_from_xml(root)


_OPS = {"get", "put", "delete"}
_OP_FIELDS = {"op", "bucket", "key", "value", "encoding", "ttl", "if_match", "if_none_match"}
_XML_OP_FIELDS = _OP_FIELDS - {"op", "encoding"}
_BATCH_JSON = _Shape("batch", ((1, 'field in a batch body ({"ops": [...]})'),
                               (MAX_BATCH_OPS, "ops per batch"),
                               (len(_OP_FIELDS), "fields per op")))
_BATCH_XML = _Shape("batch", ((MAX_BATCH_OPS, "ops per batch"),
                              (len(_XML_OP_FIELDS), "elements per <op>")))


def _json_ops(body: bytes) -> list:
    """The op objects of a JSON batch body (at most MAX_BATCH_OPS, unchecked)."""
    doc = _json_document(body, _BATCH_JSON)
    if not isinstance(doc, dict) or set(doc) != {"ops"} or not isinstance(doc["ops"], list):
        raise InvalidRequest('the body must be {"ops": [...]}')
    if len(doc["ops"]) > MAX_BATCH_OPS:
        raise InvalidRequest("at most %d ops per batch" % MAX_BATCH_OPS)
    for op in doc["ops"]:
        if not isinstance(op, dict):
            raise InvalidRequest("each op must be an object")
        unknown = set(op) - _OP_FIELDS
        if unknown:
            raise InvalidRequest("unknown op field %s" % _shown(sorted(unknown)[0]))
        _check_json_ttl(op)
    return doc["ops"]


def _xml_ops(body: bytes) -> list:
    """The ops of an XML batch body as dicts of text (at most MAX_BATCH_OPS)."""
    root = _xml_document(body, _BATCH_XML)
    if root.tag != "batch":
        raise InvalidRequest("the XML root element must be <batch>")
    raw_ops = []
    for element in root:
        if element.tag != "op":
            raise InvalidRequest("unexpected element <%s>" % _shown(element.tag)[1:-1])
        op = _fields_from_xml(element, _XML_OP_FIELDS)
        op["op"] = element.get("type")
        raw_ops.append(op)
    return raw_ops


def _op(i: int, op: dict) -> dict:
    """Validate op number ``i`` of a batch; the shape of :func:`parse_batch_body`."""
    kind = op.get("op")
    if not isinstance(kind, str) or kind not in _OPS:
        raise InvalidRequest("op %d: unknown op %s (get, put or delete)" % (i, _shown(kind)))
    if "key" not in op:
        raise InvalidRequest("op %d: no key" % i)
    bucket = op.get("bucket", "default")
    if not isinstance(bucket, str):
        raise InvalidRequest("op %d: bucket must be a string" % i)
    out = {"op": kind, "bucket": check_bucket(bucket.encode("utf-8")), "key": key_bytes(op["key"])}
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
    return out


def parse_batch_body(media: str, body: bytes) -> list:
    """Parse a POST /batch body into a list of op dicts, validating all first.

    JSON: ``{"ops": [{"op": "put", "key": ..., "value": ..., ...}, ...]}``;
    XML: ``<batch><op type="put"><key>..</key><value encoding="..">..</value>
    <ttl>..</ttl><if_match>..</if_match></op>...</batch>``.  The op limit is
    enforced while the body is parsed: a body of more than 1000 ops, or of
    anything nested deeper or wider than ops can be, is refused as soon as
    the parser reaches the excess (bounded time and memory, whatever the body).

    :returns: list of dicts with ``op``, ``bucket`` (bytes, default
        ``default``; validated), ``key`` (bytes), and for put
        ``value`` (bytes), ``ttl`` (int or None), ``if_match``/``if_none_match``
        (None, "*" or a tuple of entity tags).
    :raises InvalidRequest: for a malformed body, an unknown op, an invalid
        bucket name or more than 1000 ops (nothing is applied then).
    """
    raw_ops = _json_ops(body) if media == "application/json" else _xml_ops(body)
    return [_op(i, op) for i, op in enumerate(raw_ops)]
