"""Every row of ../shared/API.md, through the WSGI application in-process
(paste.fixture.TestApp, which also checks WSGI compliance with paste.lint).

``ApiContract`` runs on SQLite partitions (SQLiteApiTest) and on three real
MariaDB servers (MariaDBApiTest).
"""

import base64
import io
import json
import os
import shutil
import tempfile
import unittest
import urllib.parse
from xml.etree import ElementTree

import paste.fixture

import controller
import dbservers
from store_contract import clock_offset

JSON = {"Content-Type": "application/json"}
XML = {"Content-Type": "application/xml"}
TEXT = {"Content-Type": "text/plain"}
FORBIDDEN_IN_ERRORS = ("Traceback", "SELECT", "INSERT", "kv_rows", "File \"", "password",
                       dbservers.PASSWORD)


def pep3333(app):
    """paste's raw_interactive puts a percent-decoded *text* PATH_INFO; real
    servers pass the bytes as latin-1 (PEP 3333).  Re-encode as a server would."""
    def wrapped(environ, start_response):
        environ["PATH_INFO"] = environ["PATH_INFO"].encode("utf-8").decode("latin-1")
        return app(environ, start_response)
    return wrapped


def k(key: str) -> str:
    """The URL path of a key, percent-encoded."""
    return "/keys/" + urllib.parse.quote(key, safe="/")


class ApiContract:
    max_value_bytes = 1024

    def write_config(self, path):
        raise NotImplementedError

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="kv-api-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.wsgi = controller.create_application(self.write_config(os.path.join(self.dir, "c.cfg")))
        self.addCleanup(self.wsgi.store.close)
        self.app = paste.fixture.TestApp(pep3333(self.wsgi))

    # helpers
    def req(self, method, path, body=b"", headers=None, status=None):
        response = self.app._gen_request(method, path, params=body, headers=headers or {},
                                         status="*", expect_errors=True)
        if status is not None:
            self.assertEqual(response.status, status, response.body[:500])
        if response.status >= 400:
            self.check_error(response)
        return response

    def check_error(self, response):
        text = response.body.decode("utf-8", "replace")
        for word in FORBIDDEN_IN_ERRORS:
            self.assertNotIn(word, text)
        if response.header("Content-Type", "").startswith("application/json") and response.body:
            error = json.loads(response.body).get("error")
            if error is not None:      # /health answers 503 with its report
                self.assertEqual(error["status"], response.status)
                self.assertTrue(error["code"] and error["message"])

    def put(self, key, value=b"v", headers=None, status=None, query=""):
        return self.req("PUT", k(key) + query, value, headers or TEXT, status)

    def get(self, path, headers=None, status=None):
        return self.req("GET", path, headers=headers, status=status)

    # -- single keys ---------------------------------------------------------
    def test_put_get_head_delete_cycle(self):
        created = self.put("greeting", b"hello", status=201)
        record = json.loads(created.body)
        self.assertEqual((record["key"], record["value"], record["encoding"], record["version"]),
                         ("greeting", "hello", "utf-8", 1))
        self.assertTrue(record["created"].endswith("Z") and len(record["created"]) == 27)
        self.assertIsNone(record["expires"])
        self.assertEqual(self.put("greeting", b"hi", status=200).header("ETag"),
                         self.get(k("greeting")).header("ETag"))
        got = self.get(k("greeting"), status=200)
        self.assertEqual(json.loads(got.body)["version"], 2)
        self.assertTrue(got.header("ETag").startswith('"'))
        self.assertIn("GMT", got.header("Last-Modified"))
        self.assertRegex(got.header("X-Partition"), r"^partition-\d$")
        head = self.req("HEAD", k("greeting"), status=200)
        self.assertEqual(head.body, b"")
        self.assertEqual(head.header("ETag"), got.header("ETag"))
        self.assertEqual(head.header("Content-Length"), str(len(got.body)))
        deleted = self.req("DELETE", k("greeting"), status=204)
        self.assertEqual(deleted.body, b"")
        self.get(k("greeting"), status=404)
        self.req("DELETE", k("greeting"), status=404)
        self.req("HEAD", k("greeting"), status=404)

    def test_keys_with_slashes_percent_encoding_and_unicode(self):
        self.put("a/b", b"slash", status=201)
        self.assertEqual(self.get("/keys/a%2Fb?format=raw").body, b"slash")
        for key in ("ä€😀", "100%", "q?x=1#frag", "sp ace", "'; DROP TABLE kv_rows; --", "<&>"):
            self.put(key, key.encode(), status=201)
            self.assertEqual(self.get(k(key) + "?format=raw", status=200).body, key.encode())
            self.assertEqual(json.loads(self.get(k(key)).body)["key"], key)

    def test_invalid_keys_get_400_on_every_method(self):
        # (Non-UTF-8 bytes such as %FF are tested over a socket in test_server.py:
        # paste decodes them to U+FFFD before the application sees them.)
        for path in ("/keys/", "/keys/a%00b", "/keys/a%0Ab", "/keys/%7F", "/keys/" + "k" * 513):
            for method in ("GET", "HEAD", "PUT", "DELETE"):
                response = self.req(method, path, b"v", TEXT)
                self.assertEqual(response.status, 400, (method, path))
        self.put("k" * 512, status=201)
        self.put("é" * 256, status=201)       # 512 bytes
        self.put("é" * 256 + "e", status=400)  # 513 bytes

    def test_value_limit_and_content_length_decided_before_reading(self):
        limit = self.max_value_bytes
        self.put("max", b"x" * limit, status=201)
        self.put("max", b"x" * (limit + 1), status=413)
        self.assertEqual(len(self.get(k("max") + "?format=raw").body), limit)

        class Untouchable(io.BytesIO):
            def read(self, *args):
                raise AssertionError("the body was read")
        environ = {"REQUEST_METHOD": "PUT", "PATH_INFO": "/keys/huge", "QUERY_STRING": "",
                   "CONTENT_LENGTH": str(10 ** 12), "CONTENT_TYPE": "text/plain",
                   "SERVER_NAME": "t", "SERVER_PORT": "80", "wsgi.input": Untouchable(),
                   "wsgi.url_scheme": "http", "SERVER_PROTOCOL": "HTTP/1.1"}
        statuses = []
        body = b"".join(self.wsgi(environ, lambda status, headers: statuses.append(status)))
        self.assertEqual(statuses, ["413 Content Too Large"])
        self.assertIn(b"too_large", body)

    def test_binary_values_are_base64_in_json_and_xml(self):
        binary = bytes(range(256))
        self.put("bin", binary, {"Content-Type": "application/octet-stream"}, status=201)
        record = json.loads(self.get(k("bin")).body)
        self.assertEqual(record["encoding"], "base64")
        self.assertEqual(base64.b64decode(record["value"]), binary)
        xml = ElementTree.fromstring(self.get(k("bin") + "?format=xml").body)
        self.assertEqual(xml.find("value").get("encoding"), "base64")
        self.assertEqual(base64.b64decode(xml.find("value").text), binary)
        self.assertEqual(self.get(k("bin"), {"Accept": "application/octet-stream"}).body, binary)
        self.get(k("bin"), {"Accept": "text/plain"}, status=406)
        # A write whose answer could not carry the value is refused before it commits.
        octets = {"Content-Type": "application/octet-stream", "Accept": "text/plain"}
        self.put("bin2", binary, octets, status=406)
        self.req("POST", "/keys?key=bin3", binary, octets, status=406)
        self.put("bin", b"\xff", octets, status=406)
        self.get(k("bin2"), status=404)
        self.get(k("bin3"), status=404)
        self.assertEqual(self.get(k("bin"), {"Accept": "application/octet-stream"}).body, binary)
        # XML cannot carry U+0001 even though it is UTF-8.
        self.put("ctl", b"a\x01b", status=201)
        xml = ElementTree.fromstring(self.get(k("ctl"), {"Accept": "text/xml"}).body)
        self.assertEqual(base64.b64decode(xml.find("value").text), b"a\x01b")

    def test_request_body_types(self):
        self.put("j", b'{"value": "caf\\u00e9", "ttl": 60}', JSON, status=201)
        self.put("b", json.dumps({"value": base64.b64encode(b"\x00\xff").decode(),
                                  "encoding": "base64"}).encode(), JSON, status=201)
        self.put("x", '<record><value encoding="utf-8">&lt;é&gt;</value><ttl>60</ttl></record>'
                 .encode(), XML, status=201)
        self.put("f", b"value=a+b%26c&ttl=60",
                 {"Content-Type": "application/x-www-form-urlencoded"}, status=201)
        self.put("t", "plain é".encode(), {"Content-Type": "text/plain; charset=utf-8"}, status=201)
        self.put("n", b"none", {}, status=201)
        self.put("q", b"ttl", TEXT, status=201, query="?ttl=30")
        expected = {"j": "café".encode(), "b": b"\x00\xff", "x": "<é>".encode(), "f": b"a b&c",
                    "t": "plain é".encode(), "n": b"none", "q": b"ttl"}
        for key, value in expected.items():
            self.assertEqual(self.get(k(key) + "?format=raw").body, value, key)
        for key in ("j", "x", "f", "q"):
            self.assertIsNotNone(json.loads(self.get(k(key)).body)["expires"], key)
        self.put("u", b"v", {"Content-Type": "image/png"}, status=415)
        self.put("u", b"v", {"Content-Type": "nonsense"}, status=415)

    def test_bad_bodies_and_ttls_are_400(self):
        bad = [(b'{"value": 1}', JSON), (b'{"value": "x", "extra": 1}', JSON), (b'[1]', JSON),
               (b'{"value": "x", "ttl": "60"}', JSON), (b'{"value": "x", "ttl": true}', JSON),
               (b'{"value": "x", "ttl": 1.5}', JSON), (b'{"value": "!!", "encoding": "base64"}', JSON),
               (b'{"value": "x", "encoding": "rot13"}', JSON), (b'{"value": "\\ud800"}', JSON),
               (b'{bad json', JSON), (b'[' * 50000, JSON), (b"<record><value>x</value>", XML),
               (b"<other/>", XML), (b"<record><oops/></record>", XML), (b"{}", JSON),
               (b"ttl=5", {"Content-Type": "application/x-www-form-urlencoded"}),
               (b"value=%FF", {"Content-Type": "application/x-www-form-urlencoded"})]
        for body, headers in bad:
            self.put("bad", body, headers, status=400)
        for ttl in ("0", "-1", "1.5", "abc", "315360001", "", "%EF%BC%91"):
            self.put("bad", b"v", TEXT, status=400, query="?ttl=" + ttl)
        self.put("bad", b'{"value": "x", "ttl": 5}', JSON, status=400, query="?ttl=5")
        self.put("bad", b"v", TEXT, status=201, query="?ttl=315360000")

    def test_xml_entities_and_external_references_are_refused(self):
        bomb = (b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY a "aaaaaaaaaa">'
                b'<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;"><!ENTITY c "&b;&b;&b;&b;&b;&b;&b;">]>'
                b'<record><value>&c;</value></record>')
        external = (b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
                    b'<record><value>&x;</value></record>')
        for body in (bomb, external):
            self.put("xml", body, XML, status=400)
        self.get(k("xml"), status=404)

    def test_ttl_expiry(self):
        self.put("t", b"v", TEXT, status=201, query="?ttl=10")
        self.get(k("t"), status=200)
        with clock_offset(self.wsgi.store, 11):
            self.get(k("t"), status=404)
            self.assertEqual(json.loads(self.get("/keys").body)["items"], [])

    # -- conditional requests ---------------------------------------------------
    def test_conditional_requests(self):
        etag = self.put("c", b"1", status=201).header("ETag")
        self.get(k("c"), {"If-None-Match": etag}, status=304)
        self.assertEqual(self.get(k("c"), {"If-None-Match": "W/" + etag}).status, 304)
        self.get(k("c"), {"If-None-Match": '"other"'}, status=200)
        self.get(k("c"), {"If-None-Match": "*"}, status=304)
        self.put("c", b"2", {"If-Match": '"stale"', **TEXT}, status=412)
        self.put("c", b"2", {"If-Match": "W/" + etag, **TEXT}, status=412)   # strong comparison
        new = self.put("c", b"2", {"If-Match": etag, **TEXT}, status=200).header("ETag")
        self.assertNotEqual(new, etag)
        self.put("c", b"3", {"If-None-Match": "*", **TEXT}, status=412)
        self.put("fresh", b"1", {"If-None-Match": "*", **TEXT}, status=201)
        self.put("absent", b"1", {"If-Match": "*", **TEXT}, status=412)
        self.req("DELETE", k("c"), headers={"If-Match": etag}, status=412)
        self.req("DELETE", k("c"), headers={"If-Match": new}, status=204)
        self.put("c", b"again", status=201)
        self.put("c", b"x", {"If-Match": new, **TEXT}, status=412)   # old ETag never matches again
        self.put("c", b"x", {"If-Match": "garbage", **TEXT}, status=400)
        last_modified = self.get(k("c")).header("Last-Modified")
        self.get(k("c"), {"If-Modified-Since": last_modified}, status=304)
        self.get(k("c"), {"If-Modified-Since": "Thu, 01 Jan 1970 00:00:00 GMT"}, status=200)

    def test_post_creates_with_location_and_conflicts(self):
        response = self.req("POST", "/keys", b'{"key": "new/key", "value": "v"}', JSON, status=201)
        self.assertEqual(response.header("Location"), "/keys/new%2Fkey")
        self.assertEqual(self.get(response.header("Location") + "?format=raw").body, b"v")
        self.req("POST", "/keys", b'{"key": "new/key", "value": "w"}', JSON, status=409)
        self.req("POST", "/keys", b"<record><key>x</key><value>1</value></record>", XML, status=201)
        self.req("POST", "/keys", b"key=f&value=2",
                 {"Content-Type": "application/x-www-form-urlencoded"}, status=201)
        self.req("POST", "/keys?key=raw", b"3", TEXT, status=201)
        self.req("POST", "/keys", b'{"value": "v"}', JSON, status=400)
        self.req("POST", "/keys", b'{"key": "", "value": "v"}', JSON, status=400)
        self.req("POST", "/keys", b'{"key": 5, "value": "v"}', JSON, status=400)

    # -- representations -------------------------------------------------------------
    def test_content_negotiation(self):
        self.put("n", "héllo <&>".encode(), status=201)
        cases = {None: "application/json", "*/*": "application/json",
                 "application/xml": "application/xml", "text/xml": "text/xml",
                 "text/plain": "text/plain; charset=utf-8",
                 "application/octet-stream": "application/octet-stream",
                 "application/xml;q=0.5, application/json;q=0.9": "application/json",
                 "application/json;q=0.1, text/plain": "text/plain; charset=utf-8",
                 "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8":
                 "text/html; charset=utf-8",                 # a browser gets the page
                 "text/html;q=0.5, application/json": "application/json"}
        for accept, content_type in cases.items():
            response = self.get(k("n"), {"Accept": accept} if accept else {}, status=200)
            self.assertEqual(response.header("Content-Type"), content_type, accept)
            self.assertIn("Accept", response.header("Vary"))
        xml = ElementTree.fromstring(self.get(k("n"), {"Accept": "application/xml"}).body)
        self.assertEqual(xml.find("value").text, "héllo <&>")
        self.assertEqual(self.get(k("n"), {"Accept": "text/plain"}).body, "héllo <&>".encode())
        refused = self.get(k("n"), {"Accept": "image/png"}, status=406)
        self.assertIn(b"application/json", refused.body)
        self.get(k("n"), {"Accept": "application/json;q=0"}, status=406)
        self.get(k("n") + "?format=xml", {"Accept": "application/json"}, status=200)
        self.assertEqual(self.get(k("n") + "?format=text").body, "héllo <&>".encode())
        self.get(k("n") + "?format=yaml", status=400)
        self.assertIn("héllo &lt;&amp;&gt;", self.get(k("n") + "?format=html", status=200)
                      .body.decode("utf-8"))
        missing = self.get(k("missing"), {"Accept": "application/xml"}, status=404)
        error = ElementTree.fromstring(missing.body)
        self.assertEqual((error.tag, error.find("status").text, error.find("code").text),
                         ("error", "404", "key_not_found"))
        self.assertIn(b"no key", self.get(k("missing"), {"Accept": "text/plain"}, status=404).body)

    # -- listing -----------------------------------------------------------
    def test_listing_formats_paging_and_parameters(self):
        keys = ["a", "b/1", "b/2", "c", "d é", "e"]
        for key in keys:
            self.put(key, key.encode(), status=201)
        listing = json.loads(self.get("/keys").body)
        self.assertEqual([i["key"] for i in listing["items"]], keys)
        self.assertEqual(set(listing["items"][0]), {"key", "version", "modified", "expires"})
        self.assertIsNone(listing["next"])
        seen, path = [], "/keys?limit=2"
        while path:
            response = self.get(path, status=200)
            page = json.loads(response.body)
            seen += [i["key"] for i in page["items"]]
            path = None
            if page["next"]:
                path = "/keys?limit=2&cursor=" + page["next"]
                self.assertIn(page["next"], response.header("Link"))
        self.assertEqual(seen, keys)
        grouped = json.loads(self.get("/keys?delimiter=/").body)
        self.assertEqual(([i["key"] for i in grouped["items"]], grouped["prefixes"]),
                         (["a", "c", "d é", "e"], ["b/"]))
        valued = json.loads(self.get("/keys?prefix=b/&values=true").body)["items"]
        self.assertEqual([(i["key"], i["value"], i["encoding"]) for i in valued],
                         [("b/1", "b/1", "utf-8"), ("b/2", "b/2", "utf-8")])
        xml = ElementTree.fromstring(self.get("/keys?delimiter=/&format=xml").body)
        self.assertEqual([i.find("key").text for i in xml.findall("item")], ["a", "c", "d é", "e"])
        self.assertEqual([p.text for p in xml.findall("prefix")], ["b/"])
        text = self.get("/keys", {"Accept": "text/plain"}).body.decode()
        self.assertEqual(text.splitlines(), keys)
        self.get("/keys", {"Accept": "application/octet-stream"}, status=406)
        for bad in ("limit=0", "limit=1001", "limit=x", "values=yes", "cursor=%%%", "prefix=%FF"):
            self.get("/keys?" + bad, status=400)
        self.req("HEAD", "/keys", status=200)

    # -- batch -----------------------------------------------------------------
    def test_batch(self):
        etag = self.put("x", b"old", status=201).header("ETag")
        ops = {"ops": [{"op": "put", "key": "a", "value": "1"},
                       {"op": "put", "key": "a", "value": "2"},
                       {"op": "get", "key": "a"},
                       {"op": "get", "key": "missing"},
                       {"op": "put", "key": "x", "value": "new", "if_match": '"stale"'},
                       {"op": "put", "key": "x", "value": "new", "if_match": etag, "ttl": 60},
                       {"op": "put", "key": "b", "value": base64.b64encode(b"\xff").decode(),
                        "encoding": "base64"},
                       {"op": "delete", "key": "a"},
                       {"op": "get", "key": ""}]}
        response = self.req("POST", "/batch", json.dumps(ops).encode(), JSON, status=200)
        results = json.loads(response.body)["results"]
        self.assertEqual([r["status"] for r in results], [201, 200, 200, 404, 412, 200, 201, 204, 400])
        self.assertEqual(results[2]["record"]["value"], "2")
        self.assertEqual(results[3]["error"]["code"], "key_not_found")
        self.assertEqual(self.get(k("b") + "?format=raw").body, b"\xff")
        xml_ops = (b'<batch><op type="put"><key>xk</key><value>xv</value></op>'
                   b'<op type="get"><key>xk</key></op></batch>')
        xml = ElementTree.fromstring(self.req("POST", "/batch", xml_ops,
                                                   {"Accept": "application/xml", **XML}, status=200).body)
        self.assertEqual([r.find("status").text for r in xml.findall("result")], ["201", "200"])

    def test_bad_batches_apply_nothing(self):
        bodies = [b"{}", b'{"ops": {}}', b'{"ops": [{"op": "put", "key": "z", "value": "1"},'
                  b' {"op": "explode", "key": "z"}]}',
                  json.dumps({"ops": [{"op": "put", "key": "z%d" % i, "value": "v"}
                                      for i in range(1001)]}).encode(),
                  b'{"ops": [{"op": "put", "key": "z", "value": "1", "ttl": 0}]}',
                  b'{"ops": [{"op": "put", "key": "z"}]}', b"not json"]
        for body in bodies:
            self.req("POST", "/batch", body, JSON, status=400)
        self.req("POST", "/batch", b"x", TEXT, status=415)
        self.assertEqual(json.loads(self.get("/keys").body)["items"], [])

    # -- errors and other resources ---------------------------------------------
    def test_methods_paths_and_health(self):
        not_allowed = self.req("PATCH", k("x"), status=405)
        self.assertEqual(not_allowed.header("Allow"), "GET, HEAD, PUT, DELETE")
        self.assertEqual(self.req("PUT", "/keys", status=405).header("Allow"), "GET, HEAD, POST")
        self.assertEqual(self.req("GET", "/batch", status=405).header("Allow"), "POST")
        self.get("/nowhere", status=404)
        self.get("/", status=200)                                    # the home page
        health = json.loads(self.get("/health", status=200).body)
        self.assertEqual(health["status"], "ok")
        self.assertEqual(len(health["partitions"]), 3)

    def test_unavailable_partitions_give_503_with_retry_after(self):
        self.put("k", status=201)
        for partition in self.wsgi.store.partitions.values():
            partition._down_until = float("inf")
        response = self.get(k("k"), status=503)
        self.assertEqual(response.header("Retry-After"), "2")
        self.put("k", status=503)
        self.get("/keys", status=503)
        health = json.loads(self.get("/health", status=503).body)
        self.assertEqual(health["status"], "degraded")


class SQLiteApiTest(ApiContract, unittest.TestCase):
    def write_config(self, path):
        sections = "".join("[partition-%d]\nengine = sqlite\npath = p%d.sqlite3\n\n" % (i, i)
                           for i in (1, 2, 3))
        with open(path, "w") as f:
            f.write("[server]\nmax_value_bytes = %d\n\n[cluster]\npartitions = 3\nreplicas = 2\n\n%s"
                    % (self.max_value_bytes, sections))
        return path


class MariaDBApiTest(ApiContract, unittest.TestCase):
    def write_config(self, path):
        servers = dbservers.shared(3)
        for server in servers:
            server.execute("DELETE FROM kv_rows")
        dbservers.write_config(path, servers, replicas=2)
        with open(path) as f:
            text = f.read().replace("max_value_bytes = 1048576", "max_value_bytes = %d"
                                    % self.max_value_bytes)
        with open(path, "w") as f:
            f.write(text)
        return path
