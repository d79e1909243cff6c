"""The client library (kvclient) and the minimalkv store against a real
running service (gunicorn, three MariaDB partitions); the ``kv`` command
line is tested in test_cli.py."""

import http.client
import http.server
import io
import json
import os
import shutil
import sys
import tempfile
import threading
import time
import unittest

import dbservers
import kvclient
from client_service import Service
from kvclient.minimalkv_store import HttpStore


class LibraryTest(unittest.TestCase):
    def setUp(self):
        Service.wipe()
        self.store = kvclient.connect(Service.start().url, timeout=10)
        self.addCleanup(self.store.close)

    def test_put_get_record_delete(self):
        record = self.store.put("greeting", "héllo")
        self.assertEqual((record.key, record.value, record.version), ("greeting", "héllo".encode(), 1))
        self.assertTrue(record.etag.startswith('"'))
        self.assertIsNone(record.expires)
        self.assertEqual(self.store.get("greeting"), "héllo".encode())
        got = self.store.get_record("greeting")
        self.assertEqual((got.etag, got.version, got.created), (record.etag, 1, record.created))
        self.assertEqual(got.modified.tzinfo.utcoffset(None).total_seconds(), 0)
        self.store.delete("greeting")
        with self.assertRaises(KeyError):
            self.store.get("greeting")
        with self.assertRaises(kvclient.NotFound) as caught:
            self.store.delete("greeting")
        self.assertEqual((caught.exception.status, caught.exception.code), (404, "key_not_found"))

    def test_binary_empty_ttl_and_awkward_keys(self):
        keys = ["a#b", "q?x=1", "100%", "it's", 'say "hi"', "[brackets]", "a/b/c", "sp ace",
                ".", "..", "ключ", "emoji😀"]
        for i, key in enumerate(keys):
            self.store.put(key, bytes([i, 0, 255]))
        for i, key in enumerate(keys):
            self.assertEqual(self.store.get(key), bytes([i, 0, 255]), key)
        self.assertEqual(sorted(self.store.keys(), key=str.encode), sorted(keys, key=str.encode))
        self.store.put("empty", b"")
        self.assertEqual(self.store.get("empty"), b"")
        record = self.store.put("short", b"v", ttl=60)
        self.assertAlmostEqual((record.expires - record.modified).total_seconds(), 60, places=3)

    def test_conditions_create_and_compare_and_swap(self):
        first = self.store.create("c", b"1")
        with self.assertRaises(kvclient.Conflict):
            self.store.create("c", b"again")
        second = self.store.compare_and_swap("c", first.etag, b"2")
        with self.assertRaises(kvclient.PreconditionFailed):
            self.store.compare_and_swap("c", first.etag, b"3")
        with self.assertRaises(kvclient.PreconditionFailed):
            self.store.put("c", b"4", if_none_match="*")
        with self.assertRaises(kvclient.PreconditionFailed):
            self.store.delete("c", if_match=first.etag)
        self.store.delete("c", if_match=second.etag)
        self.assertEqual(self.store.put("c", b"5", if_none_match="*").version, 4)

    def test_mapping_protocol_and_listing(self):
        for key in ("dir/a", "dir/b", "dir/sub/c", "top", "zed"):
            self.store[key] = key.upper()
        self.assertEqual(self.store["dir/a"], b"DIR/A")
        self.assertIn("top", self.store)
        self.assertNotIn("nope", self.store)
        del self.store["zed"]
        self.assertEqual(list(self.store), ["dir/a", "dir/b", "dir/sub/c", "top"])
        self.assertEqual(self.store.keys("dir/"), ["dir/a", "dir/b", "dir/sub/c"])
        self.assertEqual(list(self.store.iter_prefixes("/")), ["dir/", "top"])
        self.assertEqual(list(self.store.iter_prefixes("/", "dir/")), ["dir/a", "dir/b", "dir/sub/"])
        self.assertEqual(dict(self.store.items("dir/")),
                         {"dir/a": b"DIR/A", "dir/b": b"DIR/B", "dir/sub/c": b"DIR/SUB/C"})

    def test_listing_walks_pages_lazily(self):
        ops = [{"op": "put", "key": "k%04d" % i, "value": "v"} for i in range(2500)]
        for start in range(0, 2500, 1000):
            self.assertEqual({r["status"] for r in self.store.batch(ops[start:start + 1000])}, {201})
        pages = self.store.pages()
        self.assertEqual(len(next(pages)["items"]), 1000)     # one request so far
        self.assertEqual(len(list(self.store.iter_keys())), 2500)

    def test_errors_mirror_the_api(self):
        with self.assertRaises(ValueError) as caught:
            self.store.get("")
        self.assertIsInstance(caught.exception, kvclient.InvalidKey)
        with self.assertRaises(kvclient.InvalidKey):
            self.store.put("a\x00b", b"v")
        with self.assertRaises(kvclient.BadRequest):
            self.store.put("k", b"v", ttl=0)
        with self.assertRaises(kvclient.TooLarge):
            self.store.put("big", b"x" * (1048576 + 1))
        with self.assertRaises(TypeError):
            self.store.put("k", 42)
        dead = kvclient.connect("http://127.0.0.1:%d" % dbservers.free_port(), timeout=2, retries=1)
        with self.assertRaises(kvclient.Unavailable) as caught:
            dead.get("k")
        self.assertIsInstance(caught.exception, OSError)
        for write in (lambda: dead.put("k", b"v", if_match="*"), lambda: dead.delete("k")):
            with self.assertRaises(kvclient.Unavailable) as caught:      # nothing was sent
                write()
            self.assertNotIsInstance(caught.exception, kvclient.Indeterminate)
        dead.close()

    def test_listing_records_carry_expires(self):
        self.store.put("a", b"1")
        written = self.store.put("b", b"\xff", ttl=60)
        records = list(self.store.iter_records())
        self.assertEqual([(r.key, r.value, r.version, r.expires) for r in records],
                         [("a", b"1", 1, None), ("b", b"\xff", 1, written.expires)])
        self.assertEqual([r["expires"] for r in self.store.records()],
                         [None, written.expires.strftime("%Y-%m-%dT%H:%M:%S.%fZ")])


class _Scripted(http.server.BaseHTTPRequestHandler):
    """Answers 503 + Retry-After: 1 to the first request of each method, then 200."""
    seen = []

    def answer(self):
        self.seen.append(self.command)
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        if self.seen.count(self.command) == 1:
            body = b'{"error": {"status": 503, "code": "unavailable", "message": "down"}}'
            self.send_response(503)
            self.send_header("Retry-After", "1")
        else:
            body = b"value" if self.command != "PUT" else json.dumps(
                {"key": "k", "value": "v", "version": 1, "created": "2026-01-01T00:00:00.000000Z",
                 "modified": "2026-01-01T00:00:00.000000Z", "expires": None}).encode()
            self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = answer

    def log_message(self, *args):
        pass



class RetryTest(unittest.TestCase):
    def test_requests_are_retried_after_503_but_a_batch_is_not(self):
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Scripted)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        self.addCleanup(server.shutdown)
        store = kvclient.connect("http://127.0.0.1:%d" % server.server_address[1], timeout=5)
        started = time.monotonic()
        self.assertEqual(store.get("k"), b"value")
        waited = time.monotonic() - started
        with self.assertRaises(kvclient.Unavailable) as caught:
            store.batch([{"op": "get", "key": "k"}])
        self.assertEqual(caught.exception.retry_after, 1)
        self.assertEqual(store.put("k", b"v").version, 1)
        self.assertEqual(_Scripted.seen, ["GET", "GET", "POST", "PUT", "PUT"])
        print("\n  retry after 503: waited %.2f s (Retry-After: 1)" % waited, file=sys.stderr)
        store.close()


def answer_losing_proxy(upstream_port, drop, then=None):
    """A proxy to the service on a free port (its base URL is returned; it
    stops at the test's end).  The first request of each method in ``drop``
    is forwarded and its whole answer read (so the write is committed), then
    ``then()`` runs and the client's connection is closed without a byte: the
    answer is lost.  ``proxy.seen`` lists (method, status, "lost" or "").
    """
    class Proxy(http.server.BaseHTTPRequestHandler):
        seen = []

        def forward(self):
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            upstream = http.client.HTTPConnection("127.0.0.1", upstream_port, timeout=30)
            upstream.request(self.command, self.path, body, {
                k: v for k, v in self.headers.items() if k.lower() not in ("connection", "host")})
            response = upstream.getresponse()
            data, headers = response.read(), response.getheaders()
            upstream.close()
            lost = self.command in drop
            self.seen.append((self.command, response.status, "lost" if lost else ""))
            self.close_connection = True
            if lost:
                drop.discard(self.command)
                if then:
                    then()
                return
            self.send_response(response.status)
            for name, value in headers:
                if name.lower() not in ("connection", "transfer-encoding", "date", "server"):
                    self.send_header(name, value)
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = forward

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Proxy)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    server.seen = Proxy.seen
    return server


class LostAnswerTest(unittest.TestCase):
    """Writes whose answer is lost after the service committed them (kvclient/store.py)."""

    def setUp(self):
        Service.wipe()
        self.direct = kvclient.connect(Service.start().url)
        self.addCleanup(self.direct.close)

    def through(self, drop, then=None):
        proxy = answer_losing_proxy(Service.start().port, set(drop), then)
        self.addCleanup(proxy.server_close)
        self.addCleanup(proxy.shutdown)
        store = kvclient.connect("http://127.0.0.1:%d" % proxy.server_address[1], timeout=10)
        self.addCleanup(store.close)
        return store, proxy.seen

    def test_compare_and_swap_whose_answer_was_lost_reports_success(self):
        first = self.direct.put("cas", b"1")
        store, seen = self.through(["PUT"])
        swapped = store.compare_and_swap("cas", first.etag, b"2")
        self.assertEqual((swapped.value, swapped.version), (b"2", 2))
        self.assertEqual(swapped.etag, self.direct.get_record("cas").etag)    # written once
        self.assertEqual(seen, [("PUT", 200, "lost"), ("PUT", 412, ""), ("GET", 200, "")])
        with self.assertRaises(kvclient.PreconditionFailed):      # a plain 412 is still one
            store.compare_and_swap("cas", first.etag, b"3")

    def test_create_if_absent_and_create_whose_answers_were_lost_report_success(self):
        store, seen = self.through(["PUT", "POST"])
        self.assertEqual(store.put("once", b"v", if_none_match="*").version, 1)
        self.assertEqual(store.create("new", b"w").value, b"w")
        self.assertEqual([s[:2] for s in seen], [("PUT", 201), ("PUT", 412), ("GET", 200),
                                                 ("POST", 201), ("POST", 409), ("GET", 200)])

    def test_delete_whose_answer_was_lost_reports_success(self):
        self.direct.put("gone", b"v")
        etag = self.direct.put("gone too", b"v").etag
        store, seen = self.through(["DELETE"])
        store.delete("gone")
        self.assertEqual(seen, [("DELETE", 204, "lost"), ("DELETE", 404, "")])
        store, seen = self.through(["DELETE"])
        store.delete("gone too", if_match=etag)
        self.assertEqual(seen, [("DELETE", 204, "lost"), ("DELETE", 412, ""), ("GET", 404, "")])
        self.assertEqual(self.direct.keys(), [])
        with self.assertRaises(kvclient.NotFound):                # a plain 404 is still one
            store.delete("gone")

    def test_a_lost_swap_then_overwritten_is_indeterminate(self):
        first = self.direct.put("cas", b"1")
        store, seen = self.through(["PUT"], then=lambda: self.direct.put("cas", b"theirs"))
        with self.assertRaises(kvclient.Indeterminate) as caught:
            store.compare_and_swap("cas", first.etag, b"2")
        self.assertIsInstance(caught.exception, kvclient.Unavailable)
        self.assertEqual(self.direct.get_record("cas").version, 3)

    def test_unconditional_put_is_sent_again_and_a_lost_batch_is_indeterminate(self):
        store, seen = self.through(["PUT", "POST"])
        self.assertEqual(store.put("u", b"x").version, 2)          # written twice, same value
        with self.assertRaises(kvclient.Indeterminate):
            store.batch([{"op": "put", "key": "b", "value": "1"}])
        self.assertEqual(self.direct.get("b"), b"1")
        self.assertEqual([s[:2] for s in seen], [("PUT", 201), ("PUT", 200), ("POST", 200)])


class MinimalkvStoreTest(unittest.TestCase):
    """minimalkv's documented store contract (its tests/basic_store.py), on HttpStore."""

    def setUp(self):
        Service.wipe()
        self.store = HttpStore(Service.start().url)
        self.addCleanup(self.store.close)

    def test_missing_key_is_a_key_error_everywhere(self):
        for call in (lambda: self.store.get("nope"), lambda: self.store.open("nope"),
                     lambda: self.store.get_file("nope", io.BytesIO())):
            with self.assertRaises(KeyError):
                call()

    def test_invalid_keys_are_value_errors(self):
        for key in ("", "ä", "/", "\x00", "no whitespace allowed", "a/b", 42):
            for call in (lambda: self.store.get(key), lambda: self.store.put(key, b"v"),
                         lambda: self.store.delete(key), lambda: key in self.store):
                with self.assertRaises(ValueError, msg=repr(key)):
                    call()

    def test_round_trips_with_symbol_keys_and_empty_values(self):
        keys = ["#", "?", "%", "'", '"', "[x]", "{y}", "a.b", "~!@$&()+,-<=>^_`", "k" * 250]
        for key in keys:
            self.assertEqual(self.store.put(key, key.encode()), key)
        for key in keys:
            self.assertEqual(self.store.get(key), key.encode())
            self.assertIn(key, self.store)
        self.assertEqual(set(self.store.keys()), set(keys))
        self.assertEqual(set(iter(self.store)), set(keys))
        self.store.put("empty", b"")
        self.assertEqual(self.store.get("empty"), b"")
        with self.assertRaises(IOError):
            self.store.put("text", "not bytes")

    def test_delete_is_idempotent(self):
        self.store.put("k", b"v")
        self.store.delete("k")
        self.store.delete("k")
        self.assertNotIn("k", self.store)

    def test_files_and_open(self):
        path = os.path.join(tempfile.mkdtemp(prefix="kv-mkv-"), "f")
        self.addCleanup(shutil.rmtree, os.path.dirname(path), True)
        with open(path, "wb") as f:
            f.write(b"file contents")
        self.store.put_file("from_name", path)
        self.store.put_file("from_object", io.BytesIO(b"object contents"))
        self.assertEqual(self.store.get("from_name"), b"file contents")
        out = io.BytesIO()
        self.store.get_file("from_object", out)
        self.assertEqual(out.getvalue(), b"object contents")
        self.store.get_file("from_name", path + ".copy")
        with open(path + ".copy", "rb") as f:
            self.assertEqual(f.read(), b"file contents")
        self.assertEqual(self.store.open("from_name").read(), b"file contents")

    def test_keys_prefixes_and_iter_prefixes_keep_the_delimiter(self):
        for key in ("a", "b.1", "b.2", "b.c.3", "c.4"):
            self.store.put(key, b"v")
        self.assertEqual(sorted(self.store.keys("b.")), ["b.1", "b.2", "b.c.3"])
        self.assertEqual(sorted(self.store.iter_prefixes(".")), ["a", "b.", "c."])
        self.assertEqual(sorted(self.store.iter_prefixes(".", "b.")), ["b.1", "b.2", "b.c."])

    def test_ttl_through_the_mixin(self):
        self.assertTrue(self.store.ttl_support)
        self.store.put("ttl", b"v", ttl_secs=0.2)      # rounded up to 1 s on the server
        self.store.put("forever", b"v", ttl_secs="forever")
        record = kvclient.connect(Service.start().url).get_record("ttl")
        self.assertEqual((record.expires - record.modified).total_seconds(), 1)
        self.assertIsNone(kvclient.connect(Service.start().url).get_record("forever").expires)
        with self.assertRaises(ValueError):
            self.store.put("bad", b"v", ttl_secs=-1)
