"""This module provides the service's Prometheus metrics (API.md "Metrics"),
through ``prometheus_client``, and the calls that record them.

A leaf: it imports nothing of this project, so the HTTP layer, the auth
code and the storage engines all record through it.

Multiprocess mode: when ``PROMETHEUS_MULTIPROC_DIR`` is set in the
environment before this module is first imported (``python -m kv.serve``
sets it, after emptying the directory, before the server starts its
workers), every worker writes its counts to its own memory-mapped files
there and :func:`exposition` sums the files of every worker, dead ones
included (a counter never goes back).  Without it (``python controller.py``,
one process) the counts live in this process's :data:`REGISTRY`.

Recording is off until :func:`enable` (``create_application`` calls it when
``[metrics] enabled = true``): a command such as ``sync.py`` records
nothing.  Off, a recording call costs one test of a module global.
Label children are looked up once and kept in plain dicts (no lock beyond
prometheus_client's own per value).
"""

import glob
import os
from typing import Callable, Dict, Iterable, Optional, Tuple

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import choose_encoder
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from kv.processes import alive

__all__ = ["MULTIPROCESS", "REGISTRY", "enable", "enabled", "observe_request", "observe_query",
           "count_partition_error", "count_auth", "exposition", "prepare_directory",
           "mark_dead_workers", "ENV"]

#: The environment variable of prometheus_client's multiprocess mode.
ENV = "PROMETHEUS_MULTIPROC_DIR"
#: True when this process writes its counts to the files of ``$PROMETHEUS_MULTIPROC_DIR``.
MULTIPROCESS = bool(os.environ.get(ENV))

prometheus_client.disable_created_metrics()     # no *_created series (not in API.md)

#: This process's metrics (single-process mode answers from it).
REGISTRY = CollectorRegistry(auto_describe=False)

#: Request durations, seconds: a GET served from memory takes ~0.3 ms, one
#: waiting on a partition's timeout 1 s and more.
REQUEST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                   2.5, 5.0, 10.0)
#: Query (statement or transaction) durations, seconds.
QUERY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                 0.25, 0.5, 1.0, 2.5)

HTTP_REQUESTS = Counter("kv_http_requests", "HTTP requests answered, by method, route "
                        "template and status code", ("method", "route", "code"),
                        registry=REGISTRY)
HTTP_DURATION = Histogram("kv_http_request_duration_seconds", "Time from the request's "
                          "dispatch to its answer's body, by method and route template",
                          ("method", "route"), buckets=REQUEST_BUCKETS, registry=REGISTRY)
PARTITION_QUERY = Histogram("kv_partition_query_duration_seconds", "Time of one use of a "
                            "partition's database (a query, or a transaction to its commit), "
                            "connection checkout included, by partition and operation "
                            "(read, scan, write, ping, state, schema)", ("partition", "op"),
                            buckets=QUERY_BUCKETS, registry=REGISTRY)
PARTITION_ERRORS = Counter("kv_partition_errors", "Failed uses of a partition's database, by "
                           "kind: down (unreachable or timed out), busy (pool full, lock wait, "
                           "statement timeout), failed (statement refused), retry (a lost race, "
                           "tried again), skipped (failed fast while marked down)",
                           ("partition", "kind"), registry=REGISTRY)
AUTH_REQUESTS = Counter("kv_auth_requests", "Requests authenticated, by scheme (none, basic, "
                        "bearer, other) and result (anonymous, ok, invalid, error)",
                        ("scheme", "result"), registry=REGISTRY)

#: HTTP methods recorded by name; any other is recorded as ``other``.
METHODS = frozenset(("GET", "HEAD", "PUT", "POST", "DELETE", "PATCH", "OPTIONS"))

_on = False
_requests: Dict[tuple, Callable[[float], None]] = {}
_durations: Dict[tuple, Callable[[float], None]] = {}
_queries: Dict[str, Dict[str, Callable[[float], None]]] = {}
_errors: Dict[tuple, Callable[[], None]] = {}
_auth: Dict[tuple, Callable[[], None]] = {}


def enable(on: bool = True) -> None:
    """Turn recording on (or off) in this process."""
    global _on
    _on = on


def enabled() -> bool:
    """Whether this process records."""
    return _on


def observe_request(method: str, route: str, code: str, seconds: float) -> None:
    """Record one answered request.

    :param str method: the request method (unknown ones count as ``other``).
    :param str route: the route template, e.g. ``/keys/{key}`` (never a key).
    :param str code: the status code, three digits.
    :param float seconds: its duration.
    """
    if not _on:
        return
    if method not in METHODS:
        method = "other"
    key = (method, route, code)
    inc = _requests.get(key)
    if inc is None:
        inc = _requests[key] = HTTP_REQUESTS.labels(method, route, code).inc
        if (method, route) not in _durations:
            _durations[method, route] = HTTP_DURATION.labels(method, route).observe
    inc()
    _durations[method, route](seconds)


def observe_query(partition: str, op: str, seconds: float) -> None:
    """Record one use of a partition's database (``op``: read, scan, write,
    ping, state or schema) that took ``seconds``."""
    if not _on:
        return
    ops = _queries.get(partition)
    if ops is None:
        ops = _queries.setdefault(partition, {})
    observe = ops.get(op)
    if observe is None:
        observe = ops[op] = PARTITION_QUERY.labels(partition, op).observe
    observe(seconds)


def count_partition_error(partition: str, kind: str) -> None:
    """Count one failed use of a partition (``kind``: down, busy, failed,
    retry or skipped)."""
    if not _on:
        return
    inc = _errors.get((partition, kind))
    if inc is None:
        inc = _errors[(partition, kind)] = PARTITION_ERRORS.labels(partition, kind).inc
    inc()


def count_auth(scheme: str, result: str) -> None:
    """Count one authentication (``scheme``: none, basic, bearer or other;
    ``result``: anonymous, ok, invalid or error)."""
    if not _on:
        return
    inc = _auth.get((scheme, result))
    if inc is None:
        inc = _auth[(scheme, result)] = AUTH_REQUESTS.labels(scheme, result).inc
    inc()


class _Collectors:
    """Several collectors seen as one registry by the encoders."""

    def __init__(self, collectors):
        self.collectors = collectors

    def collect(self):
        for collector in self.collectors:
            yield from collector.collect()


def exposition(accept: Optional[str], extra: Iterable = ()) -> Tuple[bytes, str]:
    """The body and Content-Type of a scrape: what the ``extra`` collectors
    (objects with ``collect()``, computed now) yield, then this node's
    counts (every worker's, in multiprocess mode).

    :param str accept: the request's Accept header: OpenMetrics when it asks
        for ``application/openmetrics-text``, else the text format 0.0.4
        (prometheus_client's own negotiation).
    :returns: (body bytes, Content-Type).
    """
    encoder, content_type = choose_encoder(accept or "")
    base = MultiProcessCollector(None) if MULTIPROCESS else REGISTRY
    # The extra collectors first: what their queries count (a ping's time,
    # a partition's error) is then in this scrape's counts already.
    return encoder(_Collectors(list(extra) + [base])), content_type


def prepare_directory(path: str) -> str:
    """Create ``path`` (and its parents) if needed and delete the ``*.db``
    files of an earlier run in it (prometheus_client's multiprocess mode
    requires an empty directory before the workers start; other files are
    left alone, so a mistaken path loses nothing else).

    :returns: the absolute path.
    :raises OSError: when it cannot be created or emptied.
    """
    path = os.path.abspath(path)
    os.makedirs(path, exist_ok=True)
    for name in glob.glob(os.path.join(path, "*.db")):
        os.remove(name)
    return path


def mark_dead_workers(path: Optional[str] = None) -> int:
    """Tell prometheus_client about worker processes of this directory that
    have died (``mark_process_dead``: their live gauges stop counting; their
    counters and histograms stay in the sums).  Called when a worker
    starts, so a respawned worker sweeps up after the one it replaces
    (granian has no hook when a worker dies; gunicorn's ``child_exit`` can
    call :func:`mark_process_dead` directly).

    :param str path: the directory (default ``$PROMETHEUS_MULTIPROC_DIR``).
    :returns: how many dead processes were found.
    """
    path = path or os.environ.get(ENV)
    if not path:
        return 0
    dead = set()
    for name in glob.glob(os.path.join(path, "*.db")):
        pid = os.path.basename(name)[:-3].rpartition("_")[2]
        if pid.isdigit() and not alive(int(pid)):
            dead.add(int(pid))
    for pid in dead:
        mark_process_dead(pid, path)
    return len(dead)
