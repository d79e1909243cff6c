"""GET /metrics and the access log (API.md "Metrics"; issue 13, "Metrics"
and "The edge").

- :class:`ServedMetricsTest`: the production start command, ``python -m
  kv.serve`` (granian, 2 workers) on two real MariaDB partitions, over real
  sockets: one scrape sums what both workers served, ``route`` holds
  templates, the query and sync gauges are there, ``kv_partition_up``
  drops to 0 while a partition's mariadbd is stopped, and a ``kill -9`` of
  a worker leaves the server answering (respawned) with its counts kept.
- :class:`DevelopmentServerTest`: ``python controller.py PORT`` (one
  process) with authentication on: /metrics needs ``read`` on ``_metrics``
  (or admin), the access log has one logfmt line per request with the
  principal, OpenMetrics when asked.
- :class:`RouteTemplateTest`, :class:`PrepareTest`, :class:`PublicMetricsTest`:
  in-process checks of the route templates, of the start command's
  directory and of ``[metrics] public`` and ``enabled``.
"""

import concurrent.futures
import contextlib
import glob
import io
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import unittest

import paste.fixture
import requests
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

import controller
import dbservers
from kv import metrics
from kv.http.monitoring import RouteTable, UNKNOWN_ROUTE
from kv.serve import prepare
from test_api import pep3333
from test_server import ROOT, ServedProcess

BUCKET, SECRET_KEY = "tenant-zq71", "secret-key-k93"
TEMPLATES = ("/keys/{key}", "/keys", "/buckets/{bucket}/keys/{key}", "/buckets/{bucket}/keys",
             "/buckets/{app}:*/keys/{key}", "/buckets", "/batch", "/health", "/metrics",
             "/auth/users/{name}", "/auth/apps/{id}", "/auth/tokens/{id}", "/auth/rules/{id}")


def samples(text: str, name: str) -> dict:
    """{frozenset of label items: value} of the samples called ``name``."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                found[frozenset(sample.labels.items())] = sample.value
    return found


def value(text: str, name: str, **labels) -> float:
    """The one sample ``name`` with exactly ``labels`` (AssertionError when absent)."""
    found = samples(text, name).get(frozenset(labels.items()))
    if found is None:
        raise AssertionError("no %s%s in:\n%s" % (name, labels, text[:3000]))
    return found


def children(pid: int) -> set:
    """The pids of the child processes of ``pid`` (granian's workers)."""
    found = set()
    for task in glob.glob("/proc/%d/task/*/children" % pid):
        with open(task) as f:
            found.update(int(p) for p in f.read().split())
    return found


class ServedMetricsTest(unittest.TestCase):
    """``python -m kv.serve --workers 2`` on two shared MariaDB servers."""

    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.mkdtemp(prefix="kv-metrics-")
        cls.addClassCleanup(shutil.rmtree, cls.dir, True)
        cls.servers = dbservers.shared(2)
        for server in cls.servers:
            server.execute("DELETE FROM kv_rows")
            server.execute("DELETE FROM kv_sync_state")
        cls.config = dbservers.write_config(
            os.path.join(cls.dir, "c.cfg"), cls.servers, replicas=1,
            extra="[metrics]\ndirectory = metrics\naccess_log = access.log\n")
        cls.metrics_dir = os.path.join(cls.dir, "metrics")
        os.makedirs(cls.metrics_dir)
        with open(os.path.join(cls.metrics_dir, "counter_999999.db"), "wb") as f:
            f.write(b"left by an earlier run")         # the start command empties it
        port = dbservers.free_port()
        cls.server = ServedProcess([sys.executable, "-m", "kv.serve", "--workers", "2",
                                    "--threads", "4", "127.0.0.1:%d" % port], cls.config, port)
        cls.addClassCleanup(cls.server.stop)
        cls.url = cls.server.url

    def scrape(self, **headers) -> str:
        answer = requests.get(self.url + "/metrics", headers=headers, timeout=10)
        self.assertEqual(answer.status_code, 200, answer.text[:500])
        return answer.text

    def put_many(self, count: int, prefix: str) -> None:
        """``count`` PUTs, 8 at a time, each on a new connection (so both workers take some)."""
        def put(i):
            return requests.put("%s/buckets/%s/keys/%s-%s-%d" % (self.url, BUCKET, SECRET_KEY,
                                                                 prefix, i),
                                data=b"v", headers={"Content-Type": "text/plain"},
                                timeout=10).status_code
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            self.assertEqual(set(pool.map(put, range(count))), {201})

    def per_worker(self, route: str, method: str, code: str) -> dict:
        """pid -> kv_http_requests_total of (method, route, code) in that worker's file."""
        counts = {}
        for path in glob.glob(os.path.join(self.metrics_dir, "counter_*.db")):
            pid = int(path[:-3].rpartition("_")[2])
            for family in MultiProcessCollector.merge([path]):
                for s in family.samples:
                    if s.name == "kv_http_requests_total" and s.labels == {
                            "method": method, "route": route, "code": code}:
                        counts[pid] = counts.get(pid, 0) + s.value
        return counts

    def test_one_scrape_sums_both_workers_by_route_template(self):
        self.assertFalse(os.path.exists(os.path.join(self.metrics_dir, "counter_999999.db")))
        route = "/buckets/{bucket}/keys/{key}"
        sent = 0
        for attempt in range(5):              # until both workers have served some
            self.put_many(60, "sum%d" % attempt)
            sent += 60
            counts = self.per_worker(route, "PUT", "201")
            if len([c for c in counts.values() if c]) >= 2:
                break
        self.assertGreaterEqual(len([c for c in counts.values() if c]), 2, counts)
        text = self.scrape()
        self.assertEqual(value(text, "kv_http_requests_total", method="PUT", route=route,
                               code="201"), sent)
        self.assertEqual(sum(counts.values()), sent)
        self.assertEqual(value(text, "kv_http_request_duration_seconds_count", method="PUT",
                               route=route), sent)
        requests.get(self.url + "/no/such/" + SECRET_KEY, timeout=10)
        text = self.scrape()
        self.assertEqual(value(text, "kv_http_requests_total", method="GET",
                               route=UNKNOWN_ROUTE, code="404"), 1)
        self.assertNotIn(SECRET_KEY, text)
        self.assertNotIn(BUCKET, text)
        routes = {dict(labels)["route"] for labels in samples(text, "kv_http_requests_total")}
        self.assertTrue(routes <= set(controller._ROUTES.templates()), routes)
        self.assertGreater(value(text, "kv_partition_query_duration_seconds_count",
                                 partition="partition-1", op="write"), 0)
        deadline = time.monotonic() + 10      # each worker's writer thread writes every 0.1 s
        while True:
            with open(os.path.join(self.dir, "access.log")) as f:
                lines = [line for line in f if "route=/buckets/{bucket}/keys/{key}" in line]
            if len(lines) >= sent or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        self.assertEqual(len(lines), sent)           # both workers write to one file
        self.assertRegex(lines[0], r"^time=\S+Z method=PUT route=/buckets/\{bucket\}/keys/\{key\} "
                                   r"status=201 bytes=\d+ duration_ms=[0-9.]+ remote=127\.0\.0\.1$")
        self.assertNotIn(SECRET_KEY, "".join(lines))

    def test_openmetrics_when_asked(self):
        answer = requests.get(self.url + "/metrics", timeout=10, headers={
            "Accept": "application/openmetrics-text;version=1.0.0,text/plain;q=0.5"})
        self.assertEqual(answer.status_code, 200)
        self.assertTrue(answer.headers["Content-Type"].startswith(
            "application/openmetrics-text; version=1.0.0"), answer.headers)
        self.assertTrue(answer.text.endswith("# EOF\n"))
        plain = requests.get(self.url + "/metrics", timeout=10)
        self.assertTrue(plain.headers["Content-Type"].startswith("text/plain; version=0.0.4"))

    def test_sync_gauges_after_a_pass(self):
        self.put_many(4, "sync")
        before = time.time()
        done = subprocess.run([sys.executable, "sync.py", "--config", self.config], cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=120)
        self.assertEqual(done.returncode, 0, done.stdout.decode()[-2000:])
        text = self.scrape()
        last = value(text, "kv_sync_last_pass_timestamp_seconds")
        self.assertLess(abs(last - time.time()), 60)       # the partitions' clocks: this host's
        self.assertGreaterEqual(last, before - 5)
        for name in ("partition-1", "partition-2"):
            age = value(text, "kv_sync_watermark_age_seconds", partition=name)
            self.assertGreaterEqual(age, 0)
            self.assertLess(age, 60)

    def test_partition_up_is_0_while_its_mariadbd_is_stopped(self):
        text = self.scrape()
        self.assertEqual(value(text, "kv_partition_up", partition="partition-2"), 1)
        self.servers[1].stop()
        try:
            text = self.scrape()
            self.assertEqual(value(text, "kv_partition_up", partition="partition-2"), 0)
            self.assertEqual(value(text, "kv_partition_up", partition="partition-1"), 1)
            errors = samples(text, "kv_partition_errors_total")
            self.assertTrue(any(dict(labels)["partition"] == "partition-2"
                                for labels in errors), errors)
        finally:
            self.servers[1].start()
        deadline = time.monotonic() + 30       # marked down for retry_interval_seconds
        while value(self.scrape(), "kv_partition_up", partition="partition-2") != 1:
            self.assertLess(time.monotonic(), deadline, "partition-2 did not come back")
            time.sleep(0.5)
        self.wait_for_writes()

    def wait_for_writes(self):
        """Until PUTs succeed again: after a restart of mariadbd each worker's
        pooled connections fail once each (and mark the partition down for
        retry_interval_seconds) before new ones replace them."""
        deadline, good = time.monotonic() + 60, 0
        while good < 10:
            self.assertLess(time.monotonic(), deadline, "writes did not come back")
            status = requests.put("%s/keys/recover-%d" % (self.url, good), data=b"v", timeout=10,
                                  headers={"Content-Type": "text/plain"}).status_code
            good = good + 1 if status == 201 or status == 200 else 0
            if not good:
                time.sleep(0.3)

    def test_z_kill_9_of_a_worker_is_respawned_and_its_counts_stay(self):
        master = self.server.process.pid           # kv.serve exec'd granian: same process
        workers = children(master)
        self.assertEqual(len(workers), 2, workers)
        self.put_many(20, "kill")
        before = value(self.scrape(), "kv_http_requests_total", method="PUT",
                       route="/buckets/{bucket}/keys/{key}", code="201")
        victim = min(workers)
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while True:
            alive = children(master)
            if victim not in alive and len(alive) == 2:
                try:
                    if requests.get(self.url + "/health", timeout=5).status_code == 200:
                        break
                except requests.ConnectionError:
                    pass
            self.assertIsNone(self.server.process.poll(), "granian exited:\n"
                              + self.server.output()[-3000:])
            self.assertLess(time.monotonic(), deadline, self.server.output()[-3000:])
            time.sleep(0.2)
        for _ in range(20):                       # both workers answer
            self.assertEqual(requests.get(self.url + "/health", timeout=5).status_code, 200)
        self.assertIsNone(self.server.process.poll())
        self.assertIn("Respawning worker", self.server.output())
        after = value(self.scrape(), "kv_http_requests_total", method="PUT",
                      route="/buckets/{bucket}/keys/{key}", code="201")
        self.assertEqual(after, before)            # the dead worker's counts are kept


SQLITE_CONFIG = """[server]
[cluster]
partitions = 2
replicas = 1
[partition-1]
engine = sqlite
path = p1.sqlite3
[partition-2]
engine = sqlite
path = p2.sqlite3
"""


class DevelopmentServerTest(unittest.TestCase):
    """``python controller.py PORT`` with authentication on (SQLite partitions)."""

    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.mkdtemp(prefix="kv-metrics-dev-")
        cls.addClassCleanup(shutil.rmtree, cls.dir, True)
        cls.config = os.path.join(cls.dir, "c.cfg")
        with open(cls.config, "w") as f:
            f.write(SQLITE_CONFIG + "[auth]\nenabled = true\nrefresh_seconds = 1\n"
                    "[metrics]\naccess_log = logs/access.log\n")
        cls.admin = {"Authorization": "Bearer " + dbservers.bootstrap_admin(cls.config)}
        port = dbservers.free_port()
        cls.server = ServedProcess([sys.executable, "controller.py", "127.0.0.1:%d" % port],
                                   cls.config, port)
        cls.addClassCleanup(cls.server.stop)
        cls.url = cls.server.url

    def call(self, method, path, headers=None, **kwargs):
        return requests.request(method, self.url + path, headers=headers, timeout=10, **kwargs)

    def user_token(self, name: str) -> dict:
        self.assertEqual(self.call("PUT", "/auth/users/" + name, self.admin,
                                   json={"password": "pw-" + name}).status_code, 201)
        answer = self.call("POST", "/auth/tokens", self.admin, json={"principal": "user:" + name})
        self.assertEqual(answer.status_code, 201, answer.text)
        return {"Authorization": "Bearer " + answer.json()["token"]}

    def test_metrics_need_read_on_the_metrics_scope(self):
        anonymous = self.call("GET", "/metrics")
        self.assertEqual(anonymous.status_code, 401)
        self.assertIn("Bearer", anonymous.headers["WWW-Authenticate"])
        scraper, other = self.user_token("scraper"), self.user_token("nobody")
        self.assertEqual(self.call("GET", "/metrics", scraper).status_code, 403)
        rule = self.call("POST", "/auth/rules", self.admin, json={
            "effect": "allow", "principal": "user:scraper", "verbs": ["read"],
            "bucket": "_metrics", "keys": "#"})
        self.assertEqual(rule.status_code, 201, rule.text)
        everything = self.call("POST", "/auth/rules", self.admin, json={
            "effect": "allow", "principal": "user:nobody", "verbs": ["read"],
            "bucket": "*", "keys": "#"})
        self.assertEqual(everything.status_code, 201, everything.text)
        answer = self.call("GET", "/metrics", scraper)
        self.assertEqual(answer.status_code, 200, answer.text)
        self.assertEqual(self.call("GET", "/metrics", other).status_code, 403)  # * is not it
        self.assertEqual(self.call("GET", "/buckets/_metrics/keys/x", scraper).status_code, 404)
        self.assertEqual(self.call("GET", "/metrics", self.admin).status_code, 200)
        text = self.call("GET", "/metrics", self.admin).text
        self.assertGreaterEqual(value(text, "kv_auth_requests_total", scheme="bearer",
                                      result="ok"), 3)
        self.assertGreaterEqual(value(text, "kv_auth_requests_total", scheme="none",
                                      result="anonymous"), 1)

    def test_access_log_line_per_request_with_principal(self):
        put = self.call("PUT", "/buckets/logged/keys/" + SECRET_KEY,
                        dict(self.admin, **{"Content-Type": "text/plain"}), data=b"12345")
        self.assertEqual(put.status_code, 201, put.text)
        got = self.call("GET", "/buckets/logged/keys/" + SECRET_KEY, self.admin)
        self.assertEqual(self.call("HEAD", "/nowhere").status_code, 404)
        path = os.path.join(self.dir, "logs", "access.log")
        deadline = time.monotonic() + 10               # written by a background thread
        while True:
            lines = open(path).read().splitlines() if os.path.exists(path) else []
            mine = [line for line in lines if "route=/buckets/{bucket}/keys/{key}" in line
                    or "route=unknown" in line]
            if len(mine) >= 3 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        self.assertEqual(len(mine), 3, lines)
        put, get, head = mine
        self.assertRegex(put, r"method=PUT route=/buckets/\{bucket\}/keys/\{key\} status=201 "
                              r"bytes=\d+ duration_ms=[0-9.]+ principal=user:root remote=127\.0\.0\.1$")
        self.assertIn(" bytes=%d " % len(got.content), get)
        self.assertRegex(head, r"method=HEAD route=unknown status=404 bytes=0 .* principal=- ")
        self.assertNotIn(SECRET_KEY, "\n".join(lines))
        text = self.call("GET", "/metrics", self.admin).text
        self.assertEqual(value(text, "kv_http_requests_total", method="PUT",
                               route="/buckets/{bucket}/keys/{key}", code="201"), 1)
        self.assertEqual(value(text, "kv_partition_up", partition="partition-1"), 1)


class PublicMetricsTest(unittest.TestCase):
    """In-process: ``[metrics] public = true`` and ``enabled = false``."""

    def app(self, section: str):
        config = dbservers.temp_config(self, SQLITE_CONFIG + "[auth]\nenabled = true\n"
                                       "[metrics]\naccess_log = off\n" + section)
        self.addCleanup(metrics.enable, metrics.enabled())   # as the other tests had it
        wsgi = controller.create_application(config)
        self.addCleanup(wsgi.store.close)
        return paste.fixture.TestApp(pep3333(wsgi))

    def test_public_needs_no_credentials(self):
        answer = self.app("public = true\n").get("/metrics", status="*")
        self.assertEqual(answer.status, 200)
        self.assertIn("kv_partition_up", answer.body.decode())

    def test_disabled_is_404(self):
        answer = self.app("enabled = false\npublic = true\n").get("/metrics", status="*")
        self.assertEqual(answer.status, 404)


class RouteTemplateTest(unittest.TestCase):
    """The templates come from controller.URLS (no second list)."""

    def test_every_route_has_a_template_that_its_pattern_matches(self):
        table = controller._ROUTES
        templates = table.templates()
        for expected in TEMPLATES:
            self.assertIn(expected, templates)
        self.assertEqual(templates[-1], UNKNOWN_ROUTE)
        for (pattern, route, by_choice, _) in table.routes[:-1]:
            for template in by_choice.values():
                path = re.sub(r"\{[a-z]+\}", "x", template)
                self.assertEqual(table.match(path), (route, template), pattern.pattern)

    def test_paths_map_to_templates(self):
        table = RouteTable(controller.URLS, catch_all=controller.Unknown)
        for path, template in (("/keys/a/b%2Fc", "/keys/{key}"),
                               ("/buckets/notes:al/keys/x/y", "/buckets/{bucket}/keys/{key}"),
                               ("/buckets/notes:*/keys/k", "/buckets/{app}:*/keys/{key}"),
                               ("/auth/users/bob", "/auth/users/{name}"),
                               ("/auth/apps/notes", "/auth/apps/{id}"),
                               ("/somewhere/else", UNKNOWN_ROUTE), ("/keys", "/keys")):
            self.assertEqual(table.match(path)[1], template, path)


class PrepareTest(unittest.TestCase):
    """The start command's preparation (kv.serve.prepare), without granian."""

    def test_directory_is_created_and_emptied_of_db_files_only(self):
        config = dbservers.temp_config(self, SQLITE_CONFIG + "[metrics]\ndirectory = run/metrics\n")
        folder = os.path.dirname(config)
        os.makedirs(os.path.join(folder, "run", "metrics"))
        for name in ("counter_12.db", "histogram_12.db", "keep.txt"):
            open(os.path.join(folder, "run", "metrics", name), "w").close()
        environ = {}
        self.assertEqual(prepare(config, environ), 0)
        self.assertEqual(environ["PROMETHEUS_MULTIPROC_DIR"], os.path.join(folder, "run",
                                                                           "metrics"))
        self.assertEqual(environ["KV_CONFIG"], config)
        self.assertEqual(os.listdir(environ["PROMETHEUS_MULTIPROC_DIR"]), ["keep.txt"])
        with open(config, "a") as f:
            f.write("enabled = false\n")
        environ = {"PROMETHEUS_MULTIPROC_DIR": "/elsewhere"}
        self.assertEqual(prepare(config, environ), 0)
        self.assertNotIn("PROMETHEUS_MULTIPROC_DIR", environ)
        with open(config, "a") as f:
            f.write("directroy = x\n")
        with contextlib.redirect_stderr(io.StringIO()) as said:
            self.assertEqual(prepare(config, {}), 2)    # a typo stops the start
        self.assertIn("directroy", said.getvalue())


if __name__ == "__main__":
    unittest.main()
