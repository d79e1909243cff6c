"""The cost of the metrics and of the access log in ``make bench``: the
same data served by the production start command (``python -m kv.serve``:
granian, 2 workers x 16 threads, prometheus_client in multiprocess mode)
with ``[metrics] enabled = false`` (and no access log), with metrics on,
and with metrics and the access log (to a file) on, the three restarted in
turn for each rep so that a drift of the machine spreads over all of them.
The issue's budget: metrics on at most 5% fewer GET and PUT requests per
second than off.

Run alone (``python bench/metrics_bench.py``), it measures in-process the
time of one GET through the WSGI application on SQLite, metrics off and
on, without any server or client in the way.
"""

import os
import statistics
import subprocess
import sys
import tempfile
import timeit

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VARIANTS = (("off", "enabled = false\naccess_log = off\n"),
            ("on", "enabled = true\naccess_log = off\n"),
            ("on + access log", "enabled = true\naccess_log = %(log)s\n"))


def _row(name, rows):
    """One table row: the medians of ``rows`` (one per rep)."""
    return {"workload": name, "rate": statistics.median(r["rate"] for r in rows),
            "p50": statistics.median(r["p50"] for r in rows),
            "p99": statistics.median(r["p99"] for r in rows),
            "errors": sum(r["errors"] for r in rows),
            "cpu": {g: statistics.median(r["cpu"][g] for r in rows) for g in rows[0]["cpu"]}}


def metrics_runs(table, config, port, paths, seconds, reps, measure, children, wait):
    """Serve ``config`` with ``python -m kv.serve`` in each variant, ``reps``
    rounds, and append a GET and a PUT row per variant to ``table``
    (``service GET, metrics off`` ...)."""
    url = "http://127.0.0.1:%d" % port
    work = os.path.dirname(config)
    found = {}
    print("service started by python -m kv.serve, [metrics] off / on / on + access log:",
          flush=True)
    for _ in range(reps):
        for name, section in VARIANTS:
            path = "%s.metrics-%s" % (config, name.replace(" ", "").replace("+", "-"))
            with open(config) as f, open(path, "w") as out:
                out.write(f.read() + "\n[metrics]\ndirectory = %s\n" % os.path.join(
                    work, "metrics") + section % {"log": os.path.join(work, "access.log")})
            service = subprocess.Popen(
                [sys.executable, "-m", "kv.serve", "--workers", "2", "--threads", "16",
                 "127.0.0.1:%d" % port], cwd=ROOT, env=dict(os.environ, KV_CONFIG=path),
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                wait(url + "/health")
                groups = {"service": lambda: children(service.pid)}
                for verb, mode in (("GET", "get"), ("PUT", "put")):
                    row = measure("service %s, metrics %s" % (verb, name), url, mode, paths,
                                  groups, seconds, 1)
                    found.setdefault(row["workload"], []).append(row)
            finally:
                service.terminate()
                service.wait()
    for name, rows in found.items():
        table.append(_row(name, rows))


def metrics_summary(by) -> str:
    """One line: req/s and service CPU per request of each variant against off."""
    parts = []
    for verb in ("GET", "PUT"):
        off = by["service %s, metrics off" % verb]
        cpu_off = off["cpu"]["service"] / off["rate"] * 1e6
        for name in ("on", "on + access log"):
            on = by["service %s, metrics %s" % (verb, name)]
            cpu_on = on["cpu"]["service"] / on["rate"] * 1e6
            parts.append("%s %s %.0f/%.0f = %.3f (%+.1f%% req/s, %+.0f us CPU/request)" % (
                verb, name, on["rate"], off["rate"], on["rate"] / off["rate"],
                (on["rate"] / off["rate"] - 1) * 100, cpu_on - cpu_off))
    return "metrics vs off: " + "; ".join(parts)


def inprocess(number=20000):
    """Microseconds per GET /keys/{key} through the WSGI application on
    SQLite, in this process: metrics off, on, and on with the access log
    (to a file); the best of 5 runs of ``number`` requests each."""
    sys.path[:0] = [ROOT]
    import io
    import logging
    logging.disable(logging.WARNING)
    import controller
    work = tempfile.mkdtemp(prefix="kv-metrics-bench-")
    figures = {}
    for name, section in VARIANTS:
        config = os.path.join(work, name.replace(" ", "") + ".cfg")
        with open(config, "w") as f:
            f.write("[server]\n[cluster]\npartitions = 1\n[partition-1]\nengine = sqlite\n"
                    "path = p.sqlite3\n[metrics]\n" + section % {"log": os.path.join(
                        work, "access.log")})
        app = controller.create_application(config)

        def call(method, body=b""):
            environ = {"REQUEST_METHOD": method, "PATH_INFO": "/keys/bench", "QUERY_STRING": "",
                       "SERVER_NAME": "x", "SERVER_PORT": "80", "wsgi.url_scheme": "http",
                       "wsgi.input": io.BytesIO(body), "CONTENT_LENGTH": str(len(body)),
                       "CONTENT_TYPE": "text/plain", "REMOTE_ADDR": "127.0.0.1"}
            return app(environ, lambda status, headers: None)
        call("PUT", b"value")
        best = min(timeit.repeat(lambda: call("GET"), number=number, repeat=5))
        figures[name] = best / number * 1e6
        app.store.close()
    print("in-process GET through the WSGI application (SQLite): " + ", ".join(
        "metrics %s %.1f us" % item for item in figures.items())
        + "; on - off = %+.1f us, + access log %+.1f us" % (
            figures["on"] - figures["off"], figures["on + access log"] - figures["off"]))


if __name__ == "__main__":
    inprocess()
