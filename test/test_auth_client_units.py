"""The clients' side of buckets, authentication and administration, without
a server: the error mapping, the ``kv`` arguments and credentials, and what
the library and the ``kv`` commands send, checked on a scripted HTTP server.
test_auth_clients.py runs them end to end."""

import base64
import contextlib
import http.server
import io
import json
import threading
import unittest
import urllib.parse

import requests

import kvclient
from kvclient import admin, cli
from kvclient.errors import error_for


def answer(status, body=None, headers=None) -> requests.Response:
    """A requests.Response as the service would send it."""
    response = requests.Response()
    response.status_code = status
    response._content = json.dumps(body).encode() if body is not None else b""
    response.headers.update(headers or {})
    return response


def error(status, code, message="m"):
    return {"error": {"status": status, "code": code, "message": message}}


class ErrorMappingTest(unittest.TestCase):
    def test_401_and_403_have_their_own_classes(self):
        challenge = 'Bearer realm="kv", error="invalid_token"'
        e = error_for(answer(401, error(401, "invalid_credentials"), {"WWW-Authenticate": challenge}))
        self.assertIsInstance(e, kvclient.Unauthorized)
        self.assertIsInstance(e, PermissionError)
        self.assertIsInstance(e, kvclient.KVError)
        self.assertEqual((e.status, e.code, e.challenge), (401, "invalid_credentials", challenge))
        e = error_for(answer(403, error(403, "forbidden")))
        self.assertIsInstance(e, kvclient.Forbidden)
        self.assertNotIsInstance(e, kvclient.NotFound)
        self.assertEqual(cli._exit_code(e), 6)
        self.assertEqual(cli._exit_code(kvclient.Unauthorized(401, "x", "y")), 5)
        self.assertIsInstance(error_for(answer(404, error(404, "key_not_found"))), KeyError)
        self.assertIsInstance(error_for(answer(400, error(400, "invalid_bucket"))),
                              kvclient.BadRequest)


class ArgumentsTest(unittest.TestCase):
    def parse(self, *argv, environ=None):
        with contextlib.redirect_stderr(io.StringIO()):
            args = cli.parser().parse_args(list(argv))
        cli.credentials(args, environ or {}, ask=lambda prompt: "asked")
        return args

    def test_credentials_come_from_options_then_environment_then_a_prompt(self):
        args = self.parse("get", "k", "--token", "kv_t", environ={"KV_USER": "u"})
        self.assertEqual((args.token, args.user, args.password), ("kv_t", None, None))
        args = self.parse("--user", "bob", "whoami", environ={"KV_TOKEN": "kv_env"})
        self.assertEqual((args.token, args.user, args.password), (None, "bob", "asked"))
        args = self.parse("whoami", environ={"KV_USER": "bob", "KV_PASSWORD": "pw"})
        self.assertEqual((args.token, args.user, args.password), (None, "bob", "pw"))
        args = self.parse("whoami", environ={"KV_TOKEN": "kv_env", "KV_USER": "bob"})
        self.assertEqual((args.token, args.user), ("kv_env", None))
        with self.assertRaises(SystemExit):
            self.parse("whoami", "--token", "t", "--user", "u")

    def test_subcommands_parse(self):
        args = self.parse("rule", "add", "allow", "user:bob", "read,list", "notes:alice",
                          "shared/#", "--via-app", "notes")
        self.assertEqual((args.run, args.effect, args.principal, args.verbs, args.selector,
                          args.keys, args.via_app),
                         (admin.cmd_rule_add, "allow", "user:bob", "read,list", "notes:alice",
                          "shared/#", "notes"))
        self.assertIsNone(getattr(args, "bucket", None))      # a selector, not the store's bucket
        for argv in (["--bucket", "notes:a", "set", "k", "v"], ["set", "k", "v", "--bucket", "notes:a"]):
            args = self.parse(*argv)
            self.assertEqual((args.run, args.bucket), (cli.cmd_set, "notes:a"))
        self.assertIsNone(self.parse("get", "k").bucket)
        args = self.parse("check", "user:bob", "read", "notes:alice", "k", "--app", "notes")
        self.assertEqual((args.target, args.verb, args.app), ("notes:alice", "read", "notes"))
        self.assertEqual(self.parse("across", "notes", "k", "--aggregate", "sum").aggregate, "sum")
        for argv in (["user", "add", "bob", "--password-stdin"], ["user", "disable", "bob"],
                     ["app", "add", "notes", "--per-user-buckets"], ["token", "ls"],
                     ["token", "create", "app:notes", "--expires", "2030-01-01T00:00:00Z"],
                     ["rule", "ls", "--bucket", "*"], ["buckets", "--prefix", "notes:"]):
            self.assertTrue(callable(self.parse(*argv).run), argv)
        for argv in (["user"], ["rule", "add", "maybe", "p", "read", "b", "#"],
                     ["check", "user:bob", "fly", "b", "k"]):
            with self.assertRaises(SystemExit):
                self.parse(*argv)


class _Scripted(http.server.BaseHTTPRequestHandler):
    """Records every request in ``seen`` as (method, path, query dict, headers,
    JSON body) and answers from ``routes``: (method, path) -> (status, body)
    or a list of them (answered in turn)."""
    routes, seen = {}, []

    def answer(self):
        url = urllib.parse.urlsplit(self.path)
        data = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            body = json.loads(data) if data else None
        except ValueError:
            body = data
        self.seen.append((self.command, url.path, dict(urllib.parse.parse_qsl(url.query)),
                          dict(self.headers), body))
        route = self.routes.get((self.command, url.path), (404, error(404, "not_found")))
        status, doc = route.pop(0) if isinstance(route, list) else route
        payload = json.dumps(doc).encode() if doc is not None else b""
        if self.headers.get("Accept") == "application/octet-stream" and status == 200:
            payload = doc["value"].encode()          # a record's raw value
        self.send_response(status)
        if status == 401:
            self.send_header("WWW-Authenticate", 'Bearer realm="kv", error="invalid_token"')
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = answer

    def log_message(self, *args):
        pass


RECORD = {"key": "test", "value": "TEST", "encoding": "utf-8", "version": 1,
          "created": "2026-01-01T00:00:00.000000Z", "modified": "2026-01-01T00:00:00.000000Z",
          "expires": None}


class WireTest(unittest.TestCase):
    """What the library and ``kv`` send (a scripted server, no service)."""

    def setUp(self):
        _Scripted.routes, _Scripted.seen = {}, []
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Scripted)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        self.addCleanup(server.server_close)
        self.addCleanup(server.shutdown)
        self.url = "http://127.0.0.1:%d" % server.server_address[1]

    def route(self, method, path, *answers):
        _Scripted.routes[(method, path)] = list(answers) if len(answers) > 1 else answers[0]

    def sent(self):
        return [(method, path) for method, path, *_ in _Scripted.seen]

    def test_bucket_paths_and_credentials(self):
        bucket = "/buckets/notes:alice@example.com/keys"
        self.route("PUT", bucket + "/a.b%2Fc", (201, RECORD))   # requests unquotes %2E
        self.route("GET", bucket, (200, {"items": [{"key": "a.b/c", "version": 1, "modified":
                                                    RECORD["modified"], "expires": None}],
                                         "prefixes": [], "next": None}))
        self.route("POST", "/batch", (200, {"results": [{"status": 201, "record": RECORD}] * 2}))
        store = kvclient.connect(self.url, bucket="notes:alice@example.com", token="kv_secret")
        store.put("a.b/c", b"v")
        self.assertEqual(store.keys(), ["a.b/c"])
        store.batch([{"op": "put", "key": "x", "value": "1"},
                     {"op": "get", "key": "y", "bucket": "other"}])
        self.assertEqual(self.sent(), [("PUT", bucket + "/a.b%2Fc"), ("GET", bucket),
                                       ("POST", "/batch")])
        self.assertEqual({s[3]["Authorization"] for s in _Scripted.seen}, {"Bearer kv_secret"})
        self.assertEqual([op["bucket"] for op in _Scripted.seen[2][4]["ops"]],
                         ["notes:alice@example.com", "other"])
        self.route("GET", "/keys/k", (200, RECORD))
        kvclient.connect(self.url, user="bób", password="pässword").get("k")
        self.assertEqual(_Scripted.seen[-1][3]["Authorization"],
                         "Basic " + base64.b64encode("bób:pässword".encode()).decode())
        self.assertNotIn("Authorization", kvclient.connect(self.url).session.headers)
        with self.assertRaises(ValueError):
            kvclient.connect(self.url, token="t", user="u")

    def test_start_session_set_get_delete_end(self):
        session = {"token": "kv_session", "expires": "2026-01-02T00:00:00.000000Z",
                   "bucket": "notes:alice@example.com"}
        path = "/buckets/notes:alice@example.com/keys/test"
        self.route("POST", "/sessions", (201, session))
        self.route("PUT", path, (201, RECORD))
        self.route("GET", path, (200, RECORD), (404, error(404, "key_not_found")))
        self.route("DELETE", path, (204, None))
        self.route("DELETE", "/sessions/current", (204, None))
        import kvclient as client
        s = client.connect(self.url, app="notes", token="kv_app").start_session(
            "alice@example.com", {"password": "pw"})
        self.assertEqual((s.bucket, s.user, s.app, s.token, s.expires.day),
                         ("notes:alice@example.com", "alice@example.com", "notes", "kv_session", 2))
        s.set("test", "TEST")
        self.assertEqual(s.get("test"), b"TEST")
        s.delete("test")
        with self.assertRaises(KeyError):
            s.get("test")
        s.end()
        s.close()                                    # ends once
        method, path_, _, headers, body = _Scripted.seen[0]
        self.assertEqual((method, path_, headers["Authorization"], body),
                         ("POST", "/sessions", "Bearer kv_app",
                          {"user": "alice@example.com", "password": "pw"}))
        self.assertEqual(self.sent()[1:], [("PUT", path), ("GET", path), ("DELETE", path),
                                           ("GET", path), ("DELETE", "/sessions/current")])
        self.assertEqual({s[3]["Authorization"] for s in _Scripted.seen[1:]}, {"Bearer kv_session"})

    def test_401_and_403_are_not_retried(self):
        self.route("GET", "/keys/k", (401, error(401, "invalid_credentials")))
        self.route("PUT", "/keys/k", (403, error(403, "forbidden")))
        store = kvclient.connect(self.url, token="kv_bad", retries=3)
        with self.assertRaises(kvclient.Unauthorized) as caught:
            store.get("k")
        self.assertIn("invalid_token", caught.exception.challenge)
        with self.assertRaises(kvclient.Forbidden):
            store.put("k", b"v")
        self.assertEqual(self.sent(), [("GET", "/keys/k"), ("PUT", "/keys/k")])

    def test_listings_follow_next_through_empty_pages(self):
        self.route("GET", "/auth/users", (200, {"items": [{"name": "a"}], "next": "c1"}),
                   (200, {"items": [], "next": "c2"}), (200, {"items": [{"name": "b"}], "next": None}))
        self.route("GET", "/buckets/notes:*/keys/score",
                   (200, {"items": [{"bucket": "notes:a", "record": RECORD}], "next": None}),
                   (200, {"aggregate": "sum", "value": 3, "count": 1, "non_numeric": 0,
                          "complete": True}))
        store = kvclient.connect(self.url, token="kv_admin")
        self.assertEqual(list(store.users()), ["a", "b"])
        self.assertEqual([q.get("cursor") for _, _, q, _, _ in _Scripted.seen], [None, "c1", "c2"])
        self.assertEqual([(b, r.value) for b, r in store.read_across("notes", "score")],
                         [("notes:a", b"TEST")])
        self.assertEqual(store.aggregate("notes", "score", "sum")["value"], 3)
        self.assertEqual(_Scripted.seen[-1][2], {"aggregate": "sum"})

    def kv(self, *argv):
        """Run kv in this process; (exit code, stdout lines)."""
        out = io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
            code = cli.main(["--url", self.url, "--token", "kv_admin"] + list(argv))
        return code, out.getvalue().splitlines()

    def test_app_add_per_user_buckets_sends_sauropods_two_rules_once(self):
        self.route("PUT", "/auth/apps/notes", (201, {"id": "notes"}))
        self.route("GET", "/auth/rules", (200, {"items": [], "next": None}),
                   (200, {"items": [], "next": None}))
        self.route("POST", "/auth/rules", (201, {"id": "r1"}), (201, {"id": "r2"}))
        code, lines = self.kv("app", "add", "notes", "--per-user-buckets")
        self.assertEqual(code, 0)
        self.assertEqual([body for method, *_, body in _Scripted.seen if method == "POST"],
                         admin.per_user_rules("notes"))
        self.assertEqual(admin.per_user_rules("notes")[1],
                         {"effect": "allow", "principal": "user:*",
                          "verbs": ["read", "write", "list"], "bucket": "notes:${user}",
                          "keys": "#", "via_app": "notes"})
        self.assertEqual(lines[1:], ["added rule r1 allow app:notes read,write,list on notes:* #",
                                     "added rule r2 allow user:* read,write,list on "
                                     "notes:${user} # via_app notes"])
        existing = [dict(rule, id="r%d" % i) for i, rule in enumerate(admin.per_user_rules("notes"))]
        self.route("PUT", "/auth/apps/notes", (200, {"id": "notes"}))
        self.route("GET", "/auth/rules", (200, {"items": existing[:1], "next": None}),
                   (200, {"items": existing[1:], "next": None}))
        _Scripted.seen.clear()
        self.assertEqual(self.kv("app", "add", "notes", "--per-user-buckets")[0], 0)
        self.assertNotIn("POST", [method for method, *_ in _Scripted.seen])

    def test_check_exit_codes_and_rule_table(self):
        rule = {"id": "r17", "effect": "allow", "principal": "user:bob", "verbs": ["read", "list"],
                "bucket": "notes:alice", "keys": "shared/#"}
        self.route("GET", "/auth/check", (200, {"allowed": True, "rule": rule}),
                   (200, {"allowed": False, "rule": None}))
        self.route("GET", "/auth/rules", (200, {"items": [rule], "next": None}))
        self.assertEqual(self.kv("check", "user:bob", "read", "notes:alice", "shared/x"),
                         (0, ["allowed by rule r17 allow user:bob read,list on notes:alice shared/#"]))
        self.assertEqual(_Scripted.seen[0][2], {"principal": "user:bob", "verb": "read",
                                                "bucket": "notes:alice", "key": "shared/x"})
        self.assertEqual(self.kv("check", "user:bob", "write", "notes:alice", "shared/x"),
                         (1, ["denied (no rule allows it)"]))
        code, lines = self.kv("rule", "ls", "--principal", "user:bob")
        self.assertEqual(lines[0].split(), ["ID", "EFFECT", "PRINCIPAL", "VERBS", "BUCKET", "KEYS",
                                            "VIA", "APP"])
        self.assertEqual(lines[1].split(), ["r17", "allow", "user:bob", "read,list", "notes:alice",
                                            "shared/#", "-"])
        self.route("GET", "/auth/whoami", (401, error(401, "invalid_credentials")))
        self.assertEqual(self.kv("whoami")[0], 5)
