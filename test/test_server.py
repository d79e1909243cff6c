"""The service over real sockets: ``python controller.py 127.0.0.1:PORT``
(web.py's cheroot server) and gunicorn, on three real MariaDB partitions."""

import http.client
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import unittest

import requests

import dbservers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class ServedProcess:
    """A server subprocess on a free port; ``output()`` holds what it printed."""

    def __init__(self, command, config, port):
        self.port = port
        self.url = "http://127.0.0.1:%d" % port
        self.log = tempfile.TemporaryFile()
        env = dict(os.environ, KV_CONFIG=config, PYTHONUNBUFFERED="1")
        self.process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=self.log,
                                        stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while True:
            try:
                requests.get(self.url + "/health", timeout=1)
                return
            except (requests.ConnectionError, requests.Timeout):
                # A loaded machine may accept before a worker answers: wait on.
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise AssertionError("server did not answer:\n" + self.output())
                time.sleep(0.1)

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read().decode("utf-8", "replace")

    def stop(self):
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def raw_request(port, data: bytes, timeout=5) -> bytes:
    """Send raw bytes, return everything the server answers until it closes or pauses."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        chunks = []
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
                if b"\r\n\r\n" in b"".join(chunks):
                    s.settimeout(0.5)
        except socket.timeout:
            pass
    return b"".join(chunks)


class ServerTest(unittest.TestCase):
    command = [sys.executable, "controller.py"]

    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.mkdtemp(prefix="kv-server-")
        servers = dbservers.shared(3)
        for server in servers:
            server.execute("DELETE FROM kv_rows")
        config = dbservers.write_config(os.path.join(cls.dir, "c.cfg"), servers, replicas=2)
        port = dbservers.free_port()
        cls.server = ServedProcess(cls.command + cls.listen_args(port), config, port)
        cls.url = cls.server.url
        cls.http = requests.Session()

    @classmethod
    def listen_args(cls, port):
        return ["127.0.0.1:%d" % port]

    @classmethod
    def tearDownClass(cls):
        cls.http.close()
        cls.server.stop()
        shutil.rmtree(cls.dir, ignore_errors=True)

    def test_start_up_log_names_partitions_and_hides_passwords(self):
        output = self.server.output()
        for name in ("partition-1", "partition-2", "partition-3"):
            self.assertRegex(output, r"%s: mysql kv@127\.0\.0\.1:\d+/kv" % name)
        self.assertNotIn(dbservers.PASSWORD, output)

    def test_round_trip_with_encoded_slash_and_unicode(self):
        r = self.http.put(self.url + "/keys/dir%2Fsub/ключ", data="значение".encode(),
                          headers={"Content-Type": "text/plain"})
        self.assertEqual(r.status_code, 201, r.text)
        self.assertEqual(r.json()["key"], "dir/sub/ключ")
        r = self.http.get(self.url + "/keys/dir/sub/%D0%BA%D0%BB%D1%8E%D1%87",
                          headers={"Accept": "text/plain"})
        self.assertEqual((r.status_code, r.content), (200, "значение".encode()))
        self.assertEqual(r.headers["Content-Type"], "text/plain; charset=utf-8")

    def test_non_utf8_key_is_400(self):
        r = self.http.get(self.url + "/keys/%FF%FE")
        self.assertEqual(r.status_code, 400)
        self.assertEqual(r.json()["error"]["code"], "invalid_key")

    def test_chunked_upload_and_limit(self):
        def chunks(total, size=65536):
            for start in range(0, total, size):
                yield b"x" * min(size, total - start)
        r = self.http.put(self.url + "/keys/chunked", data=chunks(1048576),
                          headers={"Content-Type": "application/octet-stream"})
        self.assertEqual(r.status_code, 201, r.text)
        self.assertEqual(len(self.http.get(self.url + "/keys/chunked?format=raw").content), 1048576)
        r = self.http.put(self.url + "/keys/chunked", data=chunks(1048577),
                          headers={"Content-Type": "application/octet-stream"})
        self.assertEqual(r.status_code, 413)
        self.assertEqual(len(self.http.get(self.url + "/keys/chunked?format=raw").content), 1048576)

    def test_huge_content_length_is_refused_without_waiting_for_the_body(self):
        answer = raw_request(self.server.port,
                             b"PUT /keys/huge HTTP/1.1\r\nHost: t\r\nContent-Type: text/plain\r\n"
                             b"Content-Length: 99999999999\r\n\r\nonly a little")
        self.assertTrue(answer.startswith(b"HTTP/1.1 413"), answer[:200])
        self.assertEqual(self.http.get(self.url + "/keys/huge").status_code, 404)

    def test_two_different_content_lengths_are_400(self):
        """RFC 9112 section 6.3: a request-smuggling risk behind a proxy."""
        for framing in (b"Content-Length: 3\r\nContent-Length: 5\r\n",
                        b"Content-Length: 3, 5\r\n"):
            answer = raw_request(self.server.port,
                                 b"PUT /keys/smuggled HTTP/1.1\r\nHost: t\r\n"
                                 b"Content-Type: text/plain\r\n" + framing + b"\r\nabcde")
            self.assertTrue(answer.startswith(b"HTTP/1.1 400"), answer[:200])
        self.assertEqual(self.http.get(self.url + "/keys/smuggled").status_code, 404)

    def test_head_has_headers_and_no_body(self):
        self.http.put(self.url + "/keys/h", data=b"hello")
        connection = http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=5)
        connection.request("HEAD", "/keys/h")
        response = connection.getresponse()
        self.assertEqual(response.status, 200)
        self.assertEqual(response.read(), b"")
        self.assertTrue(response.getheader("ETag"))
        connection.close()

    def test_keep_alive_session_serves_many_requests(self):
        for i in range(50):
            self.assertEqual(self.http.put(self.url + "/keys/ka%d" % i, data=b"v").status_code, 201)
        listing = self.http.get(self.url + "/keys?prefix=ka&limit=1000").json()
        self.assertEqual(len(listing["items"]), 50)


class GunicornServerTest(ServerTest):
    """The production command line from the README."""
    command = [os.path.join(os.path.dirname(sys.executable), "gunicorn"),
               "--worker-class", "gthread", "--workers", "2", "--threads", "4",
               "--log-level", "info"]

    @classmethod
    def listen_args(cls, port):
        return ["--bind", "127.0.0.1:%d" % port, "controller:create_application()"]

    def test_start_up_log_names_partitions_and_hides_passwords(self):
        output = self.server.output()
        self.assertNotIn(dbservers.PASSWORD, output)
        self.assertIn("Booting worker", output)



class ConcurrentCompareAndSwapTest(unittest.TestCase):
    """50 clients PUT with the same If-Match at once through gunicorn: one wins."""

    def test_exactly_one_of_50_concurrent_compare_and_swaps_wins(self):
        import threading
        directory = tempfile.mkdtemp(prefix="kv-cas-")
        self.addCleanup(shutil.rmtree, directory, True)
        servers = dbservers.shared(3)
        config = dbservers.write_config(os.path.join(directory, "c.cfg"), servers, replicas=2)
        port = dbservers.free_port()
        server = ServedProcess(GunicornServerTest.command + GunicornServerTest.listen_args(port),
                               config, port)
        self.addCleanup(server.stop)
        url = server.url + "/keys/cas-counter"
        etag = requests.put(url, data=b"0").headers["ETag"]
        barrier = threading.Barrier(50)
        statuses = []

        def swap(i):
            with requests.Session() as session:
                barrier.wait()
                statuses.append(session.put(url, data=b"%d" % i,
                                            headers={"If-Match": etag}).status_code)
        threads = [threading.Thread(target=swap, args=(i,)) for i in range(50)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.assertEqual(sorted(statuses), [200] + [412] * 49)
        self.assertEqual(requests.get(url).json()["version"], 2)


class GranianServerTest(ServerTest):
    """granian, the faster production server measured by make bench."""
    command = [os.path.join(os.path.dirname(sys.executable), "granian"), "--interface", "wsgi",
               "--workers", "2", "--blocking-threads", "4", "--log-level", "info"]

    @classmethod
    def listen_args(cls, port):
        return ["--host", "127.0.0.1", "--port", str(port), "--factory",
                "controller:create_application"]

    def test_start_up_log_names_partitions_and_hides_passwords(self):
        self.assertNotIn(dbservers.PASSWORD, self.server.output())


class DevelopmentServerStartTest(unittest.TestCase):
    """``python controller.py PORT`` on a busy port: one clear line, no traceback."""

    def test_a_busy_port_says_so_in_one_line(self):
        config = dbservers.temp_config(self, "[server]\n[cluster]\npartitions = 1\n"
                                       "[partition-1]\nengine = sqlite\npath = p1.sqlite3\n")
        with socket.socket() as holder:
            holder.bind(("127.0.0.1", 0))
            holder.listen()
            port = holder.getsockname()[1]
            done = subprocess.run([sys.executable, "controller.py", "127.0.0.1:%d" % port],
                                  cwd=ROOT, env=dict(os.environ, KV_CONFIG=config),
                                  capture_output=True, text=True, timeout=60)
        self.assertEqual(done.returncode, 1, done.stderr)
        self.assertNotIn("Traceback", done.stderr)
        self.assertNotIn("serving on", done.stderr)
        self.assertRegex(done.stderr, r"cannot listen on 127\.0\.0\.1:%d: .*in use" % port)
