"""Benchmark: the service against its floor (MariaDB, sysbench) and its peer
(etcd 3.4's v2 HTTP API), measured in one run on the same machine.

Starts 3 MariaDB servers (durable: innodb_flush_log_at_trx_commit = 1; a
buffer pool the data fits in), the service in its production configuration
(granian, README), loads 100,000 keys of ../shared/data/npm-packages.tsv,
then runs wrk (32 connections, REPS x SECONDS, medians) for each workload
and for web.py's floor (bench/floor_app.py: one route, no database),
watches each worker's memory through a long YCSB-B run, measures the
paired variants (bench/variants_bench.py) and the change feed's cost on
writes (bench/feed_bench.py; ``--only-feed`` runs that alone), times a sync pass
and the rebalance onto a 4th partition, runs sysbench on the same servers and
wrk against etcd.  Prints one table (req/s, p50, p99, CPU seconds per second
of each process group), writes it to bench/results/, and ends with one line
for scripts: ``service/etcd GET=<ratio> PUT=<ratio>``.

    make bench          (installs wrk, sysbench and etcd-server with apt-get)
    python bench/bench.py --seconds 10 --reps 3 --keys 100000
"""

import argparse
import io
import resource
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse

import requests

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "test"), os.path.join(ROOT, "bench")]

import dbservers  # noqa: E402  (test helper: throwaway mariadbd processes)
from kvclient import bulk  # noqa: E402
import sync  # noqa: E402
from datastore import Datastore  # noqa: E402
from processes import cpu_seconds, wait_idle  # noqa: E402
from variants_bench import variant_runs, variant_summary  # noqa: E402
from feed_bench import feed_runs, feed_summary  # noqa: E402

DATA = os.path.join(os.path.dirname(ROOT), "shared", "data", "npm-packages.tsv")
CONNECTIONS = 32
BUFFER_POOL_MIB = 512   # each partition's data fits, as on a production server
SERVERS = {   # production WSGI servers measured; granian is the README's choice
    # README "Running in production": kv.serve prepares the metrics directory
    # (prometheus_client's multiprocess mode) and execs granian (2 x 16).
    "granian": lambda port: ["python", "-m", "kv.serve", "--workers", "2", "--threads", "16",
                             "127.0.0.1:%d" % port],
    "gunicorn": lambda port: ["gunicorn", "--worker-class", "gthread", "--workers", "2",
                              "--threads", "8", "--bind", "127.0.0.1:%d" % port,
                              "controller:create_application()"],
}

LUA = r"""
local paths, bodies, n = {}, {}, 0
local mode = os.getenv("BENCH_MODE")
for line in io.lines(os.getenv("BENCH_PATHS")) do paths[#paths + 1] = line end
if os.getenv("BENCH_BODIES") then
  for line in io.lines(os.getenv("BENCH_BODIES")) do bodies[#bodies + 1] = line end
end
math.randomseed(os.time() + tonumber(tostring({}):sub(8), 16))
local auth = os.getenv("BENCH_AUTH")
local raw = {["Content-Type"] = "application/octet-stream", ["Authorization"] = auth}
local form = {["Content-Type"] = "application/x-www-form-urlencoded"}
local json = {["Content-Type"] = "application/json", ["Authorization"] = auth}
local plain = {["Authorization"] = auth}
request = function()
  n = n + 1
  local path = paths[math.random(#paths)]
  if mode == "zipf" then path = paths[(n * 7919) % #paths + 1] end
  if mode == "get" or mode == "zipf" or mode == "list" then
    return wrk.format("GET", path, plain)
  elseif mode == "put" then
    return wrk.format("PUT", path, raw, "value " .. n .. " " .. math.random())
  elseif mode == "cas" then
    return wrk.format("PUT", path, {["Content-Type"] = "application/octet-stream",
                                    ["If-Match"] = "*"}, "cas " .. n)
  elseif mode == "ycsb-b" then
    if math.random() < 0.05 then return wrk.format("PUT", path, raw, "v" .. n) end
    return wrk.format("GET", path)
  elseif mode == "etcd-put" then
    return wrk.format("PUT", path, form, "value=v" .. n .. "-" .. math.random())
  elseif mode == "batch" then
    return wrk.format("POST", "/batch", json, bodies[math.random(#bodies)])
  end
end
"""


def wrk(url, mode, paths, seconds, bodies=None, authorization=None):
    """One wrk run (every request with this Authorization header when
    given); returns (req/s, p50 ms, p99 ms, errors, requests completed)."""
    env = dict(os.environ, BENCH_MODE=mode, BENCH_PATHS=paths)
    if authorization:
        env["BENCH_AUTH"] = authorization
    if bodies:
        env["BENCH_BODIES"] = bodies
    # --timeout: a POST /batch of 1000 keys may take over wrk's default 2 s,
    # and wrk would drop it (a timeout counts as an error below).
    out = subprocess.run(["wrk", "-t1", "-c%d" % CONNECTIONS, "-d%ds" % seconds, "--latency",
                          "--timeout", "10s",
                          "-s", os.path.join(WORK, "bench.lua"), url], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT).stdout.decode()
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))

    def ms(label):
        m = re.search(r"\s%s\s+([\d.]+)(us|ms|s)" % label, out)
        value, unit = float(m.group(1)), m.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value
    # Non-2xx answers, and the socket errors (connect, read, write, timeout).
    errors = re.findall(r"Non-2xx or 3xx responses: (\d+)|"
                        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return (rate, ms("50%"), ms("99%"), sum(int(n or 0) for match in errors for n in match),
            int(re.search(r"(\d+) requests in", out).group(1)))


def children(pid):
    try:
        out = subprocess.run(["pgrep", "-P", str(pid)], stdout=subprocess.PIPE).stdout.decode()
    except OSError:
        return [pid]
    return [pid] + [int(p) for p in out.split()]


def measure(name, url, mode, paths, groups, seconds, reps, bodies=None, per_request=1,
            authorization=None):
    """Median of ``reps`` wrk runs plus CPU per process group (CPU s per
    s), each run once the groups are idle (at most 30 s of waiting)."""
    runs, cpu = [], {}
    for _ in range(reps):
        wait_idle(groups, most=30)          # the last run's requests, a load's flushing
        before = {g: cpu_seconds(pids()) for g, pids in groups.items()}
        started, waited = time.monotonic(), children_cpu()
        runs.append(wrk(url, mode, paths, seconds, bodies, authorization))
        wall = time.monotonic() - started
        cpu.setdefault("wrk", []).append((children_cpu() - waited) / wall)
        for g, pids in groups.items():
            cpu.setdefault(g, []).append((cpu_seconds(pids()) - before[g]) / wall)
    rate = statistics.median(r[0] for r in runs) * per_request
    row = {"workload": name, "rate": rate, "p50": statistics.median(r[1] for r in runs),
           "p99": statistics.median(r[2] for r in runs), "errors": sum(r[3] for r in runs),
           "requests": sum(r[4] for r in runs),
           "cpu": {g: statistics.median(v) for g, v in cpu.items()}}
    print("  %-34s %10.0f /s  p50 %7.2f ms  p99 %7.2f ms  errors %d  cpu us/request %s" % (
        name, row["rate"], row["p50"], row["p99"], row["errors"], per_request_cpu(row)),
        flush=True)
    return row


def children_cpu() -> float:
    """CPU seconds (user + system) of this process's children that have
    been waited for: measured around a wrk run, wrk's own CPU."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def machine_busy() -> float:
    """Seconds of CPU the whole machine has spent not idle (/proc/stat:
    every field but idle and iowait), summed over its cores."""
    with open("/proc/stat") as f:
        fields = [int(n) for n in f.readline().split()[1:8]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def cpu_us(row, group) -> float:
    """CPU microseconds of ``group`` per request (per key for POST /batch) in ``row``."""
    return row["cpu"][group] / row["rate"] * 1e6


def per_request_cpu(row) -> str:
    """``service 224 + mariadb 60 + wrk 20``: each group's CPU per request, in us."""
    return " + ".join("%s %.0f" % (g, cpu_us(row, g)) for g in sorted(row["cpu"]))


def rss_mib(pid):
    """Resident set size of a process in MiB (0 when it is gone)."""
    try:
        with open("/proc/%d/status" % pid) as f:
            return int(re.search(r"VmRSS:\s+(\d+) kB", f.read()).group(1)) / 1024
    except (OSError, AttributeError):
        return 0.0


def memory_run(url, paths, server_pid, seconds, warmup=30, every=5):
    """YCSB-B for ``seconds`` while sampling each worker's RSS every ``every``
    seconds; after ``warmup`` seconds each worker must stay within +-10% of
    its first sample.  Returns a dict for the results file."""
    workers = [pid for pid in children(server_pid) if pid != server_pid]
    runner = subprocess.Popen(
        ["wrk", "-t1", "-c%d" % CONNECTIONS, "-d%ds" % seconds, "-s",
         os.path.join(WORK, "bench.lua"), url], env=dict(os.environ, BENCH_MODE="ycsb-b", BENCH_PATHS=paths),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    samples = {pid: [] for pid in workers}
    started = time.monotonic()
    while runner.poll() is None:
        time.sleep(every)
        if time.monotonic() - started >= warmup:
            for pid in workers:
                samples[pid].append(rss_mib(pid))
    rate = re.search(r"Requests/sec:\s+([\d.]+)", runner.stdout.read().decode())
    report = {"seconds": seconds, "requests_per_second": float(rate.group(1)) if rate else 0,
              "workers": []}
    for pid, values in samples.items():
        values = [v for v in values if v] or [0.0]
        first = values[0]
        spread = (max(values) - min(values)) / first if first else 0
        report["workers"].append({"first_mib": first, "min_mib": min(values),
                                  "max_mib": max(values), "last_mib": values[-1],
                                  "flat": all(abs(v - first) <= 0.1 * first for v in values)})
        print("  memory of worker %d over %d s of YCSB-B: %.1f MiB after %d s warm-up, "
              "min %.1f, max %.1f, last %.1f (spread %.1f%%)" % (
                  pid, seconds, first, warmup, min(values), max(values), values[-1], 100 * spread),
              flush=True)
    return report


def sync_runs(config, servers):
    """Time a sync pass (replicas still missing after the load), then a 4th
    partition's rebalance and a verify.  Returns a dict for the results file."""
    def one(store, **kw):
        out = io.StringIO()
        started = time.monotonic()
        code = sync.run(store, out=out, **kw)
        seconds = time.monotonic() - started
        line = out.getvalue().strip().splitlines()[-1]
        counts = {k: int(v) for k, v in re.findall(r"(scanned|copied|moved)=(\d+)", line)}
        counts.update((k, int(v)) for v, k in re.findall(r"(\d+) (keys|divergent)", line))
        return dict(counts, seconds=seconds, exit=code, line=line)
    report = {}
    store = Datastore.from_config(config)
    first = one(store)
    store.close()
    report["replicate"] = first
    print("  sync pass after the load: %s -> %.0f rows copied/s, %.0f rows scanned/s" % (
        first["line"], first["copied"] / first["seconds"], first["scanned"] / first["seconds"]),
        flush=True)
    fourth = dbservers.MariaDB("bench-4")
    fourth.durable, fourth.buffer_pool_mib = True, BUFFER_POOL_MIB
    servers.append(fourth.start())
    fourth.apply_schema()
    config4 = dbservers.write_config(config + ".4", servers, replicas=2)
    store = Datastore.from_config(config4)
    moved = one(store)
    check = one(store, check=True)
    store.close()
    report["rebalance"], report["verify"] = moved, check
    print("  adding a 4th partition: %s (%.1f s, %.0f keys moved/s)" % (
        moved["line"], moved["seconds"], moved["moved"] / moved["seconds"]), flush=True)
    print("  verify after the move: %s" % check["line"], flush=True)
    return report


def sysbench_options(server):
    """The options of every sysbench command on ``server`` (database sbtest, one table)."""
    return ["--db-driver=mysql", "--mysql-host=127.0.0.1", "--mysql-port=%d" % server.port,
            "--mysql-user=kv", "--mysql-password=" + dbservers.PASSWORD, "--mysql-db=sbtest",
            "--tables=1", "--table-size=100000"]


def sysbench(server, test, threads, seconds, reps):
    """Median (tps, p99 ms, CPU s/s) of a sysbench oltp test on ``server``;
    the CPU holds ``mariadb`` (the server's) and ``machine`` (every core's
    busy time, /proc/stat: sysbench, the server and the rest)."""
    common = sysbench_options(server)
    rates, p99s, cpu = [], [], {"mariadb": [], "machine": []}
    for _ in range(reps):
        started, busy = time.monotonic(), machine_busy()
        mariadb = cpu_seconds([server.process.pid])
        out = subprocess.run(["sysbench", test] + common + ["--threads=%d" % threads,
                             "--time=%d" % seconds, "--percentile=99", "run"],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT).stdout.decode()
        wall = time.monotonic() - started
        cpu["machine"].append((machine_busy() - busy) / wall)
        cpu["mariadb"].append((cpu_seconds([server.process.pid]) - mariadb) / wall)
        rates.append(float(re.search(r"transactions:\s+\d+\s+\(([\d.]+) per sec", out).group(1)))
        p99s.append(float(re.search(r"99th percentile:\s+([\d.]+)", out).group(1)))
    return (statistics.median(rates), statistics.median(p99s),
            {g: statistics.median(v) for g, v in cpu.items()})


def main(argv=None) -> int:
    global WORK
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--keys", type=int, default=100000)
    parser.add_argument("--server", choices=sorted(SERVERS), default="granian",
                        help="production WSGI server to measure (granian)")
    parser.add_argument("--memory-seconds", type=int, default=300,
                        help="length of the run that watches each worker's memory (0: skip)")
    parser.add_argument("--only-service", action="store_true",
                        help="skip sync, memory, sysbench and etcd (quick comparisons)")
    parser.add_argument("--quick", action="store_true",
                        help="only service GET and PUT, the web.py floor and sysbench "
                             "(the figures of the speed targets, in about 4 minutes)")
    parser.add_argument("--only-feed", action="store_true",
                        help="run only the change feed's cost on writes (bench/feed_bench.py)")
    parser.add_argument("--feed-rounds", type=int, default=4,
                        help="ABBA rounds of the change feed's paired runs (4)")
    parser.add_argument("--feed-seconds", type=int, default=5,
                        help="seconds of each of the change feed's wrk runs (5)")
    args = parser.parse_args(argv)
    WORK = tempfile.mkdtemp(prefix="kv-bench-")
    with open(os.path.join(WORK, "bench.lua"), "w") as f:
        f.write(LUA)
    started_all = time.monotonic()
    rows = list(bulk.read_tsv(DATA))[:args.keys]
    keys = [k for k, _ in rows]
    paths = os.path.join(WORK, "paths")
    with open(paths, "w") as f:
        f.writelines("/keys/%s\n" % urllib.parse.quote(k, safe="") for k in keys)
    zipf = os.path.join(WORK, "zipf")
    random.seed(1)
    with open(zipf, "w") as f:         # YCSB's Zipfian (theta 0.99) over scrambled key ranks
        weights = [1 / (rank ** 0.99) for rank in range(1, len(keys) + 1)]
        order = random.sample(keys, len(keys))
        for key in random.choices(order, weights, k=200000):
            f.write("/keys/%s\n" % urllib.parse.quote(key, safe=""))
    lists = os.path.join(WORK, "lists")
    with open(lists, "w") as f:
        for prefix in sorted({k[:2] for k in keys}):
            f.write("/keys?limit=100&prefix=%s\n" % urllib.parse.quote(prefix, safe=""))
    bodies = os.path.join(WORK, "bodies")
    with open(bodies, "w") as f:
        for b in range(20):
            ops = [{"op": "put", "key": "batch-%d-%d" % (b, i), "value": "v%d" % i}
                   for i in range(1000)]
            f.write(json.dumps({"ops": ops}) + "\n")

    servers, service, etcd = [], None, None
    results = {"machine": "%d cores" % os.cpu_count(), "connections": CONNECTIONS,
               "seconds": args.seconds, "reps": args.reps, "rows": []}
    try:
        print("starting 3 MariaDB servers (durable) ...", flush=True)
        for i in (1, 2, 3):
            server = dbservers.MariaDB("bench-%d" % i)
            server.durable, server.buffer_pool_mib = True, BUFFER_POOL_MIB
            servers.append(server.start())
            server.apply_schema()
        config = dbservers.write_config(os.path.join(WORK, "c.cfg"), servers, replicas=2)
        if args.only_feed:
            feed_runs(results["rows"], servers, rows, paths, bodies, args.feed_seconds,
                      args.feed_rounds, measure, children, _wait)
            return _report(results, None)
        port = dbservers.free_port()
        url = "http://127.0.0.1:%d" % port
        command = SERVERS[args.server](port)
        command[0] = os.path.join(os.path.dirname(sys.executable), command[0])
        service = subprocess.Popen(command, cwd=ROOT, env=dict(os.environ, KV_CONFIG=config),
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait(url + "/health")
        print("loading %d keys ..." % len(keys), flush=True)
        load_args = argparse.Namespace(url=url, timeout=60, connections=4)
        loader = bulk.Loader(load_args)
        t = time.monotonic()
        bulk.run_chunks("load", [[(k, v, None) for k, v in rows[i:i + 1000]]
                                 for i in range(0, len(rows), 1000)], loader.put, 4)
        results["load_rows_per_second"] = len(rows) / (time.monotonic() - t)
        groups = {"service": lambda: children(service.pid),
                  "mariadb": lambda: [s.process.pid for s in servers]}
        s, r = args.seconds, args.reps
        print("service (%s, 3 MariaDB partitions, replicas = 2):" % " ".join(command[1:]))
        results["server"] = " ".join([os.path.basename(command[0])] + command[1:])
        table = results["rows"]
        table.append(measure("service GET uniform", url, "get", paths, groups, s, r))
        table.append(measure("service GET zipfian", url, "zipf", zipf, groups, s, r))
        table.append(measure("service PUT", url, "put", paths, groups, s, r))
        if not args.quick:
            table.append(measure("service YCSB-B 95/5", url, "ycsb-b", paths, groups, s, r))
            table.append(measure("service conditional PUT (If-Match)", url, "cas", paths,
                                 groups, s, r))
            table.append(measure("service list pages of 100", url, "list", lists, groups, s, r))
            table.append(measure("service POST /batch (keys/s)", url, "batch", paths, groups,
                                 s, r, bodies=bodies, per_request=1000))
        if args.memory_seconds and not (args.only_service or args.quick):
            results["memory"] = memory_run(url, paths, service.pid, args.memory_seconds)
        service.terminate()
        service.wait()
        service = None
        if not args.quick:
            variant_runs(table, config, paths, s, max(3, 2 * r), measure, children, _wait)
            feed_runs(table, servers, rows, paths, bodies, args.feed_seconds, args.feed_rounds,
                      measure, children, _wait)
        print("web.py floor (bench/floor_app.py: one route, no database, same server):")
        floor_command = [os.path.join(os.path.dirname(sys.executable), "granian"), "--interface",
                         "wsgi", "--workers", "2", "--blocking-threads", "16", "--host",
                         "127.0.0.1", "--port", str(port), "--factory",
                         "floor_app:create_application"]       # what kv.serve runs, stock web.py
        service = subprocess.Popen(floor_command, cwd=os.path.join(ROOT, "bench"),
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait(url + "/keys/x")
        table.append(measure("web.py floor (no database)", url, "get", paths,
                             {"service": lambda: children(service.pid)}, s, r))
        service.terminate()
        service.wait()
        service = None
        if args.only_service:
            return _report(results, None)
        if not args.quick:
            results["sync"] = sync_runs(config, servers)

        print("MariaDB floor (sysbench on partition-1's server):", flush=True)
        servers[0].execute("CREATE DATABASE IF NOT EXISTS sbtest")
        servers[0].execute("GRANT ALL ON sbtest.* TO 'kv'@'%%'")
        subprocess.run(["sysbench", "oltp_point_select"] + sysbench_options(servers[0])
                       + ["prepare"], stdout=subprocess.DEVNULL, check=True)
        for test, threads in (("oltp_point_select", 8), ("oltp_update_index", 32)):
            rate, p99, cpu = sysbench(servers[0], test, threads, s, r)
            table.append({"workload": "sysbench %s (%d threads)" % (test, threads), "rate": rate,
                          "p50": None, "p99": p99, "errors": 0, "cpu": cpu})
            print("  %-34s %10.0f /s  p99 %7.2f ms  cpu us/transaction %s" % (
                table[-1]["workload"], rate, p99, per_request_cpu(table[-1])), flush=True)
        for server in servers:
            server.stop()
        if args.quick:
            return _report(results, None)

        print("etcd 3.4 v2 API:", flush=True)
        etcd_port, peer_port = dbservers.free_port(), dbservers.free_port()
        etcd_url = "http://127.0.0.1:%d" % etcd_port
        etcd = subprocess.Popen(["etcd", "--enable-v2", "--data-dir", os.path.join(WORK, "etcd"),
                                 "--listen-client-urls", etcd_url, "--advertise-client-urls", etcd_url,
                                 "--listen-peer-urls", "http://127.0.0.1:%d" % peer_port,
                                 "--initial-advertise-peer-urls", "http://127.0.0.1:%d" % peer_port,
                                 "--initial-cluster", "default=http://127.0.0.1:%d" % peer_port],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait(etcd_url + "/version")
        etcd_paths = os.path.join(WORK, "etcd-paths")
        etcd_keys = min(len(keys), 20000)    # etcd keeps its data in memory: size barely matters
        with open(etcd_paths, "w") as f:
            f.writelines("/v2/keys/k%d\n" % i for i in range(etcd_keys))
        _load_etcd(etcd_url, etcd_keys)
        etcd_groups = {"etcd": lambda: [etcd.pid]}
        table.append(measure("etcd v2 GET", etcd_url, "get", etcd_paths, etcd_groups, s, r))
        table.append(measure("etcd v2 PUT", etcd_url, "etcd-put", etcd_paths, etcd_groups, s, r))
    finally:
        if service is not None:
            service.terminate()
        if etcd is not None:
            etcd.terminate()
            etcd.wait()
        for server in servers:
            server.stop()
        shutil.rmtree(WORK, ignore_errors=True)
    return _report(results, started_all)


def _report(results, started_all) -> int:
    by = {row["workload"]: row for row in results["rows"]}
    if "etcd v2 GET" not in by:
        for row in results["rows"]:
            print("%-40s %10.0f /s  p99 %6.2f ms  cpu us/request %s" % (
                row["workload"], row["rate"], row["p99"], per_request_cpu(row)))
        if "service GET, base" in by:
            print(variant_summary(by))
        if "feed PUT, with index" in by:
            print(feed_summary(by))
        print(_target_lines(by))
        return 0
    get_ratio = by["service GET uniform"]["rate"] / by["etcd v2 GET"]["rate"]
    put_ratio = by["service PUT"]["rate"] / by["etcd v2 PUT"]["rate"]
    results["seconds_total"] = time.monotonic() - started_all if started_all else 0
    os.makedirs(os.path.join(ROOT, "bench", "results"), exist_ok=True)
    name = time.strftime("%Y-%m-%dT%H%M%SZ", time.gmtime())
    with open(os.path.join(ROOT, "bench", "results", name + ".json"), "w") as f:
        json.dump(results, f, indent=1)
    print("\n| workload | req/s | p50 ms | p99 ms | CPU s/s | CPU us per request |\n"
          "| --- | --- | --- | --- | --- | --- |")
    for row in results["rows"]:
        print("| %s | %.0f | %s | %.2f | %s | %s |" % (
            row["workload"], row["rate"], "%.2f" % row["p50"] if row["p50"] is not None else "",
            row["p99"], " ".join("%s %.2f" % kv for kv in sorted(row["cpu"].items())),
            per_request_cpu(row)))
    print("\nload: %.0f rows/s; whole run %.0f s; results in bench/results/%s.json"
          % (results["load_rows_per_second"], results["seconds_total"], name))
    if "sync" in results:
        first, moved = results["sync"]["replicate"], results["sync"]["rebalance"]
        print("sync: %.0f rows copied/s (%d rows in %.1f s); 4th partition: %d keys moved in %.1f s;"
              " verify: %d divergent" % (first["copied"] / first["seconds"], first["copied"],
                                        first["seconds"], moved["moved"], moved["seconds"],
                                        results["sync"]["verify"]["divergent"]))
    if "memory" in results:
        memory = results["memory"]
        print("memory over %d s of YCSB-B: %s" % (memory["seconds"], "; ".join(
            "worker %.1f -> max %.1f MiB (%s)" % (w["first_mib"], w["max_mib"],
                                                  "flat" if w["flat"] else "NOT flat")
            for w in memory["workers"])))
    print("service/MariaDB GET=%.2f PUT=%.2f" % (
        by["service GET uniform"]["rate"] / by["sysbench oltp_point_select (8 threads)"]["rate"],
        by["service PUT"]["rate"] / by["sysbench oltp_update_index (32 threads)"]["rate"]))
    if "service GET, base" in by:
        print(variant_summary(by))
    if "feed PUT, with index" in by:
        print(feed_summary(by))
    print(_target_lines(by))
    print("service/etcd GET=%.2f PUT=%.2f" % (get_ratio, put_ratio))
    return 0


def _target_lines(by) -> str:
    """The figures of the speed targets (issue 15), the last of them
    ``service CPU/floor GET=<ratio> PUT=<ratio>``: the service's CPU per
    request over web.py's floor's; before it, MariaDB's CPU per PUT over
    the whole machine's per sysbench update_index transaction."""
    lines = []
    update = by.get("sysbench oltp_update_index (32 threads)")
    put, get = by.get("service PUT"), by.get("service GET uniform")
    if update and put:
        lines.append("MariaDB CPU per PUT / sysbench update_index machine CPU per update=%.2f "
                     "(%.0f us / %.0f us)" % (cpu_us(put, "mariadb") / cpu_us(update, "machine"),
                                             cpu_us(put, "mariadb"), cpu_us(update, "machine")))
    floor = by.get("web.py floor (no database)")
    if floor and put and get:
        lines.append("service CPU/floor GET=%.2f PUT=%.2f" % (
            cpu_us(get, "service") / cpu_us(floor, "service"),
            cpu_us(put, "service") / cpu_us(floor, "service")))
    return "\n".join(lines)


def _wait(url, seconds=30):
    deadline = time.monotonic() + seconds
    while True:
        try:
            requests.get(url, timeout=1)
            return
        except requests.RequestException:
            if time.monotonic() > deadline:
                raise RuntimeError("%s did not answer" % url)
            time.sleep(0.1)


def _load_etcd(url, count):
    import concurrent.futures
    session_count = 16

    def load(start):
        with requests.Session() as session:
            for i in range(start, count, session_count):
                session.put("%s/v2/keys/k%d" % (url, i), data={"value": "v%d" % i}).raise_for_status()
    with concurrent.futures.ThreadPoolExecutor(session_count) as pool:
        list(pool.map(load, range(session_count)))


if __name__ == "__main__":
    sys.exit(main())
