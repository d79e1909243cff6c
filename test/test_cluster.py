"""A cluster of three real MariaDB partitions with replicas = 2: spread of
keys, ``kill -9`` of one server, recovery, and hostile input."""

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.parse

import paste.fixture

import controller
import dbservers
import sync
from test_api import pep3333

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
JSON = {"Content-Type": "application/json"}


class ClusterTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.mkdtemp(prefix="kv-cluster-")
        cls.servers = [dbservers.MariaDB("cluster-%d" % i).start() for i in (1, 2, 3)]
        cls.config = dbservers.write_config(os.path.join(cls.dir, "c.cfg"), cls.servers, replicas=2)
        # The documented command creates the schema on every partition, twice to show idempotence.
        for _ in range(2):
            done = subprocess.run([sys.executable, "datastore.py", "schema"], cwd=ROOT,
                                  env=dict(os.environ, KV_CONFIG=cls.config),
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            assert done.returncode == 0, done.stdout.decode()
            assert done.stdout.decode().count("schema applied") == 3, done.stdout.decode()

    @classmethod
    def tearDownClass(cls):
        for server in cls.servers:
            server.stop()
        shutil.rmtree(cls.dir, ignore_errors=True)

    def setUp(self):
        for server in self.servers:
            if server.process.poll() is not None:
                server.start()
            server.execute("DELETE FROM kv_rows")
        self.wsgi = controller.create_application(self.config)
        self.addCleanup(self.wsgi.store.close)
        self.app = paste.fixture.TestApp(pep3333(self.wsgi))

    def req(self, method, path, body=b"", headers=None):
        response = self.app._gen_request(method, path, params=body, headers=headers or {},
                                         status="*", expect_errors=True)
        self.assertLess(response.status, 500 if response.status != 503 else 504, response.body)
        return response

    def load(self, keys):
        for start in range(0, len(keys), 1000):
            ops = [{"op": "put", "key": key, "value": "value of " + key}
                   for key in keys[start:start + 1000]]
            response = self.req("POST", "/batch", json.dumps({"ops": ops}).encode(), JSON)
            self.assertEqual(response.status, 200)
            self.assertEqual({r["status"] for r in json.loads(response.body)["results"]}, {201})

    def rows(self):
        """Every row of every partition, for before/after comparisons."""
        return [server.execute("SELECT bucket, k, value, version, modified_us, deleted, expires_us"
                               " FROM kv_rows ORDER BY bucket, k") for server in self.servers]

    def test_10000_keys_spread_within_15_percent_of_even(self):
        keys = ["user:%05d" % i for i in range(10000)]
        self.load(keys)
        counts = [server.execute("SELECT COUNT(*) FROM kv_rows")[0][0] for server in self.servers]
        self.assertEqual(sum(counts), 10000)
        for count in counts:
            self.assertLess(abs(count - 10000 / 3) / (10000 / 3), 0.15, counts)
        store = self.wsgi.store
        for key in keys[:200]:
            response = self.req("GET", "/keys/" + key)
            self.assertEqual(response.header("X-Partition"),
                             store.placement(b"default", key.encode())[0].name)
        seen, cursor = 0, ""
        while True:
            page = json.loads(self.req("GET", "/keys?limit=1000" + cursor).body)
            seen += len(page["items"])
            if not page["next"]:
                break
            cursor = "&cursor=" + page["next"]
        self.assertEqual(seen, 10000)

    def test_kill_9_of_one_server_then_restart(self):
        store = self.wsgi.store
        keys = ["k%03d" % i for i in range(300)]
        self.load(keys)
        self.servers[0].kill()
        dead = "partition-1"
        placed = {key: [p.name for p in store.placement(b"default", key.encode())] for key in keys}
        slowest = 0.0
        for key in keys:
            started = time.monotonic()
            response = self.req("GET", "/keys/" + key)
            elapsed = time.monotonic() - started
            if placed[key][0] != dead:
                self.assertEqual(response.status, 200)
                self.assertEqual(response.header("X-Partition"), placed[key][0])
            else:
                slowest = max(slowest, elapsed)
                self.assertEqual(response.status, 503, key)
                self.assertEqual(response.header("Retry-After"), "2")
                self.assertIn("partition-1", json.loads(response.body)["error"]["message"])
        print("\n  kill -9: slowest 503 took %.3f s" % slowest, file=sys.stderr)
        # Every key has a live placement, so every write succeeds.
        for key in keys:
            response = self.req("PUT", "/keys/" + key, b"new " + key.encode(),
                                {"Content-Type": "text/plain"})
            self.assertIn(response.status, (200, 201), key)
            self.assertNotEqual(response.header("X-Partition"), dead)
            self.assertEqual(self.req("GET", "/keys/%s?format=raw" % key).body, b"new " + key.encode())
        health = json.loads(self.req("GET", "/health").body)
        self.assertEqual([p["name"] for p in health["partitions"] if not p["up"]], [dead])
        listing = self.req("GET", "/keys?limit=1000")
        self.assertEqual(listing.status, 200)
        self.assertEqual(listing.header("X-Partitions-Unavailable"), dead)

        self.servers[0].start()
        deadline = time.monotonic() + 30
        while self.req("GET", "/health").status != 200:
            self.assertLess(time.monotonic(), deadline, "partition-1 did not come back")
            time.sleep(0.2)
        for key in keys:
            response = self.req("GET", "/keys/%s?format=raw" % key)
            self.assertEqual(response.status, 200, key)
            # Until sync.py copies the newer value, the owner may serve its older one.
            self.assertIn(response.body, (b"value of " + key.encode(), b"new " + key.encode()))
        # One sync pass leaves the newest value on every placement.
        out = io.StringIO()
        self.assertEqual(sync.run(self.wsgi.store, out=out), 0, out.getvalue())
        for key in keys:
            self.assertEqual(self.req("GET", "/keys/%s?format=raw" % key).body, b"new " + key.encode())
        self.assertEqual(sync.run(self.wsgi.store, check=True, out=out), 0, out.getvalue())

    def test_hostile_input_changes_nothing_and_never_500s(self):
        self.load(["alpha", "beta", "gamma/delta"])
        before = self.rows()
        text = {"Content-Type": "text/plain"}
        xml = {"Content-Type": "application/xml"}
        bomb = (b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
                + b"".join(b'<!ENTITY lol%d "%s">' % (i, (b"&lol%d;" % (i - 1) if i else b"&lol;") * 10)
                           for i in range(1, 10))
                + b']><record><value>&lol9;</value></record>')
        attempts = [
            ("PUT", "/keys/alpha", b'{"value": "x"', JSON),
            ("PUT", "/keys/alpha", b'{"value": "\xff\xfe"}', JSON),
            ("PUT", "/keys/alpha", bomb, xml),
            ("PUT", "/keys/alpha", b'<!DOCTYPE r [<!ENTITY x SYSTEM "http://127.0.0.1:1/">]>'
                                   b'<record><value>&x;</value></record>', xml),
            ("PUT", "/keys/alpha", b"value=%FF%FE", {"Content-Type": "application/x-www-form-urlencoded"}),
            ("PUT", "/keys/alpha", b"v", {"Content-Type": "application/x-shockwave-flash"}),
            ("PUT", "/keys/alpha?ttl=1%27%20OR%201=1", b"v", text),
            ("PUT", "/keys/alpha", b"v", {"If-Match": "' OR 1=1 --", **text}),
            ("PUT", "/keys/" + "x" * 600, b"v", text),
            ("PUT", "/keys/a%00b", b"v", text),
            ("POST", "/keys", b'{"key": "alpha", "value": "overwrite?"}', JSON),
            ("POST", "/batch", b'{"ops": [{"op": "delete", "key": "alpha"}, {"op": "drop"}]}', JSON),
            ("DELETE", "/keys/alpha", b"", {"If-Match": '"not-the-etag"'}),
            ("GET", "/keys?cursor=%27%3B%20DROP%20TABLE%20kv_rows", b"", {}),
            ("GET", "/keys?limit=1;DROP", b"", {}),
            ("GET", "/keys?prefix=%FF", b"", {}),
        ]
        for method, path, body, headers in attempts:
            response = self.req(method, path, body, headers)
            self.assertGreaterEqual(response.status, 400, (method, path, response.body))
        environ = {"REQUEST_METHOD": "PUT", "PATH_INFO": "/keys/alpha", "QUERY_STRING": "",
                   "CONTENT_LENGTH": "99999999999999", "CONTENT_TYPE": "text/plain",
                   "SERVER_NAME": "t", "SERVER_PORT": "80", "wsgi.input": io.BytesIO(b"tiny"),
                   "wsgi.url_scheme": "http", "SERVER_PROTOCOL": "HTTP/1.1"}
        statuses = []
        b"".join(self.wsgi(environ, lambda status, headers: statuses.append(status)))
        self.assertEqual(statuses, ["413 Content Too Large"])
        self.assertEqual(self.rows(), before)
        # SQL metacharacters are ordinary bytes of keys, values and prefixes.
        for key in ("'; DROP TABLE kv_rows; --", "a\\b", "100%", "_x_", '"quoted"', "`tick`"):
            path = "/keys/" + urllib.parse.quote(key, safe="")
            self.assertEqual(self.req("PUT", path, key.encode() + b"' OR '1'='1", text).status, 201)
            self.assertEqual(self.req("GET", path + "?format=raw").body, key.encode() + b"' OR '1'='1")
        for prefix, expected in (("%", []), ("10", ["100%"]), ("_", ["_x_"]),
                                 ("'", ["'; DROP TABLE kv_rows; --"])):
            listing = json.loads(self.req("GET", "/keys?prefix=" + urllib.parse.quote(prefix)).body)
            self.assertEqual([i["key"] for i in listing["items"]], expected)
        self.assertEqual(self.req("GET", "/keys/alpha?format=raw").body, b"value of alpha")

    def test_a_hung_server_costs_one_timeout_then_fails_fast(self):
        self.load(["hang-%d" % i for i in range(60)])
        owned = [k for k in ("hang-%d" % i for i in range(60))
                 if self.wsgi.store.placement(b"default", k.encode())[0].name == "partition-2"]
        self.servers[1].process.send_signal(signal.SIGSTOP)
        stat = "/proc/%d/stat" % self.servers[1].process.pid
        while open(stat).read().rpartition(")")[2].split()[0] != "T":   # delivered: stopped
            time.sleep(0.01)
        try:
            timings = []
            for key in owned[:5]:
                started = time.monotonic()
                response = self.req("GET", "/keys/" + key)
                timings.append(time.monotonic() - started)
                self.assertEqual(response.status, 503)
                self.assertEqual(response.header("Retry-After"), "2")
            print("\n  SIGSTOP: 503 after %s s" % ", ".join("%.3f" % t for t in timings),
                  file=sys.stderr)
            # After the first timeout the partition counts as down: no more waiting on it.
            self.assertGreater(self.wsgi.store.partitions["partition-2"]._down_until, time.monotonic())
        finally:
            self.servers[1].process.send_signal(signal.SIGCONT)
        deadline = time.monotonic() + 30
        while self.req("GET", "/keys/" + owned[0]).status != 200:
            self.assertLess(time.monotonic(), deadline, "partition-2 did not come back")
            time.sleep(0.2)
