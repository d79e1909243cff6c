"""This module provides what a handler reads from the current web.py request:
the query string (:func:`query`), the body in bounded chunks
(:func:`read_body`), its media type (:func:`request_media_type`), the record
of a PUT/POST (:func:`read_write_request`) and the bucket and key of the path
(:func:`path_bucket_key`).

A body is never read past its limit: a ``Content-Length`` over it is
refused before anything is read, a chunked one as soon as it passes it.
"""

import urllib.parse
from typing import Optional, Tuple

import mimeparse
import web

from kv.errors import InvalidRequest, ValueTooLarge
from kv.records import DEFAULT_BUCKET, check_bucket
from kv.http.bodies import (STRUCTURED_TYPES, key_bytes, parse_record_body, parse_ttl,
                            structured_limit)
from kv.http.errors import HTTPProblem

CHUNK_BYTES = 65536
#: Request media types whose body is the value itself ("" is no Content-Type).
RAW_VALUE_TYPES = ("", "text/plain", "application/octet-stream")


def query() -> dict:
    """The query string as a dict (last value wins), decoded as strict UTF-8;
    parsed once per request.

    :returns: dict of str -> str.
    :raises InvalidRequest: for invalid percent-encoding or more than 100 fields.
    """
    if "kv_query" not in web.ctx:
        try:
            web.ctx.kv_query = dict(urllib.parse.parse_qsl(
                web.ctx.env.get("QUERY_STRING", ""), keep_blank_values=True,
                errors="strict", max_num_fields=100))
        except (UnicodeDecodeError, ValueError):
            raise InvalidRequest("the query string is not valid UTF-8 form encoding") from None
    return web.ctx.kv_query


def read_body(limit: int, what: str = "body") -> bytes:
    """Read the request body, at most ``limit`` bytes, in 64 KiB chunks.

    A ``Content-Length`` over the limit is refused before anything is read.

    :param int limit: the most bytes accepted.
    :param str what: what the body is, for the 413 message ("body", "value").
    :returns: the body (b"" when there is neither Content-Length nor chunking).
    :raises ValueTooLarge: over the limit.
    :raises InvalidRequest: bad Content-Length or a body cut short.
    """
    env = web.ctx.env
    length = env.get("CONTENT_LENGTH") or ""
    stream = env["wsgi.input"]
    if length:
        if not length.isdigit():
            raise InvalidRequest("Content-Length is not a number")
        size = int(length)
        if size > limit:
            raise ValueTooLarge(size, limit, what)
    elif "chunked" in env.get("HTTP_TRANSFER_ENCODING", "").lower():
        size = None
    else:
        return b""
    chunks, total = [], 0
    while size is None or total < size:
        want = CHUNK_BYTES if size is None else min(CHUNK_BYTES, size - total)
        chunk = stream.read(want)
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
        if total > limit:
            raise ValueTooLarge(total, limit, what)
    if size is not None and total < size:
        raise InvalidRequest("the body is shorter than Content-Length")
    return b"".join(chunks)


def request_media_type() -> str:
    """The request's media type, lower case, without parameters ("" if none).

    :raises HTTPProblem: 415 when Content-Type cannot be parsed.
    """
    content_type = web.ctx.env.get("CONTENT_TYPE", "").strip()
    if not content_type:
        return ""
    try:
        kind, sub, _ = mimeparse.parse_mime_type(content_type)
    except mimeparse.MimeTypeParseException:
        raise HTTPProblem(415, "unsupported_media_type",
                          "Content-Type %r cannot be parsed" % content_type) from None
    return "%s/%s" % (kind.lower(), sub.lower())


def read_write_request(settings, with_key: bool) -> Tuple[Optional[bytes], bytes, Optional[int]]:
    """Parse a PUT/POST body into (key or None, value, ttl seconds or None).

    The body format follows Content-Type (API.md "Request bodies"); a raw
    body (text/plain, octet-stream, none) takes the key of a POST from
    ``?key=``; ``?ttl=`` works with every body type.

    :param settings: the store's Settings (``max_value_bytes``).
    :param bool with_key: POST /keys: the key comes with the body.
    :returns: (key bytes or None, value bytes, ttl int or None).
    :raises HTTPProblem: 415 for an unsupported Content-Type.
    :raises InvalidRequest, InvalidKey, ValueTooLarge: for bad bodies.
    """
    media = request_media_type()
    limit = settings.max_value_bytes
    if media in RAW_VALUE_TYPES:
        fields = {"value": read_body(limit, "value")}
        if with_key and "key" in query():
            fields["key"] = query()["key"]
    elif media in STRUCTURED_TYPES:
        fields = parse_record_body(media, read_body(structured_limit(limit)))
    else:
        raise HTTPProblem(415, "unsupported_media_type",
                          "Content-Type %s is not supported; use application/json, "
                          "application/xml, application/x-www-form-urlencoded, text/plain or "
                          "application/octet-stream" % media)
    if "ttl" in query():
        if "ttl" in fields:
            raise InvalidRequest("ttl is given both in the query and in the body")
        fields["ttl"] = query()["ttl"]
    value = fields.get("value")
    if value is None:
        raise InvalidRequest("the body has no value")
    if len(value) > limit:
        raise ValueTooLarge(len(value), limit)
    ttl = parse_ttl(fields["ttl"]) if fields.get("ttl") is not None else None
    key = None
    if with_key:
        if fields.get("key") is None:
            raise InvalidRequest("the body has no key")
        key = key_bytes(fields["key"])
    return key, value, ttl


def _path() -> Tuple[str, bool]:
    """The request path after SCRIPT_NAME: (path, True when still
    percent-encoded).  Servers disagree on ``%2F`` in PATH_INFO (gunicorn
    decodes it, cheroot keeps it), so the raw request target is used when
    the server passes it (REQUEST_URI, RAW_URI); else PATH_INFO, latin-1
    per PEP 3333, already decoded."""
    env = web.ctx.env
    script = env.get("SCRIPT_NAME", "")
    raw = env.get("REQUEST_URI") or env.get("RAW_URI")
    if raw:
        target = raw.split("?", 1)[0]
        if "://" in target:                       # absolute-form request target
            target = "/" + target.split("://", 1)[1].partition("/")[2]
        return target[len(script):], True
    return env.get("PATH_INFO", ""), False


def path_bucket_key() -> Tuple[bytes, bytes]:
    """(bucket, key) of ``/keys/{key}`` (the bucket ``default``) or
    ``/buckets/{bucket}/keys/{key}``, each percent-decoded exactly once;
    the key is b"" on the listing routes (``/keys``, ``.../keys``).

    :returns: (bucket, key) bytes; the bucket is validated, the key not
        (the datastore checks it).
    :raises InvalidBucket: for a bad bucket name (400).
    :raises HTTPProblem: 404 for a reserved bucket (``_...``).
    """
    parsed = web.ctx.get("kv_bucket_key")       # the guard and the handler both ask
    if parsed is None:
        bucket, key = path_parts()
        parsed = web.ctx.kv_bucket_key = (
            DEFAULT_BUCKET if bucket is None else public_bucket(bucket)), key
    return parsed


def path_parts() -> Tuple[Optional[bytes], bytes]:
    """(bucket or None for the /keys routes, key) of the path, each
    percent-decoded exactly once, neither validated (the bucket part of
    ``/buckets/notes:*/keys/k`` is ``notes:*``); the change feed's routes
    (``/changes``, ``/buckets/{bucket}/changes``) have the key b"".
    """
    path, encoded = _path()
    if path == "/changes":
        return None, b""

    def decode(part: str) -> bytes:
        return (urllib.parse.unquote_to_bytes(part) if encoded
                else part.encode("latin-1", "replace"))
    if path.startswith("/buckets/"):
        name, keys, rest = path[len("/buckets/"):].partition("/keys")
        if not keys and name.endswith("/changes"):
            return decode(name[:-len("/changes")]), b""
        return decode(name), decode(rest[1:])
    return None, decode(path[len("/keys/"):])


def public_bucket(bucket: bytes) -> bytes:
    """Validate a bucket name from a request (API.md "Buckets").

    :raises InvalidBucket: for a bad name (400).
    :raises HTTPProblem: 404 for a reserved name (``_...``): the service's own.
    """
    check_bucket(bucket)
    if bucket.startswith(b"_"):
        raise HTTPProblem(404, "not_found", "no such bucket")
    return bucket
