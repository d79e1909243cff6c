"""The cost of authentication, of the metrics and of the access log in
``make bench``, measured in paired runs: the same data served at once by
four services (``python -m kv.serve``, the production start command:
granian, 2 workers x 16 threads), one per variant, each on its own port,
and wrk run against them in turn, in ABBA order (the order reverses every
round), so that a drift of the machine (MariaDB flushing after the write
workloads, another process) falls on every variant alike.  The figure of a
variant is the median over the rounds.

| variant | [auth] | [metrics] | access log |
| --- | --- | --- | --- |
| metrics off | off | enabled = false | off |
| base | off | on | off |
| access log | off | on | to a file |
| auth on | on | on | off |

Budgets (issues 12 and 13): authentication at most 20 us of extra service
CPU per request and 5% fewer requests per second than ``base``; metrics on
(``base``) at most 5% fewer than ``metrics off``.
"""

import os
import statistics
import subprocess
import sys

import requests

import dbservers  # noqa: E402  (test helper, on sys.path through bench.py)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PASSWORD = "bench-password"
#: (name, the [metrics] options, the [auth] options); %(log)s is a file.
VARIANTS = (
    ("metrics off", "enabled = false\naccess_log = off\n", ""),
    ("base", "enabled = true\naccess_log = off\n", ""),
    ("access log", "enabled = true\naccess_log = %(log)s\n", ""),
    ("auth on", "enabled = true\naccess_log = off\n", "enabled = true\n"),
)


def _bootstrap(url, config):
    """Make an app token and a user allowed read and write on ``default``.

    :returns: (the app's bearer header, the user's Basic header).
    """
    admin = dbservers.bootstrap_admin(config, "bench", again=True)
    session = requests.Session()
    session.headers["Authorization"] = "Bearer " + admin
    session.put(url + "/auth/apps/bench", json={"description": "make bench"}).raise_for_status()
    session.put(url + "/auth/users/reader", json={"password": PASSWORD}).raise_for_status()
    for principal in ("app:bench", "user:reader"):
        session.post(url + "/auth/rules", json={
            "effect": "allow", "principal": principal, "verbs": ["read", "write", "list"],
            "bucket": "default", "keys": "#"}).raise_for_status()
    token = session.post(url + "/auth/tokens", json={"principal": "app:bench"}).json()["token"]
    return "Bearer " + token, requests.auth._basic_auth_str("reader", PASSWORD)


def _median_row(name, rows):
    """One table row: the medians of ``rows`` (one per round)."""
    return {"workload": name, "rate": statistics.median(r["rate"] for r in rows),
            "p50": statistics.median(r["p50"] for r in rows),
            "p99": statistics.median(r["p99"] for r in rows),
            "errors": sum(r["errors"] for r in rows),
            "cpu": {g: statistics.median(r["cpu"][g] for r in rows) for g in rows[0]["cpu"]}}


def variant_runs(table, config, paths, seconds, rounds, measure, children, wait):
    """Start one service per variant, run GET and PUT against each in ABBA
    order for ``rounds`` rounds (and GET with cached Basic credentials on
    ``auth on``), and append one median row per (variant, workload) to
    ``table``, named ``service GET, base`` and so on."""
    work = os.path.dirname(config)
    services = []
    print("variants served at once by python -m kv.serve, measured in turn (ABBA):", flush=True)
    try:
        for name, metrics, auth_options in VARIANTS:
            port = dbservers.free_port()
            slug = name.replace(" ", "-")
            path = "%s.%s" % (config, slug)
            with open(config) as f, open(path, "w") as out:
                out.write("%s\n[metrics]\ndirectory = %s\n%s" % (
                    f.read(), os.path.join(work, "metrics-" + slug),
                    metrics % {"log": os.path.join(work, "access.log")}))
                if auth_options:
                    out.write("[auth]\n" + auth_options)
            services.append((name, "http://127.0.0.1:%d" % port, path, subprocess.Popen(
                [sys.executable, "-m", "kv.serve", "--workers", "2", "--threads", "16",
                 "127.0.0.1:%d" % port], cwd=ROOT, env=dict(os.environ, KV_CONFIG=path),
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)))
        auth = {}
        for name, url, path, process in services:
            wait(url + "/health")
            if name == "auth on":
                auth["bearer"], auth["basic"] = _bootstrap(url, path)
        found = {}
        for round_ in range(rounds):
            order = services if round_ % 2 == 0 else services[::-1]
            for verb, mode in (("GET", "get"), ("PUT", "put")):
                for name, url, _, process in order:
                    groups = {"service": lambda p=process: children(p.pid)}
                    row = measure("service %s, %s" % (verb, name), url, mode, paths, groups,
                                  seconds, 1, authorization=auth.get("bearer")
                                  if name == "auth on" else None)
                    found.setdefault(row["workload"], []).append(row)
            name, url, _, process = services[-1]
            row = measure("service GET, auth on (Basic, cached)", url, "get", paths,
                          {"service": lambda p=process: children(p.pid)}, seconds, 1,
                          authorization=auth["basic"])
            found.setdefault(row["workload"], []).append(row)
    finally:
        for _, _, _, process in services:
            process.terminate()
            process.wait()
    for name, rows in found.items():
        table.append(_median_row(name, rows))


def _cpu_us(row) -> float:
    return row["cpu"]["service"] / row["rate"] * 1e6


def _compare(by, label, verb, against) -> str:
    a, b = by["service %s, %s" % (verb, against)], by["service %s, %s" % (verb, label)]
    return "%s %+.1f%% req/s, %+.0f us CPU/request" % (
        verb, (b["rate"] / a["rate"] - 1) * 100, _cpu_us(b) - _cpu_us(a))


def variant_summary(by) -> str:
    """Three lines: auth on, metrics on and the access log, each against the
    variant without it, in req/s and service CPU per request."""
    basic = by["service GET, auth on (Basic, cached)"]
    return "\n".join((
        "auth on vs off: %s; %s; GET Basic %+.1f%% req/s, %+.0f us CPU/request" % (
            _compare(by, "auth on", "GET", "base"), _compare(by, "auth on", "PUT", "base"),
            (basic["rate"] / by["service GET, base"]["rate"] - 1) * 100,
            _cpu_us(basic) - _cpu_us(by["service GET, base"])),
        "metrics on vs off: %s; %s" % (_compare(by, "base", "GET", "metrics off"),
                                      _compare(by, "base", "PUT", "metrics off")),
        "access log on vs off: %s; %s" % (_compare(by, "access log", "GET", "base"),
                                         _compare(by, "access log", "PUT", "base"))))
