"""The change feed (API.md "Change feed (watch)") on real MariaDB partitions:
3 partitions, replicas = 2, then a 4th; the data layer in process, the HTTP
side through a served process over sockets."""

import io
import os
import shutil
import sys
import tempfile
import threading
import time
import unittest
import urllib.parse

import MySQLdb
import requests

import dbservers
import sync
from datastore import Datastore
from kv.cluster.changes import FeedCursor
from kv.errors import CursorExpired, InvalidRequest, KeyNotFound
from kv.records import now_us
from test_server import ServedProcess

DB = "kv_feed"
FEED, OTHER = b"feed", b"other"


def drain(store, bucket, since, **options):
    """Every entry from ``since`` until a page comes back empty:
    (list of records, the last cursor)."""
    entries = []
    while True:
        page = store.changes(bucket, since, limit=options.pop("limit", 1000), **options)
        entries += page.changes
        since = page.cursor.encode()
        if not page.changes and not page.more:
            return entries, since


class FeedHarness:
    """The test file's own database on 4 shared servers; stores of 3 or 4 partitions."""

    @classmethod
    def setUpClass(cls):
        cls.views = dbservers.fresh_database(DB, 4)
        cls.dir = tempfile.mkdtemp(prefix="kv-feed-")

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.dir, True)

    def setUp(self):
        for view in self.views:
            for table in ("kv_rows", "kv_sync_state"):
                view.server.execute("DELETE FROM %s.%s" % (DB, table))

    def config(self, count, extra="", replicas=2):
        return dbservers.write_config(os.path.join(self.dir, "c%d-%d.cfg" % (count, replicas)),
                                      self.views[:count], replicas, extra)

    def store(self, count=3, replicas=2):
        store = Datastore.from_config(self.config(count, replicas=replicas))
        self.addCleanup(store.close)
        return store


class FeedTest(FeedHarness, unittest.TestCase):

    def test_every_write_of_four_threads_reaches_a_watcher(self):
        store = self.store()
        start = store.changes(FEED, "now").cursor.encode()
        final, done = {}, threading.Event()
        received, errors = {}, []

        def writer(t):
            """2,500 writes: 500 single PUTs and DELETEs, then 2,000 batch
            ops (puts, 50 a batch); some keys are written 2 or 3 times."""
            try:
                for i in range(500):
                    key = b"t%d/%04d" % (t, i % 450)
                    if i % 10 == 9:                             # delete the one just written
                        key = b"t%d/%04d" % (t, (i - 1) % 450)
                        record, _ = store.delete(FEED, key)
                    else:
                        record, _, _ = store.put(FEED, key, b"v%d" % i)
                    final[key] = (record.version, record.deleted)
                    if i % 25 == 0:
                        store.put(OTHER, key, b"elsewhere")
                for first in range(0, 2000, 50):
                    keys = [b"t%d/%04d" % (t, 450 + i % 450) for i in range(first, first + 50)]
                    results = store.batch(FEED, [{"op": "put", "key": k, "value": b"b"}
                                                 for k in keys])
                    for key, (record, _) in zip(keys, results):
                        final[key] = (record.version, record.deleted)
            except Exception as e:              # reported by the main thread
                errors.append(e)

        def watcher():
            since = start
            while True:
                quiet = done.is_set()
                page = store.changes(FEED, since, limit=500, wait=1)
                for r in page.changes:
                    received.setdefault(r.key, []).append((r.version, r.deleted))
                since = page.cursor.encode()
                if quiet and not page.changes and not page.more:
                    return
        follow = threading.Thread(target=watcher)
        follow.start()
        writers = [threading.Thread(target=writer, args=(t,)) for t in range(4)]
        for w in writers:
            w.start()
        for w in writers:
            w.join()
        done.set()
        follow.join(120)
        self.assertFalse(follow.is_alive())
        self.assertEqual(errors, [])
        self.assertEqual(len(final), 4 * (405 + 450))
        self.assertEqual({k: max(v) for k, v in received.items()}, final)
        print("\n10,000 writes: %d entries delivered for %d keys"
              % (sum(map(len, received.values())), len(final)), file=sys.stderr)

    def test_a_transaction_committing_two_seconds_late_is_delivered(self):
        store = self.store()
        since = drain(store, FEED, "now")[1]
        server = self.views[0].server
        conn = MySQLdb.connect(unix_socket=server.socket, user="root", database=DB)
        self.addCleanup(conn.close)
        cur = conn.cursor()
        cur.execute("START TRANSACTION")
        cur.execute("SELECT epoch INTO @e FROM kv_change_epoch WHERE id = 1 LOCK IN SHARE MODE")
        stamp = now_us()
        cur.execute("INSERT INTO kv_rows (bucket, k, value, version, created_us, modified_us,"
                    " deleted, change_epoch) VALUES (%s, 'late', 'v', 1, %s, %s, 0, @e)",
                    (FEED, stamp, stamp))
        committer = threading.Timer(2.0, conn.commit)
        committer.start()
        seen, written = [], set()
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:           # other writes go on meanwhile
            written.add(store.put(FEED, b"busy/%d" % len(written), b"x")[0].key)
            page = store.changes(FEED, since, wait=1)
            seen += [r.key for r in page.changes]
            since = page.cursor.encode()
        committer.join()
        entries, _ = drain(store, FEED, since)
        seen += [r.key for r in entries]
        self.assertIn(b"late", seen)
        self.assertEqual(written - set(seen), set())

    def test_sync_passes_and_a_new_partition_add_no_entries(self):
        store = self.store()
        since = drain(store, FEED, "now")[1]
        for i in range(300):
            store.put(FEED, b"k%03d" % i, b"v")
        entries, since = drain(store, FEED, since)
        self.assertEqual(len(entries), 300)
        for _ in range(2):
            self.assertEqual(sync.run(store, out=io.StringIO()), 0)
            self.assertEqual(drain(store, FEED, since)[0], [])
        bigger = self.store(4)
        self.assertEqual(sync.run(bigger, out=io.StringIO()), 0)
        moved = dbservers.shared(4)[3].execute("SELECT COUNT(*) FROM %s.kv_rows" % DB)[0][0]
        self.assertGreater(moved, 50)                   # rebalancing copied rows to it
        entries, since = drain(bigger, FEED, since)
        self.assertEqual(entries, [])
        for i in range(40):                             # new writes on all four appear
            bigger.put(FEED, b"after%02d" % i, b"v")
        self.assertEqual(sorted(r.key for r in drain(bigger, FEED, since)[0]),
                         [b"after%02d" % i for i in range(40)])

    def test_writes_that_sync_moved_before_the_watcher_read_them_still_arrive(self):
        """With replicas = 1 (with 2, adding one partition never displaces the
        partition that took a write), a new partition takes over some keys:
        sync copies them there (epoch 0) and deletes the stamped rows."""
        store = self.store(replicas=1)
        since = drain(store, FEED, "now")[1]
        keys = [b"m%03d" % i for i in range(300)]
        for key in keys:
            store.put(FEED, key, b"v")
        bigger = self.store(4, replicas=1)
        self.assertEqual(sync.run(bigger, out=io.StringIO()), 0)
        stamped = sum(view.server.execute("SELECT COUNT(*) FROM %s.kv_rows WHERE change_epoch > 0"
                                          % DB)[0][0] for view in self.views)
        self.assertLess(stamped, 280)          # the rows that took the writes, moved off: copies
        self.assertEqual({r.key for r in drain(bigger, FEED, since)[0]}, set(keys))

    def test_a_failover_write_appears_once(self):
        store = self.store()
        since = drain(store, FEED, "now")[1]
        primary = store.placement(FEED, b"fo")[0]
        primary._down_until = float("inf")
        store.put(FEED, b"fo", b"while down")
        page = store.changes(FEED, since)
        self.assertEqual([(r.key, r.version) for r in page.changes], [(b"fo", 1)])
        self.assertEqual(page.unavailable, [primary.name])
        primary._down_until = 0
        self.assertEqual(sync.run(store, out=io.StringIO()), 0)
        self.assertEqual(primary.read(FEED, b"fo").version, 1)      # sync copied it
        self.assertEqual(drain(store, FEED, page.cursor.encode())[0], [])

    def test_since_prefix_values_and_deletes(self):
        store = self.store()
        store.put(FEED, b"old", b"before")
        since = drain(store, FEED, "now")[1]
        store.put(FEED, b"cfg/a", b"1")
        store.put(FEED, b"cfg/b", b"\xff\x00")
        store.put(FEED, b"other", b"x")
        store.delete(FEED, b"cfg/a")
        entries, _ = drain(store, FEED, since, prefix=b"cfg/", values=True)
        self.assertEqual(sorted((r.key, r.deleted, r.value if not r.deleted else None)
                                for r in entries),
                         [(b"cfg/a", True, None), (b"cfg/b", False, b"\xff\x00")])
        everything = drain(store, FEED, "0")[0]
        self.assertEqual({r.key for r in everything}, {b"old", b"cfg/a", b"cfg/b", b"other"})
        with self.assertRaises(KeyNotFound):
            store.get(FEED, b"cfg/a")

    def test_bad_foreign_and_expired_cursors(self):
        store = self.store()
        cursor = store.changes(FEED, "now").cursor
        text = cursor.encode()
        for bad in (text[:-3], text[:20] + ("A" if text[20] != "A" else "B") + text[21:],
                    "bm93", "0x", "now0"):
            with self.assertRaises(InvalidRequest, msg=bad):
                store.changes(FEED, bad)
        with self.assertRaisesRegex(InvalidRequest, "another bucket"):
            store.changes(OTHER, text)
        old = FeedCursor(FEED, now_us() - 8 * 86400 * 1_000_000, cursor.positions).encode()
        with self.assertRaises(CursorExpired):
            store.changes(FEED, old)
        with self.assertRaises(InvalidRequest):
            store.changes(FEED, "now", limit=0)


class FeedHTTPTest(FeedHarness, unittest.TestCase):
    """Through a served process (web.py's server) over real sockets."""

    def serve(self, extra="", server=""):
        config = dbservers.write_config(os.path.join(self.dir, "http.cfg"), self.views[:3], 2,
                                        extra)
        with open(config) as f:
            text = f.read().replace("[server]\n", "[server]\n" + server, 1)
        with open(config, "w") as f:
            f.write(text)
        served = ServedProcess([sys.executable, "controller.py", "127.0.0.1:%d" % self.port],
                               config, self.port)
        self.addCleanup(served.stop)
        return served.url

    def setUp(self):
        super().setUp()
        self.port = dbservers.free_port()

    def test_long_poll_answers_on_a_write_and_at_the_wait_limit(self):
        url = self.serve()
        since = requests.get(url + "/buckets/lp/changes").json()["next"]
        answer = {}

        def poll():
            answer["response"] = requests.get(url + "/buckets/lp/changes", timeout=40, params={
                "since": since, "wait": "20"})
            answer["at"] = time.perf_counter()
        poller = threading.Thread(target=poll)
        poller.start()
        time.sleep(0.5)                       # the poll is waiting
        requests.put(url + "/buckets/lp/keys/hello", data=b"world",
                     headers={"Content-Type": "application/octet-stream"}).raise_for_status()
        written = time.perf_counter()
        poller.join(30)
        response = answer["response"]
        self.assertEqual(response.status_code, 200)
        self.assertEqual([c["key"] for c in response.json()["changes"]], ["hello"])
        self.assertEqual(response.headers["Cache-Control"], "no-store")
        print("\nlong poll answered %.1f ms after the write's acknowledgement"
              % ((answer["at"] - written) * 1000), file=sys.stderr)
        quiet = requests.get(url + "/buckets/lp/changes", timeout=10,
                             params={"since": response.json()["next"], "wait": "1"})
        self.assertEqual((quiet.status_code, quiet.json()["changes"], quiet.json()["complete"]),
                         (200, [], True))
        xml = requests.get(url + "/buckets/lp/changes?since=0", headers={"Accept": "application/xml"})
        self.assertEqual(xml.status_code, 200)
        self.assertIn(b"<key>hello</key>", xml.content)

    def test_errors(self):
        url = self.serve("[sync]\ntombstone_days = 1\n")
        page = requests.get(url + "/changes").json()
        cursor = FeedCursor.decode(page["next"], b"default")
        expired = FeedCursor(b"default", now_us() - 2 * 86400 * 1_000_000,
                             cursor.positions).encode()
        cases = [("/changes?since=" + expired, 410, "cursor_expired"),
                 ("/changes?since=" + page["next"][:-2], 400, "bad_request"),
                 ("/buckets/b2/changes?since=" + urllib.parse.quote(page["next"]), 400,
                  "bad_request"),
                 ("/changes?wait=0", 400, "bad_request"), ("/changes?wait=31", 400, "bad_request"),
                 ("/changes?limit=1001", 400, "bad_request"),
                 ("/changes?values=yes", 400, "bad_request"),
                 ("/changes?cursor=x", 400, "unknown_parameter"),
                 ("/buckets/_auth/changes", 404, "not_found")]
        for path, status, code in cases:
            with self.subTest(path=path[:40]):
                response = requests.get(url + path)
                self.assertEqual((response.status_code, response.json()["error"]["code"]),
                                 (status, code), response.text)
        self.assertEqual(requests.delete(url + "/changes").status_code, 405)

    def test_waiters_beyond_the_cap_get_503(self):
        url = self.serve(server="max_watchers = 1\n")
        first = threading.Thread(target=requests.get, args=(url + "/changes?wait=4",),
                                 kwargs={"timeout": 30})
        first.start()
        time.sleep(0.5)                       # the first long poll is waiting
        second = requests.get(url + "/changes?wait=4", timeout=30)
        self.assertEqual(requests.get(url + "/changes").status_code, 200)   # no wait: no cap
        first.join(30)
        self.assertEqual(second.status_code, 503, second.text)
        self.assertEqual(second.headers["Retry-After"], "1")


if __name__ == "__main__":
    unittest.main()
