"""This module provides the HTTP API of ../shared/API.md as a web.py application.

Handlers parse the path, query and headers, make one datastore call and return
a dict that mimerender hands to the negotiated renderer (representations.py).
The only place where an exception becomes an HTTP status is
:data:`ERROR_STATUS`.  Request bodies are read in bounded chunks, never past
the configured limit.

Run: ``python controller.py [HOST:]PORT`` (web.py's own server, cheroot), or in
production ``granian --interface wsgi --factory controller:create_application``
(README, "Running in production").
"""

import functools
import logging
import re
import sys
import urllib.parse
from email.utils import formatdate, parsedate_to_datetime

import mimeparse
import mimerender
import web

import representations as rep
from datastore import (DEFAULT_BUCKET, Condition, Datastore, DatastoreError, InvalidKey,
                       InvalidRequest, KeyExists, KeyNotFound, PartitionUnavailable,
                       PreconditionFailed, ValueTooLarge, open_store)
from kv.records import weak_match

web.config.debug = False          # web.py turns it on under gunicorn otherwise (STYLE.md 1f)
log = logging.getLogger("kv.controller")

CHUNK_BYTES = 65536


class HTTPProblem(DatastoreError):
    """An HTTP-level error of this module (405, 406, 415, unknown path, ...)."""

    def __init__(self, status: int, code: str, message: str, headers=()):
        super().__init__(message)
        self.status, self.code, self.headers = status, code, list(headers)


#: Exception class -> HTTP status, most specific first.  The only such table.
ERROR_STATUS = (
    (InvalidKey, 400),
    (InvalidRequest, 400),
    (ValueTooLarge, 413),
    (KeyNotFound, 404),
    (KeyExists, 409),
    (PreconditionFailed, 412),
    (PartitionUnavailable, 503),
)

STATUS_TEXT = {200: "OK", 201: "Created", 204: "No Content", 304: "Not Modified",
               400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
               406: "Not Acceptable", 409: "Conflict", 412: "Precondition Failed",
               413: "Content Too Large", 415: "Unsupported Media Type",
               500: "Internal Server Error", 503: "Service Unavailable"}


def _status(code: int) -> str:
    return "%d %s" % (code, STATUS_TEXT[code])


def problem_of(exc: Exception):
    """Map an exception to (status, code, message, headers); log unexpected ones.

    :returns: tuple (int, str, str, list of (name, value)).
    """
    if isinstance(exc, HTTPProblem):
        return exc.status, exc.code, exc.message, exc.headers
    for cls, status in ERROR_STATUS:
        if isinstance(exc, cls):
            headers = []
            if isinstance(exc, PartitionUnavailable):
                headers.append(("Retry-After", str(exc.retry_after_seconds)))
            return status, exc.code, exc.message, headers
    log.exception("unexpected error")
    return 500, "internal_error", "internal error; the details are in the server log", []


# -- content negotiation (mimerender, python-mimeparse) ----------------------

for _short, _types in (("appxml", ("application/xml", "text/xml")),
                       ("raw", ("application/octet-stream",))):
    try:
        mimerender.register_mime(_short, _types)
    except mimerender.MimeRenderException:   # module imported twice
        pass

FORMATS = {"json": "json", "xml": "appxml", "text": "txt", "raw": "raw"}
SUPPORTED_TYPES = "application/json, application/xml, text/xml, text/plain, application/octet-stream"


class _MimeRender(mimerender.WebPyMimeRender):
    """mimerender for web.py, reading ``?format=`` from the query string only.

    The stock class calls ``web.input()``, which reads the whole request body.
    """

    def _get_request_parameter(self, key, default=None):
        return web.ctx.get("kv_format") or default

    def _make_response(self, content, headers, status):
        # web.header() re-validates every value; ours are built from ASCII
        # (ETags, dates, percent-encoded keys) and hold no line breaks.
        web.ctx.status = status
        web.ctx.headers.extend(headers)
        return content


def _not_acceptable(accept, supported):
    return "text/plain; charset=utf-8", (
        "406 Not Acceptable: no representation matches Accept: %s\nsupported: %s\n"
        % (accept, SUPPORTED_TYPES))


_negotiate = _MimeRender(global_default="json", global_override_input_key="format",
                         global_not_acceptable_callback=_not_acceptable)(
    json=rep.render_json, appxml=rep.render_xml, txt=rep.render_text, raw=rep.render_raw)


def _mime() -> str:
    return web.ctx.get("mimerender_mime", "application/json")


def endpoint(method):
    """Decorate a handler method: negotiate its representation, map its errors.

    The method returns ``(payload dict, status int, headers list)``; any
    exception becomes the error payload through :func:`problem_of`.
    """
    def run(*args):
        try:
            payload, status, headers = method(*args)
        except Exception as e:           # every error gets a negotiated body
            status, code, message, headers = problem_of(e)
            payload = {"error": (status, code, message)}
        headers = list(headers)
        if _mime() == "text/plain":
            headers.append(("Content-Type", "text/plain; charset=utf-8"))
        return payload, _status(status), headers
    return _negotiate(run)


@endpoint
def _render_problem(exc):
    raise exc


# -- request parsing ------------------------------------------------------

def query() -> dict:
    """The query string as a dict (last value wins), decoded as strict UTF-8.

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
    """The request's media type, lower case, without parameters ("" if none)."""
    content_type = web.ctx.env.get("CONTENT_TYPE", "").strip()
    if not content_type:
        return ""
    try:
        kind, sub, _ = mimeparse.parse_mime_type(content_type)
    except mimeparse.MimeTypeParseException:
        raise HTTPProblem(415, "unsupported_media_type",
                          "Content-Type %r cannot be parsed" % content_type) from None
    return "%s/%s" % (kind.lower(), sub.lower())


def read_write_request(settings, with_key: bool):
    """Parse a PUT/POST body into (key or None, value bytes, ttl seconds or None).

    The body format follows Content-Type (API.md "Request bodies").

    :raises HTTPProblem: 415 for an unsupported Content-Type.
    :raises InvalidRequest, InvalidKey, ValueTooLarge: for bad bodies.
    """
    media = request_media_type()
    limit = settings.max_value_bytes
    if media in ("", "text/plain", "application/octet-stream"):
        fields = {"value": read_body(limit, "value")}
        if with_key and "key" in query():
            fields["key"] = query()["key"]
    elif media in rep.STRUCTURED_TYPES:
        fields = rep.parse_record_body(media, read_body(rep.structured_limit(limit)))
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
    ttl = rep.parse_ttl(fields["ttl"]) if fields.get("ttl") is not None else None
    key = None
    if with_key:
        if fields.get("key") is None:
            raise InvalidRequest("the body has no key")
        key = rep.key_bytes(fields["key"])
    return key, value, ttl


def write_condition(create_only=False) -> Condition:
    """The Condition of this request's If-Match / If-None-Match headers."""
    env = web.ctx.env
    if_match = env.get("HTTP_IF_MATCH")
    if_none_match = env.get("HTTP_IF_NONE_MATCH")
    return Condition(rep.etag_list(if_match) if if_match is not None else None,
                     rep.etag_list(if_none_match) if if_none_match is not None else None,
                     create_only)


def path_key() -> bytes:
    """The key of /keys/{key}, as bytes, percent-decoded exactly once.

    Servers disagree on ``%2F`` in PATH_INFO (gunicorn decodes it, cheroot
    keeps it), so the raw request target is decoded here when the server
    passes it (REQUEST_URI, RAW_URI); else PATH_INFO, latin-1 per PEP 3333.
    """
    env = web.ctx.env
    script = env.get("SCRIPT_NAME", "").encode("latin-1")
    raw = env.get("REQUEST_URI") or env.get("RAW_URI")
    if raw:
        target = raw.split("?", 1)[0]
        if "://" in target:                       # absolute-form request target
            target = "/" + target.split("://", 1)[1].partition("/")[2]
        path = urllib.parse.unquote_to_bytes(target)
    else:
        path = script + env.get("PATH_INFO", "").encode("latin-1", "replace")
    return path[len(script) + len(b"/keys/"):]


@functools.lru_cache(maxsize=4096)
def http_date(seconds: int) -> str:
    """IMF-fixdate of a Unix time in seconds (RFC 9110 section 5.6.7)."""
    return formatdate(seconds, usegmt=True)


def record_headers(record, partition):
    return [("ETag", record.etag), ("Last-Modified", http_date(record.modified_us // 1_000_000)),
            ("X-Partition", partition)]


def check_representable(value: bytes) -> None:
    """Refuse, before any write, an answer the negotiated type cannot carry
    (API.md: a 406 never follows a committed write).

    :raises HTTPProblem: 406 when the value is not UTF-8 and text/plain was asked for.
    """
    if not rep.representable(_mime(), value):
        raise HTTPProblem(406, "not_acceptable", "the value is not UTF-8 text; ask for "
                          "application/octet-stream or application/json")


def record_response(record, partition, status):
    """The (payload, status, headers) of a response carrying one record.

    :raises HTTPProblem: 406 when the negotiated type cannot carry this value.
    """
    check_representable(record.value)
    return {"record": record}, status, record_headers(record, partition)


def _not_modified(record) -> bool:
    """RFC 9110 section 13.1.2 and 13.1.3 for GET/HEAD."""
    env = web.ctx.env
    if_none_match = env.get("HTTP_IF_NONE_MATCH")
    if if_none_match is not None:
        tags = rep.etag_list(if_none_match)
        return tags == "*" or weak_match(record.etag, tags)
    since = env.get("HTTP_IF_MODIFIED_SINCE")
    if since:
        try:
            return record.modified_us // 1_000_000 <= int(parsedate_to_datetime(since).timestamp())
        except (TypeError, ValueError, IndexError):
            return False      # an invalid date is ignored (RFC 9110 section 13.1.3)
    return False


# -- resources ------------------------------------------------------------

class KeyResource:
    """/keys/{key}: GET, HEAD, PUT, DELETE of one key."""

    @endpoint
    def GET(self, _):
        record, partition = web.ctx.store.get(DEFAULT_BUCKET, path_key())
        if _not_modified(record):
            return {"empty": True}, 304, record_headers(record, partition)
        return record_response(record, partition, 200)

    @endpoint
    def PUT(self, _):
        key = path_key()
        store = web.ctx.store
        condition = write_condition()
        _, value, ttl = read_write_request(store.settings, with_key=False)
        check_representable(value)
        record, created, partition = store.put(DEFAULT_BUCKET, key, value, ttl, condition)
        return record_response(record, partition, 201 if created else 200)

    @endpoint
    def DELETE(self, _):
        _, partition = web.ctx.store.delete(DEFAULT_BUCKET, path_key(), write_condition())
        return {"empty": True}, 204, [("X-Partition", partition)]


class KeyList:
    """/keys: GET, HEAD (listing) and POST (create a new key)."""

    @endpoint
    def GET(self):
        if _mime() == "application/octet-stream":
            raise HTTPProblem(406, "not_acceptable",
                              "a listing has no application/octet-stream representation")
        q = query()
        values = q.get("values", "false")
        if values not in ("true", "false"):
            raise InvalidRequest("values must be true or false")
        limit = q.get("limit", "100")
        if not re.fullmatch(r"[0-9]{1,4}", limit) or not 1 <= int(limit) <= 1000:
            raise InvalidRequest("limit must be a whole number from 1 to 1000")
        listing = web.ctx.store.list(DEFAULT_BUCKET, q.get("prefix", "").encode("utf-8"),
                                     q.get("delimiter", "").encode("utf-8"),
                                     q.get("cursor") or None, int(limit), values == "true")
        headers = []
        if listing.next:
            args = dict(q, cursor=listing.next)
            headers.append(("Link", '</keys?%s>; rel="next"' % urllib.parse.urlencode(args)))
        if listing.unavailable:
            headers.append(("X-Partitions-Unavailable", ", ".join(listing.unavailable)))
        return {"listing": listing}, 200, headers

    @endpoint
    def POST(self):
        store = web.ctx.store
        key, value, ttl = read_write_request(store.settings, with_key=True)
        check_representable(value)
        record, _, partition = store.put(DEFAULT_BUCKET, key, value, ttl, Condition(create_only=True))
        payload, status, headers = record_response(record, partition, 201)
        headers.append(("Location", "/keys/" + urllib.parse.quote(key, safe="")))
        return payload, status, headers


class Batch:
    """/batch: POST many reads and writes in one request."""

    @endpoint
    def POST(self):
        store = web.ctx.store
        media = request_media_type()
        if media not in ("application/json", "application/xml", "text/xml"):
            raise HTTPProblem(415, "unsupported_media_type",
                              "POST /batch takes application/json or application/xml")
        if _mime() not in ("application/json", "application/xml", "text/xml"):
            raise HTTPProblem(406, "not_acceptable", "a batch answer is JSON or XML")
        ops = rep.parse_batch_body(media, read_body(store.settings.max_batch_bytes))
        results = store.batch(DEFAULT_BUCKET, ops)
        return {"batch": [op_result(op, result) for op, result in zip(ops, results)]}, 200, []


def op_result(op, result):
    """(status, record or None, error tuple or None) of one batch op's result."""
    if isinstance(result, Exception):
        status, code, message, _ = problem_of(result)
        return status, None, (status, code, message)
    if op["op"] == "get":
        return 200, result, None
    if op["op"] == "delete":
        return 204, None, None
    record, created = result
    return (201 if created else 200), record, None


class Health:
    """/health: 200 when every partition answers, else 503."""

    @endpoint
    def GET(self):
        report = web.ctx.store.health()
        down = [name for name, _, reason in report if reason]
        headers = [("Retry-After", "2")] if down else []
        return {"health": report}, 503 if down else 200, headers


class Unknown:
    """Any other path: 404."""

    @endpoint
    def GET(self, path):
        raise HTTPProblem(404, "not_found", "no resource at /%s" % path)

    HEAD = PUT = POST = DELETE = GET


# (?s:.*) so that a key holding a newline still reaches KeyResource and gets its 400.
# web.py anchors each pattern and tries them in order: the busiest comes first.
URLS = ("/keys/((?s:.*))", "KeyResource", "/keys", "KeyList", "/batch", "Batch",
        "/health", "Health", "/((?s:.*))", "Unknown")


def _processor(store):
    """Per request: attach the store, validate ?format=, turn web.py's own
    errors (405 from a missing method) into negotiated bodies, set
    Content-Length and drop the body of HEAD, 204 and 304 responses."""
    def process(handler):
        ctx = web.ctx
        ctx.store = store
        try:
            fmt = query().get("format")
            if fmt is not None and fmt not in FORMATS:
                status = 406 if fmt == "html" else 400
                raise HTTPProblem(status, "bad_format" if status == 400 else "not_acceptable",
                                  "format must be one of %s" % ", ".join(FORMATS))
            ctx.kv_format = FORMATS.get(fmt)
            body = handler()
        except web.HTTPError:
            allow = [v for k, v in ctx.headers if k.lower() == "allow"]
            if allow and "GET" in allow[0].split(", "):   # web.py omits the implied HEAD
                allow = [allow[0].replace("GET", "GET, HEAD", 1)]
            status = int(ctx.status.split()[0])
            ctx.headers = []
            body = _render_problem(HTTPProblem(
                status, "method_not_allowed" if status == 405 else "not_found",
                "%s is not allowed here" % ctx.method if status == 405 else "not found",
                [("Allow", allow[0])] if allow else []))
        except DatastoreError as e:          # raised before a handler ran
            ctx.kv_format = None
            ctx.headers = []
            body = _render_problem(e)
        if isinstance(body, str):
            body = body.encode("utf-8")
        body = body or b""
        code = ctx.status[:3]
        if code in ("204", "304"):
            ctx.headers = [(k, v) for k, v in ctx.headers if k.lower() != "content-type"]
            body = b""
        else:
            ctx.headers.append(("Content-Length", str(len(body))))
        return b"" if ctx.method == "HEAD" else body
    return process


def _whole_body(app):
    """WSGI middleware: answer with a one-item list (web.py returns a generator),
    which servers such as granian send in one write without iterating."""
    def whole(environ, start_response):
        return [b"".join(app(environ, start_response))]
    return whole


def create_application(config_path=None, store=None):
    """Build the WSGI application.

    :param str config_path: configuration file (default ``$KV_CONFIG`` or
        configuration.cfg).
    :param Datastore store: serve this datastore instead of loading one.
    :returns: a WSGI callable.
    :raises ConfigurationError: for a bad configuration.
    """
    if store is None:
        store = Datastore.from_config(config_path)
    for name in store.names:
        log.info("%s: %s", name, store.partitions[name].describe())
    log.info("replicas = %d, max_value_bytes = %d", store.replicas, store.settings.max_value_bytes)
    app = web.application(URLS, {"KeyList": KeyList, "KeyResource": KeyResource, "Batch": Batch,
                                 "Health": Health, "Unknown": Unknown}, autoreload=False)
    app.add_processor(_processor(store))
    wsgi = app.wsgifunc(_whole_body)
    wsgi.store = store
    return wsgi


def main(argv=None) -> int:
    """``python controller.py [HOST:]PORT``: serve with web.py's server (cheroot)."""
    argv = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    listen = argv[0] if argv else "8080"
    host, _, port = listen.rpartition(":")
    if not port.isdigit():
        print("usage: python controller.py [HOST:]PORT", file=sys.stderr)
        return 2
    store = open_store(None)
    if store is None:
        return 2
    server = web.httpserver.WSGIServer((host or "0.0.0.0", int(port)),
                                       create_application(store=store))
    log.info("serving on http://%s:%s/", host or "0.0.0.0", port)
    try:
        server.start()
    except KeyboardInterrupt:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
