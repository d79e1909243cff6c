"""The clients' side of buckets, authentication and administration (API.md
"Buckets", "Authentication", "Permissions", "Administration", "Cross-bucket
reads and aggregation") end to end: a gunicorn service with ``[auth]
enabled = true`` (its own database ``kv_auth`` on the shared MariaDB
servers, so the other client tests' wipes leave it alone; the first admin
made by ``datastore.py bootstrap-admin``), Sauropod's session flow and the
administration API through the library, and the ``kv`` administration
commands.  test_auth_client_units.py has the tests that need no server.
"""

import atexit
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
import unittest

import client_service
import dbservers
import kvclient
import test_server
from kvclient import admin

KV = os.path.join(os.path.dirname(sys.executable), "kv")
DATABASE = "kv_auth"


class AuthService(client_service.Service):
    """One gunicorn service with authentication on, in the database kv_auth
    of the shared MariaDB servers; started by the first test that asks for
    it, stopped when the run exits (before dbservers stops the servers: it
    registers its exit handler later).  One worker, so that an
    administration change is seen by the next request; ``eventually`` waits
    for what a node may hold longer (API.md: at most 30 s)."""
    server = None
    admin_token = None

    @classmethod
    def start(cls):
        if cls.server is None:
            cls.dir = tempfile.mkdtemp(prefix="kv-auth-clients-")
            config = dbservers.write_config(os.path.join(cls.dir, "c.cfg"),
                                            dbservers.fresh_database(DATABASE),
                                            replicas=2, extra="[auth]\nenabled = true\n")
            cls.admin_token = dbservers.bootstrap_admin(config)
            port = dbservers.free_port()
            command = [os.path.join(os.path.dirname(sys.executable), "gunicorn"),
                       "--worker-class", "gthread", "--workers", "1", "--threads", "4",
                       "--log-level", "info"]
            cls.server = test_server.ServedProcess(
                command + test_server.GunicornServerTest.listen_args(port), config, port)
        return cls.server.url, cls.admin_token


atexit.register(AuthService.stop)


def eventually(call, seconds=35):
    """call() until it raises no Unauthorized, Forbidden or AssertionError
    (a change a web node may not have seen yet), at most ``seconds``."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return call()
        except (kvclient.Unauthorized, kvclient.Forbidden, AssertionError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


class SauropodFlowTest(unittest.TestCase):
    """The library against the service with authentication on."""

    def setUp(self):
        self.url, token = AuthService.start()
        self.admin = kvclient.connect(self.url, token=token)
        self.addCleanup(self.admin.close)

    def server_output(self):
        return AuthService.server.output()[-3000:]

    def test_sauropod_flow_end_to_end(self):
        self.assertIn("user:root", self.admin.whoami()["principals"])
        for user in ("alice@example.com", "bob@example.com"):
            self.admin.put_user(user, "pw of " + user)
        self.admin.put_app("notes", "Sauropod's notes")
        rules = [self.admin.add_rule(rule) for rule in admin.per_user_rules("notes")]
        self.assertTrue(all(rule.get("id") for rule in rules), rules)
        self.assertTrue({r["id"] for r in rules} <= {r["id"] for r in self.admin.rules()})
        app_token = self.admin.create_token("app:notes")["token"]
        self.assertTrue(app_token.startswith("kv_"))

        import kvclient as client
        app = client.connect(self.url, app="notes", token=app_token)
        s = eventually(lambda: app.start_session("alice@example.com",
                                                 {"password": "pw of alice@example.com"}))
        self.assertEqual(s.bucket, "notes:alice@example.com")
        s.set("test", "TEST")
        self.assertEqual(s.get("test"), b"TEST")
        s.delete("test")
        with self.assertRaises(KeyError):
            s.get("test")
        me = s.whoami()
        self.assertEqual(set(me["principals"]), {"app:notes", "user:alice@example.com"})
        self.assertEqual(me["session_bucket"], "notes:alice@example.com")
        with self.assertRaises(kvclient.Unauthorized):
            app.start_session("alice@example.com", {"password": "wrong"})

        bob = app.start_session("bob@example.com", {"password": "pw of bob@example.com"})
        s.set("score", "3")
        bob.set("score", "4.5")
        bob.set("note", "not a number")
        with self.assertRaises(kvclient.Forbidden):        # alice's session, bob's bucket
            client.connect(self.url, token=s.token, bucket=bob.bucket).get("score")
        self.assertEqual([(b, r.value) for b, r in app.read_across("notes", "score")],
                         [("notes:alice@example.com", b"3"), ("notes:bob@example.com", b"4.5")])
        total = app.aggregate("notes", "score", "sum")
        self.assertEqual((total["value"], total["count"], total["complete"]), (7.5, 2, True))
        self.assertEqual(app.aggregate("notes", "note", "count")["count"], 1)
        self.assertEqual(list(app.buckets("notes:")),
                         ["notes:alice@example.com", "notes:bob@example.com"])
        self.assertEqual([b for b, _ in s.read_across("notes", "score")],
                         ["notes:alice@example.com"])       # only what alice may read

        with self.assertRaises(kvclient.Unauthorized) as caught:
            client.connect(self.url).get("anything")
        self.assertIn("Bearer", caught.exception.challenge)
        token = s.token
        s.end()

        def refused():
            with self.assertRaises(kvclient.Unauthorized):
                client.connect(self.url, token=token, bucket="notes:alice@example.com").get("score")
        eventually(refused)
        bob.close()

    def test_admin_api_round_trips(self):
        self.assertTrue(self.admin.put_user("carol", "pw1"))
        self.assertFalse(self.admin.put_user("carol", "pw2"))
        user = self.admin.get_user("carol")
        self.assertEqual((user["name"], user["disabled"]), ("carol", False))
        self.assertFalse({"pw1", "pw2", "argon2"} & set(json.dumps(user).replace('"', " ").split()))
        self.assertIn("carol", list(self.admin.users()))
        self.admin.put_app("memo", "a memo app")
        self.assertEqual(self.admin.get_app("memo").get("description"), "a memo app")
        self.assertIn("memo", list(self.admin.apps()))
        expires = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=30)
        token = self.admin.create_token("user:carol", expires=expires)
        self.assertEqual(kvclient.parse_time(token["expires"]).date(), expires.date())
        listed = list(self.admin.tokens("user:carol"))
        self.assertEqual([t["id"] for t in listed], [token["id"]])
        self.assertNotIn(token["token"], json.dumps(listed))
        carol = kvclient.connect(self.url, token=token["token"])
        self.assertEqual(eventually(carol.whoami)["principals"], ["user:carol"])
        basic = kvclient.connect(self.url, user="carol", password="pw2")
        self.assertEqual(eventually(basic.whoami)["principals"], ["user:carol"])
        with self.assertRaises(kvclient.Forbidden):
            carol.put("k", b"v")
        rule = self.admin.add_rule({"effect": "allow", "principal": "user:carol",
                                    "verbs": ["write"], "bucket": "default", "keys": "carol/#"})
        self.assertEqual(self.admin.get_rule(rule["id"])["keys"], "carol/#")
        self.assertEqual(self.admin.check("user:carol", "read", "default", "carol/x")["allowed"],
                         True)
        denied = self.admin.check("user:carol", "write", "default", "other")
        self.assertEqual((denied["allowed"], denied["rule"]), (False, None))
        self.assertEqual(eventually(lambda: carol.put("carol/x", b"v")).version, 1)
        self.admin.delete_rule(rule["id"])
        with self.assertRaises(kvclient.NotFound):
            self.admin.get_rule(rule["id"])
        with self.assertRaises(kvclient.Forbidden):         # not an admin
            list(carol.users())
        with self.assertRaises(kvclient.Unauthorized):      # no such user
            kvclient.connect(self.url, user="nobody", password="x").whoami()
        self.admin.revoke_token(token["id"])
        self.assertEqual(list(self.admin.tokens("user:carol")), [])
        self.admin.delete_user("carol")
        self.admin.delete_app("memo")
        with self.assertRaises(kvclient.NotFound):
            self.admin.get_user("carol")
        with self.assertRaises(kvclient.NotFound):
            self.admin.get_app("memo")


def kv(*args, stdin=b"", token=None, **environ):
    """Run the installed ``kv`` on the auth service with ``token`` (default
    the admin's; "" for none) and extra environment; (exit code, stdout
    text, stderr text)."""
    url, admin_token = AuthService.start()
    env = {k: v for k, v in os.environ.items() if not k.startswith("KV_")}
    env.update(KV_URL=url, **environ)
    if token != "":
        env["KV_TOKEN"] = token or admin_token
    done = subprocess.run([KV] + list(args), input=stdin, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, env=env, timeout=120)
    return done.returncode, done.stdout.decode(), done.stderr.decode()


class CommandLineAuthTest(unittest.TestCase):
    """The ``kv`` administration commands against the service with authentication on."""

    def ok(self, *args, **kwargs) -> str:
        code, out, err = kv(*args, **kwargs)
        self.assertEqual(code, 0, (args, out, err, AuthService.server.output()[-2000:]))
        return out

    def test_users_apps_tokens_rules_check_whoami_and_revoke(self):
        self.assertIn("created user bob", self.ok("user", "add", "bob", "--password-stdin",
                                                  stdin=b"bob-pw\n"))
        self.assertIn("bob", self.ok("user", "ls").split())
        out = self.ok("app", "add", "jots", "--description", "notes, again", "--per-user-buckets")
        self.assertIn("added rule", out)
        self.assertIn("jots:${user} # via_app jots", out)
        self.assertNotIn("added rule", self.ok("app", "add", "jots", "--per-user-buckets"))
        self.assertIn("jots", self.ok("app", "ls").split())

        token = json.loads(self.ok("token", "create", "app:jots", "--json"))
        secret, token_id = token["token"], token["id"]
        lines = self.ok("token", "create", "app:jots").splitlines()
        self.assertTrue(lines[0].startswith("kv_") and "id " in lines[1], lines)
        self.assertIn(token_id, self.ok("token", "ls", "--principal", "app:jots"))
        self.assertNotIn(secret, self.ok("token", "ls", "--json"))

        rule = json.loads(self.ok("rule", "add", "allow", "user:bob", "read,list", "jots:alice",
                                  "shared/#", "--json"))
        self.assertEqual((rule["principal"], rule["keys"]), ("user:bob", "shared/#"))
        table = self.ok("rule", "ls", "--principal", "user:bob").splitlines()
        self.assertEqual(table[0].split()[:3], ["ID", "EFFECT", "PRINCIPAL"])
        row = [line.split() for line in table[1:] if line.split()[0] == rule["id"]][0]
        self.assertEqual(row[:3] + row[4:], [rule["id"], "allow", "user:bob", "jots:alice",
                                             "shared/#", "-"])
        self.assertEqual(sorted(row[3].split(",")), ["list", "read"])     # in the server's order
        listed = [json.loads(line) for line in self.ok("rule", "ls", "--json").splitlines()]
        self.assertIn(rule["id"], [r["id"] for r in listed])
        code, out, _ = kv("check", "user:bob", "read", "jots:alice", "shared/x")
        self.assertEqual((code, out.split()[:4]), (0, ["allowed", "by", "rule", rule["id"]]))
        code, out, _ = kv("check", "user:bob", "write", "jots:alice", "shared/x")
        self.assertEqual((code, out.split()[0]), (1, "denied"))
        self.assertEqual(kv("check", "user:bob", "write", "jots:bob", "k", "--app", "jots")[0], 0)
        self.assertEqual(kv("check", "user:bob", "write", "jots:alice", "k", "--app", "jots")[0], 1)

        self.assertIn("user:root", self.ok("whoami"))
        self.assertIn("app:jots", eventually(lambda: self.ok("whoami", token=secret)))
        self.assertIn("user:bob", eventually(lambda: self.ok("whoami", token="", KV_USER="bob",
                                                             KV_PASSWORD="bob-pw")))
        self.ok("--bucket", "jots:carol", "set", "k", "v", token=secret)
        self.assertEqual(self.ok("ls", "--bucket", "jots:carol", token=secret), "k\n")
        self.assertIn("jots:carol", self.ok("buckets", "--prefix", "jots:", token=secret).split())
        self.assertEqual(self.ok("across", "jots", "k", token=secret), "jots:carol\tv\n")
        self.assertEqual(kv("get", "k", "--bucket", "jots:carol", token="")[0], 5)
        self.assertEqual(kv("get", "k", "--bucket", "elsewhere", token=secret)[0], 6)

        self.ok("user", "passwd", "bob", "--password-stdin", stdin=b"new-pw\n")
        self.ok("user", "disable", "bob")
        self.ok("user", "enable", "bob")
        self.assertIn("user:bob", eventually(lambda: self.ok("whoami", token="", KV_USER="bob",
                                                             KV_PASSWORD="new-pw")))
        self.ok("token", "revoke", token_id)

        def refused():
            self.assertEqual(kv("whoami", token=secret)[0], 5)
        eventually(refused)
        self.ok("rule", "rm", rule["id"])
        self.ok("user", "rm", "bob")
        self.ok("app", "rm", "jots")
        self.assertEqual(kv("user", "rm", "bob")[0], 1)
