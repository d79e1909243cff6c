"""The HTTP edge of issue 13 through the WSGI application in-process
(paste's TestApp), on SQLite partitions and on three real MariaDB servers:
unknown query parameters, Accept header case and syntax, If-Match on reads,
If-Unmodified-Since (RFC 9110 sections 13.1.1, 13.1.4 and 13.2.2), methods
on unknown and known paths, and bodies that must be refused whole."""

import datetime
import json
import os
import shutil
import tempfile
import time
import unittest
from xml.etree import ElementTree

import paste.fixture

import controller
import dbservers
from kv.http import representations

TEXT = {"Content-Type": "text/plain"}
LONG_AGO = "Sat, 01 Jan 2000 00:00:00 GMT"
FAR_AHEAD = "Fri, 01 Jan 2100 00:00:00 GMT"


class EdgeContract:
    def write_config(self, path):
        raise NotImplementedError

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="kv-edge-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.wsgi = controller.create_application(self.write_config(os.path.join(self.dir, "c.cfg")))
        self.addCleanup(self.wsgi.store.close)
        self.app = paste.fixture.TestApp(self.wsgi)

    def req(self, method, path, body=b"", headers=None, status=None):
        response = self.app._gen_request(method, path, params=body, headers=headers or {},
                                         status="*", expect_errors=True)
        if status is not None:
            self.assertEqual(response.status, status, response.body[:300])
        return response

    def error(self, response, status, code):
        self.assertEqual(response.status, status, response.body[:300])
        self.assertTrue(response.header("Content-Type").startswith("application/json"))
        error = json.loads(response.body)["error"]
        self.assertEqual((error["status"], error["code"]), (status, code))
        return error["message"]

    def value(self, key):
        response = self.req("GET", "/keys/" + key, headers={"Accept": "application/octet-stream"})
        return response.body if response.status == 200 else None

    # -- query parameters ---------------------------------------------------
    def test_an_unknown_query_parameter_is_400_and_lists_nothing(self):
        self.req("PUT", "/keys/a", b"1", TEXT, status=201)
        message = self.error(self.req("GET", "/keys?prefx=zzz"), 400, "unknown_parameter")
        self.assertIn("prefx", message)
        self.assertIn("prefix", message)              # says what the route takes
        for path in ("/keys/a?ttl=5", "/health?verbose=1", "/buckets?values=true",
                     "/buckets/b/keys?limt=5", "/buckets/notes:*/keys/k?aggregate=sum&x=1"):
            self.error(self.req("GET", path), 400, "unknown_parameter")
        self.error(self.req("PUT", "/keys/a?tll=5", b"2", TEXT), 400, "unknown_parameter")
        self.assertEqual(self.value("a"), b"1")       # refused before the write
        self.error(self.req("POST", "/batch?dry_run=1", b'{"ops": []}',
                            {"Content-Type": "application/json"}), 400, "unknown_parameter")
        # the parameters a route defines, and format everywhere, are accepted
        self.req("GET", "/keys?prefix=a&delimiter=/&limit=5&values=true&format=json", status=200)
        self.req("PUT", "/keys/a?ttl=60&format=xml", b"3", TEXT, status=200)
        self.req("GET", "/keys/a?format=text", status=200)
        self.req("HEAD", "/keys/a?format=json", status=200)

    # -- Accept ---------------------------------------------------------------
    def test_media_types_in_accept_are_case_insensitive(self):
        self.req("PUT", "/keys/a", b"hello", TEXT, status=201)
        xml = self.req("GET", "/keys/a", headers={"Accept": "APPLICATION/XML"}, status=200)
        self.assertTrue(xml.header("Content-Type").startswith("application/xml"))
        self.assertEqual(ElementTree.fromstring(xml.body).findtext("value"), "hello")
        text = self.req("GET", "/keys/a", headers={"Accept": "Text/Plain;Q=0.9, */*;q=0.1"})
        self.assertEqual((text.status, text.body), (200, b"hello"))

    def test_a_malformed_accept_gets_the_api_error_format(self):
        for accept in ("foo", "text/html;q=x", "text/", "text/plain;q=1.5"):
            message = self.error(self.req("GET", "/keys/a", headers={"Accept": accept}),
                                 400, "bad_accept")
            self.assertIn("Accept", message)
        # an Accept nothing satisfies: 406, in the API's error format, naming the types
        message = self.error(self.req("GET", "/keys/a", headers={"Accept": "image/png"}),
                             406, "not_acceptable")
        self.assertIn("application/xml", message)
        # ?format= overrides Accept, so a malformed Accept is then irrelevant
        self.req("PUT", "/keys/a", b"v", TEXT, status=201)
        self.req("GET", "/keys/a?format=json", headers={"Accept": "foo"}, status=200)

    # -- conditional requests ---------------------------------------------------
    def test_if_match_on_get_and_head(self):
        etag = self.req("PUT", "/keys/a", b"v", TEXT, status=201).header("ETag")
        for method in ("GET", "HEAD"):
            self.req(method, "/keys/a", headers={"If-Match": etag}, status=200)
            self.req(method, "/keys/a", headers={"If-Match": "*"}, status=200)
            self.req(method, "/keys/a", headers={"If-Match": '"other", %s' % etag}, status=200)
            self.req(method, "/keys/a", headers={"If-Match": '"other"'}, status=412)
            self.req(method, "/keys/a", headers={"If-Match": "W/" + etag}, status=412)  # strong
        self.req("GET", "/keys/absent", headers={"If-Match": "*"}, status=404)
        self.error(self.req("GET", "/keys/a", headers={"If-Match": "no quotes"}), 400, "bad_request")

    def test_if_unmodified_since_on_reads(self):
        self.req("PUT", "/keys/a", b"v", TEXT, status=201)
        self.req("GET", "/keys/a", headers={"If-Unmodified-Since": LONG_AGO}, status=412)
        self.req("GET", "/keys/a", headers={"If-Unmodified-Since": FAR_AHEAD}, status=200)
        self.req("GET", "/keys/a", headers={"If-Unmodified-Since": "yesterday"}, status=200)
        etag = self.req("GET", "/keys/a").header("ETag")    # If-Match present: IUS ignored
        self.req("GET", "/keys/a", headers={"If-Match": etag, "If-Unmodified-Since": LONG_AGO},
                 status=200)

    def test_if_unmodified_since_on_writes(self):
        self.req("PUT", "/keys/a", b"one", TEXT, status=201)
        self.req("PUT", "/keys/a", b"two", dict(TEXT, **{"If-Unmodified-Since": LONG_AGO}),
                 status=412)
        self.assertEqual(self.value("a"), b"one")
        self.req("PUT", "/keys/a", b"two", dict(TEXT, **{"If-Unmodified-Since": FAR_AHEAD}),
                 status=200)
        self.assertEqual(self.value("a"), b"two")
        # an absent key cannot be shown unmodified: nothing is created
        self.req("PUT", "/keys/b", b"x", dict(TEXT, **{"If-Unmodified-Since": FAR_AHEAD}),
                 status=412)
        self.assertIsNone(self.value("b"))
        self.req("DELETE", "/keys/a", headers={"If-Unmodified-Since": LONG_AGO}, status=412)
        self.assertEqual(self.value("a"), b"two")
        self.req("DELETE", "/keys/a", headers={"If-Unmodified-Since": "not a date"}, status=204)
        self.assertIsNone(self.value("a"))
        etag = self.req("PUT", "/keys/c", b"1", TEXT, status=201).header("ETag")
        self.req("PUT", "/keys/c", b"2", dict(TEXT, **{"If-Match": etag,
                                                        "If-Unmodified-Since": LONG_AGO}),
                 status=200)                            # If-Match wins (RFC 9110 13.1.4)

    # -- methods ----------------------------------------------------------------
    def test_methods_on_unknown_and_known_paths(self):
        for method in ("GET", "PUT", "POST", "DELETE", "PATCH", "OPTIONS"):
            self.error(self.req(method, "/nowhere"), 404, "not_found")
        for path, allow in (("/keys/a", "GET, HEAD, PUT, DELETE"), ("/keys", "GET, HEAD, POST"),
                            ("/batch", "POST"), ("/health", "GET, HEAD"),
                            ("/buckets/b/keys/a", "GET, HEAD, PUT, DELETE")):
            response = self.req("PATCH", path)
            self.error(response, 405, "method_not_allowed")
            self.assertEqual(response.header("Allow"), allow)
        self.assertEqual(self.req("POST", "/keys/a", b"v", TEXT, status=405).header("Allow"),
                         "GET, HEAD, PUT, DELETE")

    # -- bodies refused whole -------------------------------------------------
    def test_a_batch_op_of_the_wrong_type_is_400_and_applies_nothing(self):
        for op in ([], {}, 5, None, True):
            body = json.dumps({"ops": [{"op": "put", "key": "first", "value": "x"},
                                       {"op": op, "key": "a"}]})
            self.error(self.req("POST", "/batch", body, {"Content-Type": "application/json"}),
                       400, "bad_request")
        self.assertIsNone(self.value("first"))

    def test_an_xml_value_with_child_elements_is_400(self):
        for body in (b"<record><value>a<b>c</b>d</value></record>",
                     b"<record><value><b/></value></record>"):
            self.error(self.req("PUT", "/keys/x", body, {"Content-Type": "application/xml"}),
                       400, "bad_request")
        self.assertIsNone(self.value("x"))
        body = b"<batch><op><op>put</op><key>x</key><value>a<b/></value></op></batch>"
        self.error(self.req("POST", "/batch", body, {"Content-Type": "application/xml"}),
                   400, "bad_request")
        self.assertIsNone(self.value("x"))

    def test_xml_errors_are_well_formed_whatever_the_path_holds(self):
        for path in ("/keys/%01", "/nowhere%01%0b%7f", "/buckets/%01/keys/a"):
            response = self.req("GET", path, headers={"Accept": "application/xml"})
            self.assertIn(response.status, (400, 404))
            error = ElementTree.fromstring(response.body)       # raises when not well-formed
            self.assertEqual(error.findtext("status"), str(response.status))


    def test_a_failure_while_rendering_is_a_500_not_a_405(self):
        self.req("PUT", "/keys/a", b"v", TEXT, status=201)
        cells = representations.RENDERERS[representations.RECORD]

        def broken(_):
            raise RuntimeError("renderer bug")
        original = cells["xml"]
        cells["xml"] = broken
        try:
            response = self.req("GET", "/keys/a", headers={"Accept": "application/xml"})
        finally:
            cells["xml"] = original
        self.assertEqual(response.status, 500, response.body[:300])
        error = ElementTree.fromstring(response.body)       # the negotiated error format
        self.assertEqual(error.findtext("code"), "internal_error")
        self.assertNotIn(b"renderer bug", response.body)


class SQLiteEdgeTest(EdgeContract, unittest.TestCase):
    def write_config(self, path):
        with open(path, "w") as f:
            f.write("[server]\n[cluster]\npartitions = 2\nreplicas = 2\n"
                    "[partition-1]\nengine = sqlite\npath = p1.sqlite3\n"
                    "[partition-2]\nengine = sqlite\npath = p2.sqlite3\n")
        return path


class MariaDBEdgeTest(EdgeContract, unittest.TestCase):
    def write_config(self, path):
        servers = dbservers.shared(3)
        for server in servers:
            server.execute("DELETE FROM kv_rows")
        return dbservers.write_config(path, servers, replicas=2)


del EdgeContract


class AuthOnEdgeTest(unittest.TestCase):
    """With authentication on: a browser's Basic credentials cannot be used
    by another site's form (POST /keys takes form bodies, as curl -d sends),
    and /health says only ok or degraded, to anyone."""

    def setUp(self):
        config = self.config = dbservers.temp_config(
            self, "[server]\n[cluster]\npartitions = 1\n[auth]\nenabled = true\n"
            "refresh_seconds = 1\n[partition-1]\nengine = sqlite\npath = p1.sqlite3\n")
        admin = {"Authorization": "Bearer " + dbservers.bootstrap_admin(config)}
        self.wsgi = controller.create_application(config)
        self.addCleanup(self.wsgi.store.close)
        self.app = paste.fixture.TestApp(self.wsgi)
        json_admin = dict(admin, **{"Content-Type": "application/json"})
        self.post("PUT", "/auth/users/alice", json.dumps({"password": "pw"}), json_admin, 201)
        self.post("POST", "/auth/rules", json.dumps(
            {"effect": "allow", "principal": "user:alice", "verbs": ["write"], "bucket": "*",
             "keys": "#"}), json_admin, 201)
        self.basic = {"Authorization": "Basic YWxpY2U6cHc=",          # alice:pw
                      "Content-Type": "application/x-www-form-urlencoded", "Host": "kv.local"}
        self.token = admin

    def post(self, method, path, body, headers, status):
        response = self.app._gen_request(method, path, params=body, headers=headers,
                                         status="*", expect_errors=True)
        self.assertEqual(response.status, status, response.body[:300])
        return response

    def test_a_cross_site_form_post_with_basic_credentials_is_refused(self):
        for extra in ({"Sec-Fetch-Site": "cross-site"}, {"Origin": "https://evil.example"},
                      {"Origin": "null"}):
            refused = self.post("POST", "/keys", "key=a&value=forged", dict(self.basic, **extra),
                                403)
            self.assertEqual(json.loads(refused.body)["error"]["code"], "cross_site_request")
        self.post("GET", "/keys/a", "", self.token, 404)                 # nothing was written
        # the service's own pages, curl, and bearer tokens are not affected
        self.post("POST", "/keys", "key=a&value=1",
                  dict(self.basic, **{"Sec-Fetch-Site": "same-origin"}), 201)
        self.post("PUT", "/keys/b", "value=2", dict(self.basic, Origin="http://kv.local"), 201)
        self.post("PUT", "/keys/c", "value=3", self.basic, 201)
        self.post("PUT", "/keys/d", "value=4", dict(self.token, **{
            "Content-Type": "application/x-www-form-urlencoded", "Sec-Fetch-Site": "cross-site"}),
            201)

    def test_health_says_only_the_status_in_the_negotiated_format(self):
        for headers in ({}, self.token):
            response = self.post("GET", "/health", "", headers, 200)
            self.assertEqual(json.loads(response.body), {"status": "ok"})
        xml = self.post("GET", "/health?format=xml", "", {}, 200)
        self.assertEqual(ElementTree.fromstring(xml.body).text, "ok")

    def test_bootstrap_admin_again_enables_a_disabled_admin(self):
        json_admin = dict(self.token, **{"Content-Type": "application/json"})
        self.post("PUT", "/auth/users/root", json.dumps({"disabled": True}), json_admin, 200)
        self.post("GET", "/auth/whoami", "", self.token, 401)     # locked out
        again = {"Authorization": "Bearer " + dbservers.bootstrap_admin(self.config, again=True)}
        deadline = time.monotonic() + 15                 # [auth] refresh_seconds = 1
        while time.monotonic() < deadline and self.app._gen_request(
                "GET", "/auth/whoami", headers=again, status="*", expect_errors=True).status != 200:
            time.sleep(0.2)
        self.post("GET", "/auth/whoami", "", again, 200)

    def test_a_remembered_token_still_expires_on_time(self):
        """kv.http.access.Authenticator remembers a success for a second;
        the token's expiry is checked on every request all the same."""
        expires = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=2)
        created = self.post("POST", "/auth/tokens", json.dumps(
            {"principal": "user:root", "expires": expires.strftime("%Y-%m-%dT%H:%M:%S.%fZ")}),
            dict(self.token, **{"Content-Type": "application/json"}), 201)
        short = {"Authorization": "Bearer " + json.loads(created.body)["token"]}
        while datetime.datetime.now(datetime.timezone.utc) < expires - datetime.timedelta(
                seconds=0.5):
            self.post("GET", "/auth/whoami", "", short, 200)      # remembered after the first
            time.sleep(0.05)
        time.sleep(max(0.0, (expires - datetime.datetime.now(datetime.timezone.utc))
                       .total_seconds()) + 0.1)
        self.post("GET", "/auth/whoami", "", short, 401)
