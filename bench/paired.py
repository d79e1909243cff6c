"""Paired runs: the service of two (or more) checkouts, measured in
alternating wrk runs on the same three durable MariaDB servers, so that a
change is judged against the code before it on the same machine in the
same minutes (this machine's speed drifts by 2x within an hour).

    git worktree add /tmp/before main
    .venv/bin/python bench/paired.py /tmp/before . --rounds 3 --modes get,put

Each checkout is started as README's production command (``python -m
kv.serve --workers 2 --threads 16``, with this venv); the rounds alternate
A B, then B A.  Prints, per checkout and workload, the medians: req/s, p99
and CPU microseconds per request of the service, MariaDB and wrk, and the
MariaDB counters per request (commits, statements, rows read by key).
"""

import argparse
import os
import statistics
import subprocess
import sys
import urllib.parse

import requests

import bench
from bench import ROOT, dbservers, bulk

#: MariaDB status counters printed per request.
COUNTERS = ("Com_commit", "Questions", "Handler_read_key", "Handler_update",
            "Innodb_data_fsyncs")


def _status(servers) -> dict:
    totals = dict.fromkeys(COUNTERS, 0)
    for server in servers:
        for name, value in server.execute("SHOW GLOBAL STATUS"):
            if name in totals:
                totals[name] += int(value)
    return totals


def _start(checkout: str, config: str):
    port = dbservers.free_port()
    command = [sys.executable, "-m", "kv.serve", "--workers", "2", "--threads", "16",
               "127.0.0.1:%d" % port]
    service = subprocess.Popen(command, cwd=checkout, env=dict(os.environ, KV_CONFIG=config),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = "http://127.0.0.1:%d" % port
    bench._wait(url + "/health")
    return service, url


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkouts", nargs="+", help="directories of the checkouts to compare")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=6)
    parser.add_argument("--modes", default="get,put", help="bench.py's wrk modes (get,put,...)")
    parser.add_argument("--keys", type=int, default=20000)
    args = parser.parse_args(argv)
    work = bench.tempfile.mkdtemp(prefix="kv-paired-")
    bench.WORK = work
    with open(os.path.join(work, "bench.lua"), "w") as f:
        f.write(bench.LUA)
    rows = list(bulk.read_tsv(bench.DATA))[:args.keys]
    paths = os.path.join(work, "paths")
    with open(paths, "w") as f:
        f.writelines("/keys/%s\n" % urllib.parse.quote(k, safe="") for k, _ in rows)
    servers, results = [], {}
    try:
        for i in (1, 2, 3):
            server = dbservers.MariaDB("paired-%d" % i)
            server.durable, server.buffer_pool_mib = True, bench.BUFFER_POOL_MIB
            servers.append(server.start())
            server.apply_schema()
        config = dbservers.write_config(os.path.join(work, "c.cfg"), servers, replicas=2)
        service, url = _start(os.path.abspath(args.checkouts[0]), config)
        loader = bulk.Loader(argparse.Namespace(url=url, timeout=60, connections=4))
        bulk.run_chunks("load", [[(k, v, None) for k, v in rows[i:i + 1000]]
                                 for i in range(0, len(rows), 1000)], loader.put, 4)
        service.terminate()
        service.wait()
        for round_ in range(args.rounds):
            order = list(enumerate(args.checkouts))
            for n, checkout in (order if round_ % 2 == 0 else order[::-1]):
                service, url = _start(os.path.abspath(checkout), config)
                groups = {"service": lambda: bench.children(service.pid),
                          "mariadb": lambda: [s.process.pid for s in servers]}
                try:
                    for mode in args.modes.split(","):
                        requests.get(url + "/health")
                        before = _status(servers)
                        row = bench.measure("%s %s" % (chr(ord("A") + n), mode), url, mode, paths,
                                            groups, args.seconds, 1)
                        after = _status(servers)
                        done = row["requests"] or 1
                        row["counters"] = {k: (after[k] - before[k]) / done for k in COUNTERS}
                        results.setdefault(row["workload"], []).append(row)
                finally:
                    service.terminate()
                    service.wait()
    finally:
        for server in servers:
            server.stop()
        bench.shutil.rmtree(work, ignore_errors=True)
    print("\nmedians of %d rounds (%s):" % (args.rounds, ", ".join(
        "%s = %s" % (chr(ord("A") + n), c) for n, c in enumerate(args.checkouts))))
    for name, runs in sorted(results.items()):
        def median(f):
            return statistics.median(f(r) for r in runs)
        print("%-8s %7.0f /s  p99 %6.1f ms  cpu us/request %s  per request: %s" % (
            name, median(lambda r: r["rate"]), median(lambda r: r["p99"]),
            " + ".join("%s %.0f" % (g, median(lambda r: bench.cpu_us(r, g)))
                       for g in sorted(runs[0]["cpu"])),
            " ".join("%s %.2f" % (k, median(lambda r: r["counters"][k])) for k in COUNTERS)))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, ROOT)
    sys.exit(main())
