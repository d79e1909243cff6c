"""What the change feed (API.md "Change feed (watch)", issue 14) costs the
writes in ``make bench``, measured in paired runs as variants_bench.py does:
two services (``python -m kv.serve``, granian 2 workers x 16 threads) run at
once on the bench's 3 MariaDB servers, each on its own database, loaded with
the same keys, and wrk runs against them in turn in ABBA order (the order
reverses every round); each figure is the median over the rounds.

| variant | its database | what runs next to wrk |
| --- | --- | --- |
| with index | kvfeed_with: the schema as ``make schema`` makes it | nothing |
| without index | kvfeed_without: the same, then DROP INDEX kv_rows_bucket_change | nothing |
| with index, closing | kvfeed_with | a thread closing each partition's epoch every 50 ms |
| without index, closing | kvfeed_without | the same thread |
| with index + watcher | kvfeed_with | one long poll following the bucket |

Before every run each partition's change epoch is closed once (as a sync
pass does), so a key's first write in the run moves its entry of the index
(bucket, change_epoch, k); a key written again in the same epoch does not.
The ``closing`` rows close epochs every 50 ms (kv.cluster.watch.TICK_SECONDS),
as the feed's poller does while a long poll waits: then nearly every write
moves its entry (POST /batch writes each of its 20,000 keys about seven
times a run).  The watcher row runs one thread looping
``GET /buckets/default/changes?wait=30&since=<next>`` (limit 1000) and
counts the entries it receives against the distinct keys written in the run
(read back from the database: the rows stamped with the run's epochs).
After each run it waits for the servers to go idle (wrk stops with 32
requests in flight; 32 batches take 2 to 5 s, which fell on the next run).
Last, MariaDB's own cost of the index without HTTP: write_many of 1,000
keys and single-key writes on partition-1 of each database in turn, the
epoch closed before each block, so that every key moves its entry.

Printed: one line per figure (``feed index PUT: with=... without=...
without/with=...``), with MariaDB's CPU per write (CPU seconds of the 3
mariadbd processes over the run / writes).
"""

import logging
import os
import subprocess
import sys
import threading
import time
from argparse import Namespace

import requests

import dbservers  # noqa: E402  (test helper, on sys.path through bench.py)
from kv.cluster.watch import CLOSE_BACKOFF_SECONDS, TICK_SECONDS
from kv.configuration import PartitionSettings
from kv.errors import PartitionUnavailable
from kv.records import Condition, put_record
from kv.storage.engines import MySQLPartition
from kv.storage.partition import WriteRequest
from kvclient import bulk
from processes import cpu_seconds, wait_idle
from variants_bench import _median_row

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INDEX = "kv_rows_bucket_change"
#: (variant, database, whether it keeps the index)
DATABASES = (("with index", "kvfeed_with", True), ("without index", "kvfeed_without", False))
#: Seconds between two epoch closes of the ``closing`` runs (the poller's tick).
CLOSE_EVERY = TICK_SECONDS
SENTINEL = "feed-bench-end"


class _View:
    """One of the bench's servers seen through another database (for dbservers.write_config)."""

    def __init__(self, server, database):
        self.server, self.database = server, database

    def config_section(self, name):
        return self.server.config_section(name).replace("database = kv\n",
                                                        "database = %s\n" % self.database)


def _database(servers, database, keep_index):
    """Create ``database`` anew with the schema on every server, without the
    feed's index unless ``keep_index``.  :returns: one partition per server
    (for closing epochs)."""
    partitions = []
    for i, server in enumerate(servers):
        server.execute("DROP DATABASE IF EXISTS %s" % database)
        server.execute("CREATE DATABASE %s" % database)
        server.execute("GRANT ALL ON %s.* TO 'kv'@'%%%%'" % database)   # %% for mogrify
        partition = MySQLPartition(PartitionSettings(
            "partition-%d" % (i + 1), "mysql", port=server.port, password=dbservers.PASSWORD,
            database=database))
        partition.apply_schema()
        if not keep_index:
            server.execute("DROP INDEX %s ON %s.kv_rows" % (INDEX, database))
        partitions.append(partition)
    return partitions


def _close_all(partitions, backoff=None) -> int:
    """Close each partition's epoch (skipping those in ``backoff``, a dict
    partition -> monotonic time, until then); :returns: the closes that
    failed (a write held the old epoch past the close's 0.25 s)."""
    failed = 0
    for partition in partitions:
        if backoff is not None and time.monotonic() < backoff.get(partition, 0):
            continue
        try:
            partition.close_epoch()
        except PartitionUnavailable:
            failed += 1
            if backoff is not None:
                backoff[partition] = time.monotonic() + CLOSE_BACKOFF_SECONDS
    return failed


class _Closer:
    """A thread closing every partition's epoch every CLOSE_EVERY seconds,
    and backing off from a partition after a failed close as the feed's
    poller does (kv.cluster.watch)."""

    def __init__(self, partitions):
        self.partitions, self.stop, self.failed = partitions, threading.Event(), 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        backoff = {}
        while not self.stop.is_set():
            self.failed += _close_all(self.partitions, backoff)
            self.stop.wait(CLOSE_EVERY)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()


class _Watcher:
    """One long poll following bucket ``default`` from ``since``, counting
    the entries and distinct keys it receives and the answers that are not 200."""

    def __init__(self, url, since):
        self.base, self.url, self.next = url, url + "/buckets/default/changes", since
        self.entries, self.keys, self.statuses, self.incomplete = 0, set(), {}, 0
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        with requests.Session() as session:
            session.headers["Accept"] = "application/json"
            while True:
                stopping = self.stopping.is_set()
                try:
                    r = session.get(self.url, params={"since": self.next, "limit": 1000,
                                                      "wait": 1 if stopping else 30}, timeout=40)
                except requests.RequestException as e:
                    self.statuses[type(e).__name__] = self.statuses.get(type(e).__name__, 0) + 1
                    time.sleep(0.1)
                    continue
                if r.status_code != 200:
                    self.statuses[r.status_code] = self.statuses.get(r.status_code, 0) + 1
                    time.sleep(float(r.headers.get("Retry-After", "0.1")))
                    continue
                page = r.json()
                self.next = page["next"]
                self.incomplete += not page["complete"]
                keys = [c["key"] for c in page["changes"] if c["key"] != SENTINEL]
                self.entries += len(keys)
                self.keys.update(keys)
                if stopping and not page["changes"]:     # nothing new for a second: caught up
                    return

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        """Stop after the writes: a last write wakes the poll, then short
        polls until one comes back empty."""
        self.stopping.set()
        requests.put(self.base + "/keys/" + SENTINEL, data=b"end",
                     headers={"Content-Type": "application/octet-stream"}, timeout=10)
        self.thread.join(60)


def _written(servers, database, epochs):
    """The distinct keys of bucket default stamped with ``epochs`` (one per
    server) or later, on any partition."""
    keys = set()
    for server, epoch in zip(servers, epochs):
        for (k,) in server.execute("SELECT k FROM %s.kv_rows WHERE bucket = 'default'"
                                   " AND change_epoch >= %%s" % database, (epoch,)):
            keys.add(bytes(k).decode("utf-8"))
    keys.discard(SENTINEL)
    return keys


def _watched_run(url, servers, partitions, measure, args):
    """One PUT run with a watcher; :returns: (the row, the watcher's counts)."""
    for _ in range(20):           # every close must pass: the keys written are counted from it
        if not _close_all(partitions):
            break
        time.sleep(0.25)
    else:
        raise RuntimeError("the change epochs could not be closed before the watcher's run")
    since = requests.get(url + "/buckets/default/changes", params={"since": "now"},
                         headers={"Accept": "application/json"}, timeout=10).json()["next"]
    epochs = [int(s.execute("SELECT epoch FROM kvfeed_with.kv_change_epoch WHERE id = 1")[0][0])
              for s in servers]
    with _Watcher(url, since) as watcher:
        row = measure(*args)
    written = _written(servers, "kvfeed_with", epochs)
    print("    the watcher received %d entries (%d distinct keys); %d writes acknowledged, %d "
          "distinct keys written, %d of them not received" % (
              watcher.entries, len(watcher.keys), row["requests"] - row["errors"], len(written),
              len(written - watcher.keys)), flush=True)
    return row, {"entries": watcher.entries, "distinct_received": len(watcher.keys),
                 "acknowledged": row["requests"] - row["errors"],
                 "distinct_written": len(written), "missing": len(written - watcher.keys),
                 "statuses": {str(k): v for k, v in watcher.statuses.items()},
                 "incomplete_pages": watcher.incomplete, "caught_up": not watcher.thread.is_alive()}


def _direct_block(partition, server, keys, mode):
    """Close ``partition``'s epoch, then write ``keys`` of bucket default
    once each through the partition itself (no HTTP): ``batch``, in
    write_many calls of 1,000 keys (POST /batch's path); ``put``, one
    unconditional single-key write after another (PUT's one-round-trip
    path, one durable commit each).  :returns: (keys, wall seconds,
    CPU seconds of the server's mariadbd, until it is idle again: the purge
    of the index entries the writes replaced runs after them)."""
    server_pids = {"mariadbd": lambda: [server.process.pid]}
    _close_all([partition])
    wait_idle(server_pids, 10, 0.02)
    cpu, started = cpu_seconds([server.process.pid]), time.monotonic()
    value = b"direct %f" % started
    if mode == "batch":
        def apply(current, now, unknown):
            return {k: put_record(b"default", k, value, None, Condition(), r, now)
                    for k, r in current.items()}
        for i in range(0, len(keys), 1000):
            partition.write_many(b"default", keys[i:i + 1000], apply)
    else:
        for k in keys:
            partition.write(WriteRequest(b"default", k, lambda current, now, k=k: put_record(
                b"default", k, value, None, Condition(), current, now), overwrite=(value, None)))
    wall = time.monotonic() - started
    wait_idle(server_pids, 10, 0.02)
    return len(keys), wall, cpu_seconds([server.process.pid]) - cpu


def _direct_runs(servers, partitions, pairs):
    """MariaDB's own cost of the index, without HTTP and wrk: blocks of
    writes on partition-1 of each database in turn (ABBA), every key moving
    its index entry (the epoch is closed before each block).  :returns: one
    table row per (path, variant), rate in keys/s and CPU in s/s as measure's
    rows, from the sums over the blocks."""
    keys = [bytes(k) for (k,) in servers[0].execute(
        "SELECT k FROM kvfeed_with.kv_rows WHERE bucket = 'default' ORDER BY k LIMIT 5000")]
    names = [name for name, _, _ in DATABASES]
    sums = {}
    for mode, count in (("batch", 5000), ("put", 400)):
        for pair in range(2 * pairs):
            for name in (names if pair % 2 == 0 else names[::-1]):
                done, wall, cpu = _direct_block(partitions[name][0], servers[0],
                                                keys[:count], mode)
                total = sums.setdefault((mode, name), [0, 0.0, 0.0])
                total[0] += done
                total[1] += wall
                total[2] += cpu
    rows = []
    for (mode, name), (done, wall, cpu) in sums.items():
        rows.append({"workload": "feed direct %s, %s" % (mode, name), "rate": done / wall,
                     "p50": None, "p99": 0.0, "errors": 0, "cpu": {"mariadb": cpu / wall}})
    return rows


def feed_runs(table, servers, rows, paths, bodies, seconds, rounds, measure, children, wait):
    """Run the paired variants (module docstring) for ``rounds`` rounds and
    append one median row per (workload, variant) to ``table``, named
    ``feed PUT, with index`` and so on; the watcher row carries its counts
    under ``watcher`` (summed over the rounds)."""
    work = os.path.dirname(paths)
    services, partitions = {}, {}
    print("change feed: with and without the index %s, and a watcher "
          "(python -m kv.serve, ABBA):" % INDEX, flush=True)
    started = time.monotonic()
    quiet = logging.getLogger("kv.partition")     # the closes that time out: counted instead
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        for name, database, keep in DATABASES:
            partitions[name] = _database(servers, database, keep)
            slug = database
            config = dbservers.write_config(
                os.path.join(work, "%s.cfg" % slug), [_View(s, database) for s in servers],
                replicas=2, extra="[metrics]\nenabled = true\naccess_log = off\ndirectory = %s\n"
                % os.path.join(work, "metrics-" + slug))
            port = dbservers.free_port()
            services[name] = ("http://127.0.0.1:%d" % port, subprocess.Popen(
                [sys.executable, "-m", "kv.serve", "--workers", "2", "--threads", "16",
                 "127.0.0.1:%d" % port], cwd=ROOT, env=dict(os.environ, KV_CONFIG=config),
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        for name, (url, _) in services.items():
            wait(url + "/health")
            loader = bulk.Loader(Namespace(url=url, timeout=60, connections=4))
            bulk.run_chunks("load", [[(k, v, None) for k, v in rows[i:i + 1000]]
                                     for i in range(0, len(rows), 1000)], loader.put, 4)
        print("  loaded %d keys into each database in %.0f s" % (
            len(rows), time.monotonic() - started), flush=True)
        mariadb = lambda: [s.process.pid for s in servers]   # noqa: E731
        found, watched, failed_closes = {}, [], {}
        names = [name for name, _, _ in DATABASES]

        def run(label, name, mode, closing=False, watcher=False, **kw):
            url, process = services[name]
            groups = {"service": lambda: children(process.pid), "mariadb": mariadb}
            args = ("feed %s, %s" % (label, name) + (", closing" if closing else "")
                    + (" + watcher" if watcher else ""), url, mode, paths, groups, seconds, 1)
            if watcher:
                row, counts = _watched_run(url, servers, partitions[name], measure, args)
                watched.append(counts)
            elif closing:
                _close_all(partitions[name])
                with _Closer(partitions[name]) as closer:
                    row = measure(*args, **kw)
                failed_closes[row["workload"]] = failed_closes.get(row["workload"], 0) + closer.failed
            else:
                _close_all(partitions[name])
                row = measure(*args, **kw)
            found.setdefault(row["workload"], []).append(row)
            wait_idle(groups)

        for round_ in range(rounds):
            order = names if round_ % 2 == 0 else names[::-1]
            steps = [("PUT", "put", {}), ("PUT", "put", {"watcher": True}),
                     ("POST /batch (keys/s)", "batch", {"bodies": bodies, "per_request": 1000}),
                     ("POST /batch (keys/s)", "batch",
                      {"bodies": bodies, "per_request": 1000, "closing": True})]
            for label, mode, kw in (steps if round_ % 2 == 0 else steps[::-1]):
                if kw.get("watcher"):
                    run(label, "with index", mode, **kw)
                    continue
                for name in order:
                    run(label, name, mode, **kw)
        for row in _direct_runs(servers, partitions, 2):
            found[row["workload"]] = [row]
    finally:
        quiet.setLevel(level)
        for _, process in services.values():
            process.terminate()
            process.wait()
        for group in partitions.values():
            for partition in group:
                partition.close()
        for server in servers:          # leave the servers as they were for the rest of the bench
            for _, database, _ in DATABASES:
                server.execute("DROP DATABASE IF EXISTS %s" % database)
    for name, rows_ in found.items():
        row = _median_row(name, rows_)
        if name.endswith("+ watcher"):
            row["watcher"] = {k: sum(c[k] for c in watched) for k in
                              ("entries", "distinct_received", "acknowledged", "distinct_written",
                               "missing", "incomplete_pages")}
            row["watcher"]["statuses"] = {}
            for c in watched:
                for status, n in c["statuses"].items():
                    row["watcher"]["statuses"][status] = row["watcher"]["statuses"].get(status, 0) + n
            row["watcher"]["caught_up"] = all(c["caught_up"] for c in watched)
        if name in failed_closes:
            row["failed_closes"] = failed_closes[name]
        table.append(row)
    print("  the change feed part took %.0f s" % (time.monotonic() - started), flush=True)


def _per_write_us(row) -> float:
    """MariaDB's CPU microseconds per write (per key for POST /batch)."""
    return row["cpu"]["mariadb"] / row["rate"] * 1e6


def _pair(by, label, unit, suffix="") -> str:
    a = by["feed %s, with index%s" % (label, suffix)]
    b = by["feed %s, without index%s" % (label, suffix)]
    line = ("with=%.0f %s without=%.0f %s without/with=%.3f; MariaDB CPU/write with=%.0f us "
            "without=%.0f us; errors %d/%d" % (a["rate"], unit, b["rate"], unit,
                                               b["rate"] / a["rate"], _per_write_us(a),
                                               _per_write_us(b), a["errors"], b["errors"]))
    if "failed_closes" in a:
        line += "; closes that timed out %d/%d" % (a["failed_closes"], b.get("failed_closes", 0))
    return line


def _direct(by, mode) -> str:
    a, b = by["feed direct %s, with index" % mode], by["feed direct %s, without index" % mode]
    return "with=%.1f us without=%.1f us (%+.1f us, %+.0f%%)" % (
        _per_write_us(a), _per_write_us(b), _per_write_us(a) - _per_write_us(b),
        (_per_write_us(a) / _per_write_us(b) - 1) * 100)


def feed_summary(by) -> str:
    """The lines of the change feed's figures (see the module docstring)."""
    batch = "POST /batch (keys/s)"
    plain, watched = by["feed PUT, with index"], by["feed PUT, with index + watcher"]
    counts = watched["watcher"]
    return "\n".join((
        "feed index, MariaDB CPU per key written, every write moving its entry (partition-1, "
        "no HTTP): write_many of 1,000 %s; single-key writes %s" % (
            _direct(by, "batch"), _direct(by, "put")),
        "feed index PUT: " + _pair(by, "PUT", "req/s"),
        "feed index POST /batch: " + _pair(by, batch, "keys/s"),
        "feed index POST /batch, epochs closed every 50 ms: " + _pair(by, batch, "keys/s",
                                                                     ", closing"),
        "feed watcher PUT: with=%.0f req/s without=%.0f req/s without/with=%.3f; MariaDB "
        "CPU/write with=%.0f us without=%.0f us; errors %d" % (
            watched["rate"], plain["rate"], plain["rate"] / watched["rate"],
            _per_write_us(watched), _per_write_us(plain), watched["errors"]),
        "feed watcher entries: received=%d (%d distinct keys) writes acknowledged=%d distinct "
        "keys written=%d missing=%d; watcher answers not 200: %s; incomplete pages %d; %s" % (
            counts["entries"], counts["distinct_received"], counts["acknowledged"],
            counts["distinct_written"], counts["missing"], counts["statuses"] or "none",
            counts["incomplete_pages"], "caught up" if counts["caught_up"] else "NOT caught up")))
