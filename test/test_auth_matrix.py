"""The authorization matrix of API.md "Authentication", "Permissions" and
"Administration" through HTTP, on three real MariaDB partitions: every
route x every verb it takes x every kind of caller (no credentials, a
malformed header of each scheme, an unknown, an expired and a revoked
token, a user by Basic and by token, an app's token, a session's token and
an admin's token), each cell's status, code and challenge, and no answer
carrying another tenant's key, value or bucket name; then the existence
oracle: a denied caller gets the same bytes for a present key, an absent
key and a bucket that does not exist; last, what the same routes answer
with authentication off.  The fixture (two tenants, the callers) is
test_auth.AuthFixture.
"""

import hashlib
import json
import os
import shutil
import tempfile
import unittest

import dbservers
from test_auth import (ALICE_PW, BAD_CALLERS, BOTH_CHALLENGES, CHALLENGE_OF, TENANT_A, TENANT_B,
                       VALID_CALLERS, AuthFixture, bearer, error_code, expect, node, send)

EVERYONE = frozenset(VALID_CALLERS)
AUTHENTICATED = EVERYONE - {"none"}
TENANT = frozenset({"app", "session", "admin"})     # may use notes:alice
ADMIN = frozenset({"admin"})
A_KEY = "/buckets/%s/keys/%s" % TENANT_A[:2]
A_LIST = "/buckets/%s/keys" % TENANT_A[0]


def routes(rule_id):
    """(method, path, body or a function of the caller's name, the callers
    allowed, the statuses an allowed caller gets)."""
    noop_rule = {"effect": "allow", "principal": "user:nobody", "verbs": ["read"],
                 "bucket": "nowhere", "keys": "#"}
    return [
        ("GET", "/keys/pub/doc", None, EVERYONE, {200}),
        ("HEAD", "/keys/pub/doc", None, EVERYONE, {200}),
        ("PUT", "/keys/pub/doc-w", b"w", ADMIN, {200, 201}),
        ("DELETE", "/keys/pub/never", None, ADMIN, {404}),
        ("GET", A_KEY, None, TENANT, {200}),
        ("HEAD", A_KEY, None, TENANT, {200}),
        ("PUT", A_LIST + "/scratch", b"s", TENANT, {200, 201}),
        ("DELETE", A_LIST + "/never", None, TENANT, {404}),
        ("GET", "/keys", None, EVERYONE, {200}),
        ("HEAD", "/keys", None, EVERYONE, {200}),
        ("POST", "/keys", lambda who: {"key": "pub/new-" + who, "value": "n"}, ADMIN, {201}),
        ("GET", A_LIST, None, TENANT, {200}),
        ("HEAD", A_LIST, None, TENANT, {200}),
        ("POST", A_LIST, lambda who: {"key": "posted-" + who, "value": "p"}, TENANT, {201}),
        ("POST", "/batch", {"ops": [{"op": "get", "key": "pub/doc"},
                                    {"op": "get", "bucket": TENANT_A[0], "key": TENANT_A[1]},
                                    {"op": "get", "bucket": TENANT_B[0], "key": TENANT_B[1]}]},
         EVERYONE, {200}),
        ("POST", "/sessions", {"user": "alice", "password": ALICE_PW}, {"app"}, {201}),
        ("GET", "/auth/whoami", None, AUTHENTICATED, {200}),
        ("PUT", "/auth/users/scratch", {"password": "scratch-pw"}, ADMIN, {200, 201}),
        ("GET", "/auth/users/alice", None, ADMIN, {200}),
        ("DELETE", "/auth/users/ghost", None, ADMIN, {404}),
        ("GET", "/auth/users", None, ADMIN, {200}),
        ("PUT", "/auth/apps/scratch", {"description": "s"}, ADMIN, {200, 201}),
        ("GET", "/auth/apps/notes", None, ADMIN, {200}),
        ("DELETE", "/auth/apps/ghost", None, ADMIN, {404}),
        ("GET", "/auth/apps", None, ADMIN, {200}),
        ("POST", "/auth/tokens", {"principal": "app:notes"}, ADMIN, {201}),
        ("GET", "/auth/tokens", None, ADMIN, {200}),
        ("GET", "/auth/tokens?principal=user:alice", None, ADMIN, {200}),
        ("DELETE", "/auth/tokens/" + "0" * 24, None, ADMIN, {404}),
        ("POST", "/auth/rules", noop_rule, ADMIN, {201}),
        ("GET", "/auth/rules", None, ADMIN, {200}),
        ("GET", "/auth/rules/" + rule_id, None, ADMIN, {200}),
        ("DELETE", "/auth/rules/r000000000000", None, ADMIN, {404}),
        ("GET", "/auth/check?principal=user:alice&verb=read&bucket=notes:alice&key=k", None,
         ADMIN, {200}),
        # Last: the session's own token ends itself (a fresh one, see cell()).
        ("DELETE", "/sessions/current", None, {"session"}, {204}),
    ]


#: Routes whose data layer another change brings: an allowed caller may get
#: 400, 404 or 500 until it lands, and their cells are then skipped.
PENDING = [("GET", "/buckets", None, EVERYONE, {200}),
           ("GET", "/buckets/notes:*/keys/" + TENANT_A[1], None, TENANT, {200})]


class AuthMatrixTest(AuthFixture, unittest.TestCase):

    def forbidden_words(self, caller):
        """What ``caller`` may never see: the other tenant's (both, for
        callers of neither tenant; nothing for the admin)."""
        if caller == "admin":
            return ()
        return TENANT_B if caller in TENANT else TENANT_A + TENANT_B

    def cell(self, route, caller):
        method, path, body, _, _ = route
        headers = self.callers[caller]
        if method == "DELETE" and path == "/sessions/current" and caller == "session":
            headers = self.session("notes", "alice", ALICE_PW)
        return self.call(method, path, body(caller) if callable(body) else body, headers)

    def check_cell(self, route, caller, response):
        method, path, _, allowed, statuses = route
        seen = (response.status, error_code(response), response.header("WWW-Authenticate", None))
        if caller in allowed:
            self.assertIn(response.status, statuses, response.body[:300])
            return self.assertNoLeak(caller, response)
        if caller in BAD_CALLERS:
            expected = (401, "invalid_credentials", CHALLENGE_OF[caller])
        elif caller == "none":
            expected = (401, "authentication_required", BOTH_CHALLENGES)
        else:
            expected = (403, "forbidden", None)
        if method == "HEAD":                   # no body, so no code
            expected = (expected[0], None, expected[2])
        self.assertEqual(seen, expected)
        self.assertNoLeak(caller, response)

    def assertNoLeak(self, caller, response):
        """Neither body nor headers hold a word ``caller`` may not see."""
        answer = response.body + json.dumps(response.headers).encode()
        for word in self.forbidden_words(caller):
            self.assertNotIn(word.encode(), answer)

    def test_secrets_are_shown_once(self):
        """API.md "Authentication": a token's secret is in the answer that
        makes it and never again, to anyone; a password hash never."""
        made = expect(self.call("POST", "/auth/tokens", {"principal": "app:bills"}, self.admin),
                      201)
        self.assertTrue(made["token"].startswith("kv_") and len(made["token"]) >= 46)
        digest = hashlib.sha256(made["token"].encode()).hexdigest()
        for path in ("/auth/tokens", "/auth/tokens?principal=app:bills", "/auth/users/alice",
                     "/auth/users", "/auth/apps/bills", "/auth/rules"):
            body = expect(self.call("GET", path, None, self.admin), 200)
            text = json.dumps(body)
            for secret in ("kv_", digest[len(made["id"]):], "argon2", "hash", ALICE_PW):
                self.assertNotIn(secret, text, path)
        listed = expect(self.call("GET", "/auth/tokens?principal=app:bills", None, self.admin),
                        200)["items"]
        self.assertIn(made["id"], [t["id"] for t in listed])
        self.assertEqual(expect(self.call("GET", "/auth/users/alice", None, self.admin), 200),
                         {"name": "alice", "disabled": False, "password": True})

    def test_matrix(self):
        for route in routes(self.public_rule):
            for caller in BAD_CALLERS + VALID_CALLERS:
                with self.subTest(route=route[:2], caller=caller):
                    self.check_cell(route, caller, self.cell(route, caller))

    def test_matrix_of_routes_being_landed(self):
        landing = []
        for route in PENDING:
            for caller in BAD_CALLERS + VALID_CALLERS:
                response = self.cell(route, caller)
                if caller not in BAD_CALLERS and response.status in (400, 404, 500):
                    landing.append("%s %s as %s: %d %s" % (route[0], route[1], caller,
                                                           response.status, error_code(response)))
                    continue
                with self.subTest(route=route[:2], caller=caller):
                    self.check_cell(route, caller, response)
        if landing:
            self.skipTest("%d cells skipped: GET /buckets and GET /buckets/{app}:*/keys/{key} "
                          "have not landed (Datastore.buckets, read_across; the cross-bucket "
                          "route's guard refuses '{app}:*' as a bucket name): %s"
                          % (len(landing), "; ".join(landing)))

    def test_batch_ops_of_each_caller(self):
        """The batch route's cells per op: pub/doc for all, the tenant's key
        for the tenant, the other tenant's never."""
        batch = next(r for r in routes(self.public_rule) if r[1] == "/batch")
        for caller in VALID_CALLERS:
            results = json.loads(self.cell(batch, caller).body)["results"]
            refusal = 401 if caller == "none" else 403
            self.assertEqual([r["status"] for r in results],
                             [200, 200 if caller in TENANT else refusal,
                              200 if caller == "admin" else refusal], caller)

    # -- the existence oracle ---------------------------------------------------
    def test_denied_answers_do_not_tell_what_exists(self):
        """API.md "Permissions": a denied caller gets the same answer for a
        present key, an absent key and a bucket that does not exist,
        byte for byte, headers included (Date aside)."""
        def seen(response):
            headers = tuple(sorted((k, v) for k, v in response.headers if k != "Date"))
            return response.status, headers, response.body
        present, absent = TENANT_A[1], "absent-key"
        targets = [(TENANT_A[0], present), (TENANT_A[0], absent), ("notes:nobody", present),
                   ("nobucket", absent)]
        requests = [("GET", {}, None), ("HEAD", {}, None), ("PUT", {}, b"x"), ("DELETE", {}, None),
                    ("GET", {"If-None-Match": "*"}, None), ("PUT", {"If-None-Match": "*"}, b"x"),
                    ("PUT", {"If-Match": '"x"'}, b"x"), ("DELETE", {"If-Match": "*"}, None)]
        denied = dict(self.callers, bills=bearer(self.tokens["bills"]))   # the other tenant
        for caller in ("none", "basic", "user_token", "bills"):
            headers = denied[caller]
            for method, extra, body in requests:
                answers = {seen(self.call(method, "/buckets/%s/keys/%s" % target, body,
                                          dict(headers, **extra)))
                           for target in targets}
                self.assertEqual(len(answers), 1, (caller, method, extra, answers))
                self.assertIn(next(iter(answers))[0], (401, 403))
            for method, path, body in (
                    ("GET", "/buckets/%s/keys", None), ("HEAD", "/buckets/%s/keys", None),
                    ("GET", "/buckets/%s/keys?prefix=alice", None),
                    ("POST", "/buckets/%s/keys", {"key": present, "value": "v"})):
                answers = {seen(self.call(method, path % bucket, body, headers))
                           for bucket in (TENANT_A[0], "notes:nobody", "nobucket")}
                self.assertEqual(len(answers), 1, (caller, method, path, answers))
                self.assertIn(next(iter(answers))[0], (401, 403))


class AuthOffTest(unittest.TestCase):
    """With ``[auth] enabled = false`` (the default) every request is allowed,
    whatever Authorization header it carries, and every route of
    authentication (/sessions, /sessions/current, /auth/...) answers 404
    ``not_found`` "authentication is off on this service" (what
    kv.http.access.require_caller says): there is no caller, no directory
    and nothing to administer."""

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="kv-auth-off-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        servers = dbservers.shared(3)
        for server in servers:
            server.execute("DELETE FROM kv_rows")
        wsgi, self.app = node(dbservers.write_config(os.path.join(self.dir, "c.cfg"), servers, 2))
        self.addCleanup(wsgi.store.close)

    def test_auth_routes_are_404_and_everything_else_is_open(self):
        auth_routes = [r for r in routes("r1") if r[1].startswith(("/auth/", "/sessions"))]
        self.assertEqual(len(auth_routes), 20)
        for method, path, body, _, _ in auth_routes:
            for headers in ({}, bearer("kv_" + "B" * 43)):
                with self.subTest(method=method, path=path, headers=headers):
                    response = send(self.app, method, path, body, headers)
                    self.assertEqual((response.status, error_code(response)), (404, "not_found"))
                    self.assertIn(b"authentication is off", response.body)
        for headers in ({}, bearer("kv_" + "B" * 43), {"Authorization": "Basic %%%"}):
            expect(send(self.app, "PUT", "/buckets/b/keys/k", b"v", headers), 200, 201)
            response = send(self.app, "GET", "/buckets/b/keys/k", None, headers)
            self.assertEqual(expect(response, 200)["value"], "v")
            self.assertIsNone(response.header("WWW-Authenticate", None))
            self.assertEqual(expect(send(self.app, "GET", "/keys?limit=1", None, headers), 200)
                             ["items"], [])
