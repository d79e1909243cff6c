"""This module provides GET /metrics (API.md "Metrics") and the route
templates that label every request's counts and access-log line.

- :class:`RouteTable` matches a path to its route class and its template
  (``/buckets/{bucket}/keys/{key}``), both derived from the controller's
  URL map, the one list of routes: a new route gets its template with no
  second list to keep in step.
- :class:`StoreCollector` computes at scrape time what no request counts:
  partition health (``kv_partition_up``) and sync's progress
  (``kv_sync_last_pass_timestamp_seconds``, ``kv_sync_watermark_age_seconds``).
- :class:`Metrics` is the route: the text exposition format (OpenMetrics
  when Accept asks for it) of every worker's counts plus those gauges.
- :func:`request_observer` is what the controller's processor calls once
  per request: the request's counts and its access-log line.
"""

import itertools
import re
import time
from typing import Callable, List, Optional, Tuple

import web
from prometheus_client.core import GaugeMetricFamily

from kv import metrics
from kv.http.errors import HTTPProblem
from kv.http.negotiation import render_problem
from kv.metrics import exposition
from kv.metrics.accesslog import open_access_log
from kv.sync.status import sync_status

#: The ``route`` label of a path no route knows (one value, whatever the path).
UNKNOWN_ROUTE = "unknown"
#: The reserved scope (API.md "Metrics") whose ``read`` verb may scrape.
SCOPE = b"_metrics"
#: A path parameter is named after the segment before it (API.md
#: "Resources" and "Administration"); a segment not listed names ``{id}``.
_PARAMETER_OF = {"keys": "key", "buckets": "bucket", "users": "name"}
_CHOICE = re.compile(r"[A-Za-z0-9_-]+(\|[A-Za-z0-9_-]+)+")


def _parts(pattern: str) -> List[Tuple[str, str, int]]:
    """Split a web.py URL pattern into ("lit", text, 0), ("param", "", group
    number) and ("choice", "a|b", group number) parts (top-level groups
    only; a group of literal alternatives is a choice)."""
    parts, literal, i, groups = [], "", 0, 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            literal += pattern[i + 1]
            i += 2
            continue
        if c != "(":
            literal += c
            i += 1
            continue
        depth, j, inner = 1, i + 1, 0
        while depth:
            if pattern[j] == "\\":
                j += 2
                continue
            if pattern[j] == "(":
                depth += 1
                inner += pattern[j + 1] != "?"
            elif pattern[j] == ")":
                depth -= 1
            j += 1
        body = pattern[i + 1:j - 1]
        capturing = not body.startswith("?")
        groups += capturing
        if literal:
            parts.append(("lit", literal, 0))
            literal = ""
        parts.append(("choice" if _CHOICE.fullmatch(body) else "param", body, groups))
        groups += inner
        i = j
    if literal:
        parts.append(("lit", literal, 0))
    return parts


def route_templates(pattern: str) -> List[Tuple[Tuple[str, ...], str]]:
    """The templates of a URL pattern, one per combination of its choices:
    ``"/auth/(users|apps)/(.+)"`` gives ``[(("users",), "/auth/users/{name}"),
    (("apps",), "/auth/apps/{id}")]``; ``"/keys/((?s:.*))"`` gives
    ``[((), "/keys/{key}")]``.  A parameter is named after the segment
    before it (``/buckets/{bucket}``; ``{app}`` before ``:*``)."""
    parts = _parts(pattern)
    choices = [p[1].split("|") for p in parts if p[0] == "choice"]
    out = []
    for combo in itertools.product(*choices):
        text, picks = "", iter(combo)
        for n, (kind, body, _) in enumerate(parts):
            if kind == "lit":
                text += body
            elif kind == "choice":
                text += next(picks)
            else:
                segment = text.rstrip("/").rpartition("/")[2]
                following = parts[n + 1][1] if n + 1 < len(parts) else ""
                name = ("app" if segment == "buckets" and following.startswith(":*")
                        else _PARAMETER_OF.get(segment, "id"))
                text += "{%s}" % name
        out.append((combo, text))
    return out


class RouteTable:
    """Path -> (route class, route template), from a web.py URL map.

    :param tuple urls: web.py's ``(pattern, class, pattern, class, ...)``.
    :param catch_all: the class of the pattern that takes any other path:
        its template is :data:`UNKNOWN_ROUTE`.
    """

    def __init__(self, urls, catch_all=None):
        self.routes = []         # (compiled, class, {choice values: template}, choice groups)
        for i in range(0, len(urls), 2):
            pattern, route = urls[i], urls[i + 1]
            groups = tuple(g for kind, _, g in _parts(pattern) if kind == "choice")
            templates = ({(): UNKNOWN_ROUTE} if route is catch_all
                         else dict(route_templates(pattern)))
            # anchored as web.py anchors it (\Z: "$" would also match before a final newline)
            self.routes.append((re.compile(r"^%s\Z" % pattern), route, templates, groups))
        self.catch_all = catch_all

    def resolve(self, path: str) -> Tuple[Optional[type], str, Tuple[str, ...]]:
        """(the route class, its template, the pattern's groups) of ``path``:
        the first pattern that matches it, as web.py dispatches (the groups
        are the handler method's arguments); (catch_all, UNKNOWN_ROUTE, ())
        if none."""
        for pattern, route, templates, groups in self.routes:
            m = pattern.match(path)
            if m is not None:
                args = m.groups()
                if groups:
                    return route, templates[tuple(args[g - 1] for g in groups)], args
                return route, templates[()], args
        return self.catch_all, UNKNOWN_ROUTE, ()

    def match(self, path: str) -> Tuple[Optional[type], str]:
        """(the route class, its template) of ``path`` (:meth:`resolve`)."""
        return self.resolve(path)[:2]

    def templates(self) -> List[str]:
        """Every template, in URL-map order."""
        return [t for _, _, templates, _ in self.routes for t in templates.values()]


class StoreCollector:
    """The gauges computed at scrape time from ``store`` (a Datastore):
    ``kv_partition_up{partition}`` (1 when a ping answers), then, from the
    partitions that answered, ``kv_sync_last_pass_timestamp_seconds`` and
    ``kv_sync_watermark_age_seconds{partition}`` (kv.sync.status)."""

    def __init__(self, store):
        self.store = store

    def collect(self):
        up = GaugeMetricFamily("kv_partition_up", "1 when the partition answered a ping at "
                               "this scrape, else 0", labels=["partition"])
        down = set()
        for name, _, reason in self.store.health():
            up.add_metric([name], 0.0 if reason else 1.0)
            if reason:
                down.add(name)
        yield up
        status = sync_status(self.store, skip=down)
        if status.last_pass_seconds is not None:
            yield GaugeMetricFamily("kv_sync_last_pass_timestamp_seconds", "When the newest "
                                    "whole sync pass ended (Unix time, the partition's clock)",
                                    value=status.last_pass_seconds)
        ages = GaugeMetricFamily("kv_sync_watermark_age_seconds", "Seconds since sync last "
                                 "advanced the partition's watermark: its changes older than "
                                 "this are on every replica", labels=["partition"])
        for name, age in sorted(status.watermark_age_seconds.items()):
            ages.add_metric([name], age)
        yield ages


class Metrics:
    """GET /metrics: every worker's counts and the scrape-time gauges, in the
    Prometheus text format (OpenMetrics 1.0 when Accept asks for
    ``application/openmetrics-text``).  404 with ``[metrics] enabled =
    false``.  With authentication on it needs ``read`` on the reserved
    scope ``_metrics`` (a rule naming it) or ``admin``, unless ``[metrics]
    public = true``."""

    PARAMETERS = {"GET": ()}

    @staticmethod
    def guard(access, method):
        settings = web.ctx.store.settings.metrics
        if not settings.enabled or settings.public or not access.enabled:
            return
        if not access.may("read", SCOPE, b""):
            access.require_admin()          # 401 without credentials, else 403

    def GET(self, *_):
        store = web.ctx.store
        if not store.settings.metrics.enabled:       # a handler answers, never raises
            return render_problem(HTTPProblem(404, "not_found",
                                              "metrics are off ([metrics] enabled = false)"))
        body, content_type = exposition(web.ctx.env.get("HTTP_ACCEPT"), [StoreCollector(store)])
        web.ctx.status = "200 OK"
        web.ctx.headers.append(("Content-Type", content_type))
        web.ctx.headers.append(("Cache-Control", "no-store"))
        return body


def _principal(caller) -> str:
    """The access log's name of a caller: ``user:alice``, ``app:notes``,
    ``app:notes+user:alice`` (a session), ``-`` (anonymous)."""
    if caller.app is not None and caller.user is not None:
        return "app:%s+user:%s" % (caller.app, caller.user)
    if caller.user is not None:
        return "user:" + caller.user
    if caller.app is not None:
        return "app:" + caller.app
    return "-"


def request_observer(settings, auth_enabled: bool) -> Optional[Callable]:
    """Set up this process's per-request observation from the ``[metrics]``
    settings and return the function the controller's processor calls once
    per answered request, or None when both metrics and the access log are
    off.

    In multiprocess mode it first marks the dead workers of the metrics
    directory (kv.metrics.mark_dead_workers: a respawned worker sweeps up
    after the one it replaces).

    The function is ``observe(ctx, route, code, size, started)``: ``ctx``
    web.py's request context (method, access, env), ``route`` the template,
    ``code`` three digits, ``size`` the body's bytes as sent, ``started``
    the ``time.perf_counter()`` at the request's start.  It counts the
    request (``kv_http_requests_total``, ``kv_http_request_duration_seconds``)
    and queues its access-log line (kv.metrics.accesslog, written by a
    background thread).

    :param MetricsSettings settings: ``store.settings.metrics``.
    :param bool auth_enabled: whether lines name the principal.
    """
    metrics.enable(settings.enabled)
    if settings.enabled and metrics.MULTIPROCESS:
        metrics.mark_dead_workers()
    access_log = open_access_log(settings.access_log)
    counting = settings.enabled
    if not counting and access_log is None:
        return None
    record = access_log.record if access_log is not None else None
    observe_request = metrics.observe_request
    clock = time.perf_counter

    def observe(ctx, route, code, size, started):
        seconds = clock() - started
        method = ctx.method
        if counting:
            observe_request(method, route, code, seconds)
        if record is not None:
            record(method, route, code, size, seconds,
                   _principal(ctx.access.caller) if auth_enabled else None,
                   ctx.env.get("REMOTE_ADDR"))
    return observe
