"""The clients of the change feed (API.md "Change feed (watch)"):
``store.watch()`` and ``kv watch`` against a served process (controller.py
over real sockets) on three MariaDB partitions of this file's own database,
replicas = 2: writes and deletes from elsewhere reach them, an expired
cursor is refused (exit 7) or restarted from, a bad one is refused, and both
resume after the server is killed and restarted on the same port, with the
writes made while it was down (through the datastore) delivered."""

import http.server
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import urllib.parse

import dbservers
import kvclient
from datastore import Datastore
from kv.cluster.changes import FeedCursor
from kv.records import now_us
from test_server import ServedProcess

DB = "kv_watch_clients"
KV = os.path.join(os.path.dirname(sys.executable), "kv")
PATIENCE = 60           # seconds a test waits for something before it fails (no timing assertion)


def eventually(predicate, what: str, patience: float = PATIENCE):
    """Wait until ``predicate()`` is true; AssertionError naming ``what`` after ``patience`` s."""
    deadline = time.monotonic() + patience
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("still waiting for " + what)
        time.sleep(0.05)


def newest(changes):
    """key -> the newest (version, deleted, value) among ``changes`` (Change objects)."""
    out = {}
    for c in changes:
        if c.key not in out or (c.modified, c.version) >= out[c.key][0]:
            out[c.key] = ((c.modified, c.version), (c.version, c.deleted, c.value))
    return {key: state for key, (_, state) in out.items()}


class Follower(threading.Thread):
    """Iterates a watcher in a thread, keeping every change it yields."""

    def __init__(self, watcher):
        super().__init__(daemon=True)
        self.watcher, self.changes, self.error = watcher, [], None

    def run(self):
        try:
            for change in self.watcher:
                self.changes.append(change)
        except Exception as e:              # reported by the test
            self.error = e

    def states(self):
        return newest(list(self.changes))


class KvWatch:
    """``kv watch ARGS`` running in the background: its stdout lines as they
    come, its stderr in a file."""

    def __init__(self, url, *args):
        self.err = tempfile.TemporaryFile()
        # Ctrl-C as in a terminal, even when this suite runs as a background
        # job (whose shell starts it with SIGINT ignored, which children inherit)
        self.process = subprocess.Popen([KV, "--url", url, "watch"] + list(args),
                                        stdout=subprocess.PIPE, stderr=self.err,
                                        stdin=subprocess.DEVNULL,
                                        preexec_fn=lambda: signal.signal(signal.SIGINT,
                                                                         signal.SIG_DFL))
        self.lines = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.process.stdout:
            self.lines.append(line.decode("utf-8").rstrip("\n"))

    def stderr(self) -> str:
        self.err.seek(0)
        return self.err.read().decode("utf-8", "replace")

    def saw(self, line: str) -> bool:
        return line in self.lines

    def interrupt(self) -> int:
        """Ctrl-C; returns the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
        try:
            return self.process.wait(30)
        finally:
            self.reader.join(10)

    def kill(self):
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.process.stdout.close()
        self.err.close()


class StubFeed(http.server.ThreadingHTTPServer):
    """A stand-in for the service on a free port: it answers the change
    feed's requests with ``answers`` in turn, (status, headers, document),
    the last one again and again, and keeps the ``since`` of each request."""

    def __init__(self, answers):
        self.answers, self.sinces = list(answers), []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(handler):
                query = urllib.parse.parse_qs(urllib.parse.urlsplit(handler.path).query)
                self.sinces.append(query["since"][0])
                status, headers, doc = self.answers.pop(0) if len(self.answers) > 1 \
                    else self.answers[0]
                body = json.dumps(doc).encode()
                handler.send_response(status)
                for name, value in dict(headers, **{"Content-Type": "application/json"}).items():
                    handler.send_header(name, value)
                handler.send_header("Content-Length", str(len(body)))
                handler.end_headers()
                handler.wfile.write(body)

            def log_message(handler, *args):
                pass
        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()
        self.url = "http://127.0.0.1:%d" % self.server_address[1]


def entry(key, version, modified="2026-11-22T10:00:00.000001Z", **more):
    return dict({"key": key, "version": version, "modified": modified, "deleted": False,
                 "expires": None}, **more)


class WatcherUnitTest(unittest.TestCase):
    """Retries, repeats and pages against a stub (no database)."""

    def stub(self, answers):
        stub = StubFeed(answers)
        self.addCleanup(stub.server_close)
        self.addCleanup(stub.shutdown)
        store = kvclient.connect(stub.url, timeout=5)
        self.addCleanup(store.close)
        return stub, store

    def test_503_and_502_are_retried_from_the_same_cursor_and_repeats_dropped(self):
        busy = (503, {"Retry-After": "1"}, {"error": {"status": 503, "code": "unavailable",
                                                      "message": "too many long polls"}})
        gateway = (502, {}, {"error": {"status": 502, "code": "bad_gateway", "message": "x"}})
        first = (200, {}, {"changes": [entry("a", 1), entry("b", 1)], "next": "c2",
                           "complete": False})
        second = (200, {}, {"changes": [entry("b", 1), entry("a", 2, "2026-11-22T10:00:01.0Z"),
                                        entry("c", 1, value="aGk=", encoding="base64")],
                            "next": "c3", "complete": True})
        empty = (200, {}, {"changes": [], "next": "c3", "complete": True})
        stub, store = self.stub([busy, gateway, first, second, empty])
        watcher = store.watch(cursor="c1", wait=1, values=True, max_backoff=0.2)
        self.addCleanup(watcher.close)
        changes = iter(watcher)
        got = [next(changes)]
        self.assertFalse(watcher.complete)                 # the first page said so
        got += [next(changes) for _ in range(3)]
        self.assertTrue(watcher.complete)
        self.assertEqual([(c.key, c.version) for c in got], [("a", 1), ("b", 1), ("a", 2), ("c", 1)])
        self.assertEqual(stub.sinces, ["c1", "c1", "c1", "c2"])
        self.assertEqual([c.cursor for c in got], ["c1", "c2", "c2", "c3"])
        self.assertEqual((got[3].value, got[0].value), (b"hi", None))
        self.assertEqual(watcher.cursor, "c3")
        page = next(watcher.pages())
        self.assertEqual((page.changes, page.cursor, page.complete), ([], "c3", True))

    def test_refusals_are_raised_and_give_up_after_ends_a_long_outage(self):
        refused = (403, {}, {"error": {"status": 403, "code": "forbidden", "message": "no"}})
        stub, store = self.stub([refused])
        with self.assertRaises(kvclient.Forbidden):
            next(iter(store.watch(cursor="c1", wait=1)))
        self.assertEqual(stub.sinces, ["c1"])                      # never retried
        down = (503, {}, {"error": {"status": 503, "code": "unavailable", "message": "down"}})
        stub, store = self.stub([down])
        watcher = store.watch(wait=1, give_up_after=0.5, max_backoff=0.1)   # "now" not fixed
        self.assertEqual(watcher.cursor, "now")
        with self.assertRaises(kvclient.Unavailable):
            next(iter(watcher))
        self.assertGreater(len(stub.sinces), 2)
        self.assertEqual(set(stub.sinces), {"now"})
        with self.assertRaises(ValueError):
            store.watch(wait=31)


class WatchClientsTest(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        cls.views = dbservers.fresh_database(DB, 3)
        cls.dir = tempfile.mkdtemp(prefix="kv-watch-clients-")
        cls.config = dbservers.write_config(os.path.join(cls.dir, "c.cfg"), cls.views, 2)
        cls.port = dbservers.free_port()
        cls.served = cls.serve()

    @classmethod
    def serve(cls):
        return ServedProcess([sys.executable, "controller.py", "127.0.0.1:%d" % cls.port],
                             cls.config, cls.port)

    @classmethod
    def tearDownClass(cls):
        cls.served.stop()
        shutil.rmtree(cls.dir, True)

    def setUp(self):
        if self.served.process.poll() is not None:          # a failed restart test
            type(self).served = self.serve()
        self.url = self.served.url

    def store(self, bucket):
        store = kvclient.connect(self.url, timeout=10, bucket=bucket)
        self.addCleanup(store.close)
        return store

    def watch(self, *args):
        process = KvWatch(self.url, *args)
        self.addCleanup(process.kill)
        return process

    def follow(self, watcher):
        follower = Follower(watcher)
        self.addCleanup(watcher.close)
        follower.start()
        return follower

    def cursor_file(self, name, text=None):
        path = os.path.join(self.dir, name)
        if text is not None:
            with open(path, "w") as f:
                f.write(text + "\n")
        elif os.path.exists(path):
            os.unlink(path)
        return path

    @staticmethod
    def pinned(store) -> str:
        """A cursor of ``store``'s bucket at "now"."""
        with store.watch(wait=1) as watcher:
            return watcher.cursor

    def expired_cursor(self, store):
        """A real cursor of ``store``'s bucket made 8 days old (tombstone_days is 7)."""
        cursor = FeedCursor.decode(self.pinned(store), store.bucket.encode())
        return FeedCursor(cursor.bucket, now_us() - 8 * 86400 * 1_000_000,
                          cursor.positions).encode()

    def test_store_watch_sees_writes_and_deletes_from_another_thread(self):
        store = self.store("w1")
        follower = self.follow(store.watch(prefix="cfg/", values=True, wait=5))
        self.assertTrue(follower.watcher.cursor not in ("now", "0"))    # fixed when made

        def writer():
            writes = self.store("w1")
            writes.put("cfg/a", "one")
            writes.put("cfg/b", b"\xff\x00binary")
            writes.put("other/x", "not under the prefix")
            writes.delete("cfg/a")
            self.store("w1-other").put("cfg/z", "another bucket")
            writes.put("cfg/c", "last")
        thread = threading.Thread(target=writer)
        thread.start()
        thread.join(PATIENCE)
        eventually(lambda: "cfg/c" in follower.states() or follower.error, "cfg/c")
        self.assertIsNone(follower.error)
        self.assertEqual(follower.states(), {"cfg/a": (2, True, None),
                                             "cfg/b": (1, False, b"\xff\x00binary"),
                                             "cfg/c": (1, False, b"last")})
        first = follower.changes[0]
        self.assertEqual(first.modified.utcoffset().total_seconds(), 0)
        # resume from the watcher's cursor, or from the last change's: what follows
        follower.watcher.stop()
        follower.join(PATIENCE)
        self.assertFalse(follower.is_alive())
        kept = (follower.watcher.cursor, follower.changes[-1].cursor)
        store.put("cfg/d", "after the stop")
        for cursor in kept:
            again = self.follow(store.watch(cursor=cursor, wait=2))
            eventually(lambda: "cfg/d" in again.states() or again.error, "cfg/d")
            self.assertIsNone(again.error)
            self.assertEqual(again.states()["cfg/d"], (1, False, None))   # values=False: none
            self.assertNotIn("cfg/a", again.states())              # not from the start

    def test_kv_watch_prints_a_line_per_change_and_keeps_its_cursor_file(self):
        store = self.store("w2")
        path = self.cursor_file("w2.cursor")
        watching = self.watch("--bucket", "w2", "--prefix", "p/", "--values",
                              "--cursor-file", path, "--wait", "2")
        eventually(lambda: os.path.exists(path), "the cursor file")     # "now" is fixed
        store.put("p/a", "hello")
        store.put("p/b", b"tab\there")
        store.put("q/x", "not under the prefix")
        eventually(lambda: watching.saw("p/b\tv1\tset\tbase64:dGFiCWhlcmU="), "p/b's line")
        store.delete("p/a")
        eventually(lambda: watching.saw("p/a\tv2\tdeleted\t"), "p/a's delete")
        self.assertNotIn("q/x", "\n".join(watching.lines))
        for line in watching.lines:
            self.assertRegex(line, r"^p/[ab]\tv[12]\t(set\t(hello|base64:\S+)|deleted\t)$")
        kept = open(path).read().strip()
        self.assertTrue(kept)
        self.assertEqual(watching.interrupt(), 130, watching.stderr())
        self.assertIn("interrupted", watching.stderr())
        self.assertFalse([n for n in os.listdir(self.dir) if n.startswith(".kv-cursor-")])
        # --json: the API's change objects
        store.put("p/j", "json")
        replay = self.watch("--bucket", "w2", "--prefix", "p/j", "--json", "--since", "0",
                            "--wait", "1")
        eventually(lambda: any('"key": "p/j"' in line for line in replay.lines), "a JSON line")
        self.assertIn('"deleted": false', replay.lines[0])
        self.assertEqual(replay.interrupt(), 130)

    def test_an_expired_cursor_is_exit_7_or_restarted_and_a_bad_one_refused(self):
        store = self.store("w3")
        expired = self.expired_cursor(store)
        with self.assertRaises(kvclient.CursorExpired) as caught:
            next(iter(store.watch(cursor=expired, wait=1)))
        self.assertEqual((caught.exception.status, caught.exception.code), (410, "cursor_expired"))
        with self.assertRaises(kvclient.BadRequest):
            next(iter(store.watch(cursor=expired[:-3], wait=1)))
        with self.assertRaises(kvclient.BadRequest):                  # another bucket's
            next(iter(self.store("w3-other").watch(cursor=self.pinned(store), wait=1)))

        path = self.cursor_file("w3.cursor", expired)
        done = subprocess.run([KV, "--url", self.url, "watch", "--bucket", "w3",
                               "--cursor-file", path], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, timeout=PATIENCE)
        self.assertEqual((done.returncode, done.stdout), (7, b""), done.stderr)
        self.assertEqual(len(done.stderr.splitlines()), 1, done.stderr)
        self.assertIn(b"--restart", done.stderr)
        self.assertEqual(open(path).read().strip(), expired)        # kept as it was
        bad = subprocess.run([KV, "--url", self.url, "watch", "--bucket", "w3", "--cursor-file",
                              self.cursor_file("bad.cursor", "not-a-cursor")],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=PATIENCE)
        self.assertEqual(bad.returncode, 2, bad.stderr)
        self.assertNotIn(b"Traceback", bad.stderr)

        restarted = self.watch("--bucket", "w3", "--cursor-file", path, "--restart", "--wait", "1")
        eventually(lambda: open(path).read().strip() != expired, "a new cursor in the file")
        self.assertIn("starting again from now", restarted.stderr())
        store.put("fresh", "x")
        eventually(lambda: restarted.saw("fresh\tv1\tset"), "the line of a write after the restart")
        self.assertEqual(restarted.interrupt(), 130)

        watcher = store.watch(cursor=expired, wait=1, restart=True)
        follower = self.follow(watcher)
        eventually(lambda: watcher.restarts == 1 or follower.error, "the restart")
        store.put("fresh", "y")
        eventually(lambda: follower.states().get("fresh", (0,))[0] == 2 or follower.error,
                   "the write after the restart")
        self.assertIsNone(follower.error)

    def test_both_resume_after_the_server_is_killed_and_restarted_on_its_port(self):
        store = self.store("w4")
        follower = self.follow(store.watch(prefix="r/", wait=2, max_backoff=0.5))
        live_file, resumed_file = self.cursor_file("live.cursor"), self.cursor_file("resumed.cursor")
        live = self.watch("--bucket", "w4", "--prefix", "r/", "--cursor-file", live_file,
                          "--wait", "2")
        first = self.watch("--bucket", "w4", "--prefix", "r/", "--cursor-file", resumed_file,
                           "--wait", "2")
        eventually(lambda: os.path.exists(live_file) and os.path.exists(resumed_file),
                   "the cursor files")
        store.put("r/1", "before")
        eventually(lambda: "r/1" in follower.states() and live.saw("r/1\tv1\tset")
                   and first.saw("r/1\tv1\tset"), "r/1 everywhere")
        self.assertEqual(first.interrupt(), 130)

        self.served.process.kill()                          # no goodbye to the long polls
        self.served.process.wait()
        datastore = Datastore.from_config(self.config)
        try:
            datastore.put(b"w4", b"r/2", b"while down")
            datastore.put(b"w4", b"r/3", b"while down")
            datastore.delete(b"w4", b"r/1")
        finally:
            datastore.close()
        type(self).served = self.serve()                    # the same port

        resumed = self.watch("--bucket", "w4", "--prefix", "r/", "--cursor-file", resumed_file,
                             "--wait", "2")
        expected = {"r/1": (2, True, None), "r/2": (1, False, None), "r/3": (1, False, None)}
        eventually(lambda: follower.states() == expected or follower.error,
                   "store.watch() to catch up")
        self.assertIsNone(follower.error)
        for process in (live, resumed):
            eventually(lambda: all(process.saw(line) for line in
                                   ("r/2\tv1\tset", "r/3\tv1\tset", "r/1\tv2\tdeleted")),
                       "kv watch to catch up:\n" + "\n".join(process.lines))
        self.assertIn("answers again", live.stderr())
        self.assertEqual(live.interrupt(), 130)
        self.assertEqual(resumed.interrupt(), 130)


if __name__ == "__main__":
    unittest.main()
