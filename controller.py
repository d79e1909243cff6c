"""This module provides the HTTP API of ../shared/API.md as a web.py application:
the URL map, the per-request processor, the handler classes and the
application factory.  The HTTP machinery lives in :mod:`kv.http`: request
parsing, conditional requests, content negotiation over the table of
representations, and the one table that turns an exception into a status.

A handler parses the path, query and headers, makes one datastore call and
returns ``(payload, status, headers)``, the payload a dict of one kind
(``{"record": record}``) that the negotiated renderer turns into bytes.

Run: ``python controller.py [HOST:]PORT`` (web.py's own server, cheroot), or in
production ``granian --interface wsgi --factory controller:create_application``
(README, "Running in production").
"""

import logging
import re
import sys
import urllib.parse

import web

from datastore import DEFAULT_BUCKET, Datastore, open_store
from kv.errors import InvalidRequest
from kv.http.bodies import BATCH_TYPES, parse_batch_body
from kv.http.conditional import not_modified, record_headers, write_condition
from kv.http.errors import CLIENT_ERRORS, HTTPProblem, problem_of
from kv.http.negotiation import endpoint, format_override, render_problem, require
from kv.http.representations import BATCH, EMPTY, HEALTH, LISTING, RECORD
from kv.http.request import path_key, query, read_body, read_write_request, request_media_type
from kv.records import Condition

web.config.debug = False          # web.py turns it on under gunicorn otherwise (STYLE.md 1f)
log = logging.getLogger("kv.controller")


def record_response(record, partition, status):
    """The (payload, status, headers) of a response carrying one record.

    :raises HTTPProblem: 406 when the negotiated type cannot carry this value.
    """
    require(RECORD, record.value)
    return {RECORD: record}, status, record_headers(record, partition)


# -- resources ------------------------------------------------------------

class KeyResource:
    """/keys/{key}: GET, HEAD, PUT, DELETE of one key."""

    @endpoint(RECORD)
    def GET(self, _):
        record, partition = web.ctx.store.get(DEFAULT_BUCKET, path_key())
        if not_modified(record):
            return {EMPTY: True}, 304, record_headers(record, partition)
        return record_response(record, partition, 200)

    @endpoint(RECORD)
    def PUT(self, _):
        key = path_key()
        store = web.ctx.store
        condition = write_condition()
        _, value, ttl = read_write_request(store.settings, with_key=False)
        require(RECORD, value)
        record, created, partition = store.put(DEFAULT_BUCKET, key, value, ttl, condition)
        return record_response(record, partition, 201 if created else 200)

    @endpoint(EMPTY)
    def DELETE(self, _):
        _, partition = web.ctx.store.delete(DEFAULT_BUCKET, path_key(), write_condition())
        return {EMPTY: True}, 204, [("X-Partition", partition)]


class KeyList:
    """/keys: GET, HEAD (listing) and POST (create a new key)."""

    @endpoint(LISTING)
    def GET(self):
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
        return {LISTING: listing}, 200, headers

    @endpoint(RECORD)
    def POST(self):
        store = web.ctx.store
        key, value, ttl = read_write_request(store.settings, with_key=True)
        require(RECORD, value)
        record, _, partition = store.put(DEFAULT_BUCKET, key, value, ttl,
                                         Condition(create_only=True))
        payload, status, headers = record_response(record, partition, 201)
        headers.append(("Location", "/keys/" + urllib.parse.quote(key, safe="")))
        return payload, status, headers


class Batch:
    """/batch: POST many reads and writes in one request."""

    @endpoint(BATCH, takes=BATCH_TYPES)
    def POST(self):
        store = web.ctx.store
        ops = parse_batch_body(request_media_type(), read_body(store.settings.max_batch_bytes))
        results = store.batch(DEFAULT_BUCKET, ops)
        return {BATCH: [op_result(op, result) for op, result in zip(ops, results)]}, 200, []


def op_result(op, result):
    """(status, record or None, error tuple or None) of one batch op's result:
    what the single-key request would have answered (API.md "Batch").

    :param dict op: an op of parse_batch_body (``op["op"]`` is get, put or delete).
    :param result: the datastore's result of that op, or the exception it raised.
    """
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

    @endpoint(HEALTH)
    def GET(self):
        report = web.ctx.store.health()
        down = [name for name, _, reason in report if reason]
        headers = [("Retry-After", "2")] if down else []
        return {HEALTH: report}, 503 if down else 200, headers


class Unknown:
    """Any other path: 404."""

    @endpoint()
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
            ctx.kv_format = format_override(query().get("format"))
            body = handler()
        except web.HTTPError:
            allow = [v for k, v in ctx.headers if k.lower() == "allow"]
            if allow and "GET" in allow[0].split(", "):   # web.py omits the implied HEAD
                allow = [allow[0].replace("GET", "GET, HEAD", 1)]
            status = int(ctx.status.split()[0])
            ctx.headers = []
            body = render_problem(HTTPProblem(
                status, "method_not_allowed" if status == 405 else "not_found",
                "%s is not allowed here" % ctx.method if status == 405 else "not found",
                [("Allow", allow[0])] if allow else []))
        except CLIENT_ERRORS as e:           # raised before a handler ran
            ctx.kv_format = None
            ctx.headers = []
            body = render_problem(e)
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
