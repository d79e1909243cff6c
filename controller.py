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
import sys
import time
import urllib.parse

import web

from datastore import Datastore, open_store
from kv.auth.directory import Directory
from kv.errors import InvalidRequest
from kv.http import admin, devserver
from kv.http.application import Application
from kv.http.monitoring import Metrics, RouteTable, request_observer
from kv.http.openapi import OpenAPIDocument
from kv.http.pages import Home, deleted_answer
from kv.http.html import listing_delimiter
from kv.http.htmlforms import read_form
from kv.http.access import OPEN, Authenticator, refuse_cross_site
from kv.http.bodies import BATCH_TYPES, parse_batch_body
from kv.http.changes import Changes
from kv.http.conditional import check_read_condition, not_modified, record_headers, write_condition
from kv.http.errors import CLIENT_ERRORS, HTTPProblem, problem_of
from kv.http.negotiation import check_accept, endpoint, format_override, render_problem, require
from kv.http.representations import BATCH, DOCUMENT, EMPTY, HEALTH, LISTING, RECORD, record_json
from kv.http.paging import page_args, paged, values_arg
from kv.http.routing import admin_only, check_parameters, no_method
from kv.http.request import (path_bucket_key, path_parts, public_bucket, query, read_body,
                             read_write_request, request_media_type)
from kv.records import Condition, check_key

web.config.debug = False          # web.py turns it on under gunicorn otherwise (STYLE.md 1f)
log = logging.getLogger("kv.controller")
READ_METHODS = ("GET", "HEAD")


def record_response(record, partition, status):
    """The (payload, status, headers) of a response carrying one record.

    :raises HTTPProblem: 406 when the negotiated type cannot carry this value.
    """
    require(RECORD, record.value)
    return {RECORD: record}, status, record_headers(record, partition)


# -- resources ------------------------------------------------------------

class KeyResource:
    """/keys/{key} and /buckets/{bucket}/keys/{key}: GET, HEAD, PUT, DELETE of one key."""

    PARAMETERS = {"GET": (), "PUT": ("ttl",), "DELETE": ()}

    @staticmethod
    def guard(access, method):
        bucket, key = path_bucket_key()
        access.require("read" if method in READ_METHODS else "write", bucket, check_key(key))

    @endpoint(RECORD)
    def GET(self, *_):
        record, partition = web.ctx.store.get(*path_bucket_key())
        check_read_condition(record)
        if not_modified(record):
            return {EMPTY: True}, 304, record_headers(record, partition)
        return record_response(record, partition, 200)

    @endpoint(RECORD)
    def PUT(self, *_):
        bucket, key = path_bucket_key()
        store = web.ctx.store
        condition = write_condition()
        _, value, ttl = read_write_request(store.settings, with_key=False)
        require(RECORD, value)
        record, created, partition = store.put(bucket, key, value, ttl, condition)
        return record_response(record, partition, 201 if created else 200)

    @endpoint(EMPTY)
    def DELETE(self, *_):
        _, partition = web.ctx.store.delete(*path_bucket_key(), write_condition())
        return {EMPTY: True}, 204, [("X-Partition", partition)]

    @endpoint(RECORD)
    def POST(self, *_):
        """An HTML form's PUT or DELETE (API.md "HTML pages"; kv.http.htmlforms):
        405 without a valid ``_method`` (POST is in neither PARAMETERS nor
        Allow), 403 without the caller's ``_csrf``; the guard has required
        ``write``, as for PUT and DELETE."""
        bucket, key = path_bucket_key()
        store = web.ctx.store
        form = read_form(store.settings, web.ctx.access)
        if form.method == "DELETE":
            require(DOCUMENT)
            _, partition = store.delete(bucket, key, form.condition)
            return deleted_answer(bucket, key), 200, [("X-Partition", partition)]
        require(RECORD, form.value)
        record, created, partition = store.put(bucket, key, form.value, form.ttl, form.condition)
        return record_response(record, partition, 201 if created else 200)


class KeyList:
    """/keys and /buckets/{bucket}/keys: GET, HEAD (listing) and POST (create a new key)."""

    PARAMETERS = {"GET": ("prefix", "delimiter", "limit", "cursor", "values"),
                  "POST": ("key", "ttl")}

    @staticmethod
    def guard(access, method):
        bucket, _ = path_bucket_key()
        if method in READ_METHODS:
            access.require_some("list", bucket.decode(), query().get("prefix", "").encode())

    @endpoint(LISTING)
    def GET(self, *_):
        q = query()
        values = values_arg()
        bucket, _ = path_bucket_key()
        limit, cursor = page_args()
        access = web.ctx.access
        visible = None
        if access.enabled:
            def listable(name, is_prefix):        # a folder: some key under it may be listable
                if is_prefix:
                    return access.may_some("list", bucket.decode(), name)
                return access.may("list", bucket, name)
            visible = listable
        listing = web.ctx.store.list(bucket, q.get("prefix", "").encode("utf-8"),
                                     listing_delimiter().encode("utf-8"),
                                     cursor, limit, values, visible)
        if access.enabled and listing.values:
            listing.items = [r if access.may("read", bucket, r.key) else r._replace(value=None)
                             for r in listing.items]
        listing.next, headers = paged(listing.next, listing.unavailable)
        return {LISTING: listing}, 200, headers

    @endpoint(RECORD)
    def POST(self, *_):
        store = web.ctx.store
        bucket, _ = path_bucket_key()
        key, value, ttl = read_write_request(store.settings, with_key=True)
        web.ctx.access.require("write", bucket, check_key(key))
        require(RECORD, value)
        record, _, partition = store.put(bucket, key, value, ttl, Condition(create_only=True))
        payload, status, headers = record_response(record, partition, 201)
        headers.append(("Location", urllib.parse.quote(web.ctx.path) + "/"
                        + urllib.parse.quote(key, safe="")))
        return payload, status, headers


class Batch:
    """/batch: POST many reads and writes in one request, each op in its own
    bucket (``default`` unless it names one) and with its own permission."""

    PARAMETERS = {"POST": ()}

    @staticmethod
    def guard(access, _):
        if not access.caller.authenticated:    # anonymous: only where ``anyone`` may act
            access.require_some("read", "*", b"")

    @endpoint(BATCH, takes=BATCH_TYPES)
    def POST(self):
        store = web.ctx.store
        access = web.ctx.access
        ops = parse_batch_body(request_media_type(), read_body(store.settings.max_batch_bytes))
        results = [None] * len(ops)
        groups: dict = {}
        for i, op in enumerate(ops):
            try:
                public_bucket(op["bucket"])
                access.require("read" if op["op"] == "get" else "write", op["bucket"],
                               check_key(op["key"]))
                groups.setdefault(op["bucket"], []).append(i)
            except CLIENT_ERRORS as e:
                results[i] = e
        for bucket, indexes in groups.items():
            for i, result in zip(indexes, store.batch(bucket, [ops[i] for i in indexes])):
                results[i] = result
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


class BucketList:
    """/buckets: GET the buckets holding a live key that the caller may list in."""

    PARAMETERS = {"GET": ("prefix", "limit", "cursor")}

    @staticmethod
    def guard(access, _):
        access.require_some("list", "*", b"")

    @endpoint(DOCUMENT)
    def GET(self):
        limit, cursor = page_args()
        access = web.ctx.access
        page = web.ctx.store.buckets(query().get("prefix", "").encode("utf-8"), cursor, limit,
                                     lambda bucket: access.may_some("list", bucket.decode(), b""))
        sealed, headers = paged(page.next, page.unavailable)
        return {DOCUMENT: {"items": [{"bucket": b.decode()} for b in page.items],
                           "next": sealed}}, 200, headers


class Across:
    """/buckets/{app}:*/keys/{key}: GET one key in every bucket of an app
    (``?aggregate=`` count, sum, min, max or avg answers one figure)."""

    PARAMETERS = {"GET": ("aggregate", "limit", "cursor")}

    @staticmethod
    def guard(access, _):
        app, key = across_target()
        access.require_some("read", app.decode() + ":*", key)

    @endpoint(DOCUMENT)
    def GET(self, *_):
        app, key = across_target()
        access = web.ctx.access

        def readable(bucket):
            return access.may("read", bucket, key)
        function = query().get("aggregate")
        store = web.ctx.store
        if function is not None:
            if function not in ("count", "sum", "min", "max", "avg"):
                raise InvalidRequest("aggregate must be count, sum, min, max or avg")
            result = store.aggregate(app, key, function, readable)
            headers = ([("X-Partitions-Unavailable", ", ".join(result.unavailable))]
                       if not result.complete else [])
            value = result.value
            if value is not None and not isinstance(value, int):     # a Decimal
                value = int(value) if value == value.to_integral_value() else float(value)
            return {DOCUMENT: {"aggregate": function, "value": value,
                               "count": result.count, "non_numeric": result.non_numeric,
                               "complete": result.complete}}, 200, headers
        limit, cursor = page_args()
        page = store.read_across(app, key, cursor, limit, readable)
        sealed, headers = paged(page.next, page.unavailable)
        return {DOCUMENT: {"items": [{"bucket": b.decode(), "record": record_json(r)}
                                     for b, r in page.items], "next": sealed}}, 200, headers


def across_target():
    """(app id bytes, key bytes) of /buckets/{app}:*/keys/{key}.

    :raises InvalidBucket: for a bad app id; InvalidKey for a bad key.
    """
    selector, key = path_parts()
    app = selector[:-len(b":*")]
    public_bucket(app)
    if b":" in app:
        raise InvalidRequest("the application id cannot hold ':'")
    return app, check_key(key)


class Health:
    """/health: 200 when every partition answers, else 503.  With
    authentication on, the body says only ok or degraded (API.md), as the
    document ``{"status": "ok"}``."""

    PARAMETERS = {"GET": ()}

    @endpoint(HEALTH)
    def GET(self):
        report = web.ctx.store.health()
        down = [name for name, _, reason in report if reason]
        headers = [("Retry-After", "2")] if down else []
        if web.ctx.kv_auth:                   # the status only, no partition details
            return {DOCUMENT: {"status": "degraded" if down else "ok"}}, \
                503 if down else 200, headers
        return {HEALTH: report}, 503 if down else 200, headers


class Unknown:
    """Any other path: 404."""

    @staticmethod
    def guard(access, method):
        pass

    @endpoint()
    def GET(self, path):
        raise HTTPProblem(404, "not_found", "no resource at /%s" % path)

    HEAD = PUT = POST = DELETE = GET


# (?s:.*) so that a key holding a newline still reaches KeyResource and gets its 400.
# web.py anchors each pattern and tries them in order: the busiest comes first.
URLS = ("/keys/((?s:.*))", KeyResource, "/keys", KeyList,
        r"/buckets/([^/]*):\*/keys/((?s:.*))", Across,
        "/buckets/([^/]*)/keys/((?s:.*))", KeyResource, "/buckets/([^/]*)/keys", KeyList,
        "/buckets/([^/]*)/changes", Changes, "/changes", Changes,
        "/buckets", BucketList, "/batch", Batch, "/health", Health, "/metrics", Metrics,
        "/openapi.json", OpenAPIDocument, "/", Home) + admin.URLS + (
        "/((?s:.*))", Unknown)
#: Path -> (route class, route template such as ``/keys/{key}``): the
#: templates label the metrics and the access log (kv.http.monitoring).
_ROUTES = RouteTable(URLS, catch_all=Unknown)


def _processor(store, authenticate, observe=None):
    """Per request: attach the store, validate ?format=, authenticate the
    caller and run the route's guard (kv.http.access; with authentication
    off, everything is allowed), refuse unknown query parameters and
    malformed Accept headers, answer a method the route lacks (405, or 404
    on an unknown path), set Content-Length and drop the
    body of HEAD, 204 and 304 responses; then ``observe`` (when given,
    kv.http.monitoring.request_observer) counts the request and logs it.
    ``authenticate`` is the :class:`~kv.http.access.Authenticator`, None
    with authentication off."""
    def process(handler):
        started = time.perf_counter()
        ctx = web.ctx
        route = ctx.kv_route
        ctx.store = store
        ctx.access = OPEN
        ctx.kv_auth = authenticate is not None
        try:
            ctx.kv_format = format_override(query().get("format"))
            if ctx.kv_format is None:
                check_accept(ctx.env.get("HTTP_ACCEPT"))
            check_parameters(route, ctx.method)
            if authenticate is not None and ctx.path != "/health":
                ctx.access = authenticate(ctx.env.get("HTTP_AUTHORIZATION"))
                refuse_cross_site(ctx.access, ctx.method, ctx.env)
                getattr(route, "guard", admin_only)(ctx.access, ctx.method)
            body = handler()
        except web.NoMethod:                 # web.py's 405: the class lacks the method
            ctx.headers = []
            body = render_problem(no_method(route, ctx.method))
        except web.HTTPError:                # web.py's 500 for an exception it logged
            ctx.headers = []
            body = render_problem(HTTPProblem(500, "internal_error",
                                              "internal error; the details are in the server log"))
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
        if ctx.method == "HEAD":
            body = b""
        if observe is not None:
            observe(ctx, ctx.kv_template, code, len(body), started)
        return body
    return process


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
    directory = None
    if store.settings.auth.enabled:
        directory = Directory(store, store.settings.auth)
        log.info("authentication is on; users, tokens and rules refresh every %d s",
                 store.settings.auth.refresh_seconds)
    else:
        log.warning("authentication is OFF ([auth] enabled = false): every client may read, "
                    "write and delete every key; turn it on before the service is reachable "
                    "from a network that is not fully trusted")
    app = Application(URLS, _ROUTES, _processor(
        store, directory and Authenticator(directory),
        request_observer(store.settings.metrics, directory is not None)))
    wsgi = app.wsgifunc()
    wsgi.store = store
    return wsgi


def main(argv=None) -> int:
    """``python controller.py [HOST:]PORT``: serve with web.py's server
    (cheroot, :mod:`kv.http.devserver`).

    :returns: the exit status (2 for bad arguments or configuration, 1 for a
        port that cannot be bound).
    """
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
    status = devserver.serve(create_application(store=store), host or "0.0.0.0", int(port))
    store.close()
    return status


if __name__ == "__main__":
    sys.exit(main())
