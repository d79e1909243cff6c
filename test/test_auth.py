"""Tenants through HTTP with authentication on (API.md "Buckets",
"Authentication", "Permissions", "Administration"), on three real MariaDB
partitions (replicas 2), the WSGI application in-process as in
test_api.py: rule specificity, filtered listings and their sealed cursors,
the password cache and what a second web node sees within
``refresh_seconds``, per-op 403 in a batch, and sessions.
test_auth_matrix.py has the authorization matrix (every route x every kind
of caller), the existence oracle and the auth routes with authentication
off; both use :class:`AuthFixture`.
"""

import base64
import datetime
import json
import os
import shutil
import tempfile
import time
import unittest
import urllib.parse
from unittest import mock

import paste.fixture

import controller
import dbservers
from kv.cluster.changes import FeedCursor
from kv.cluster.listing import encode_cursor
from test_api import pep3333

REFRESH_SECONDS = 1
AUTH_ON = "[auth]\nenabled = true\nrefresh_seconds = %d\n" % REFRESH_SECONDS
BOTH_CHALLENGES = 'Basic realm="kv", charset="UTF-8", Bearer realm="kv"'
BASIC_CHALLENGE = 'Basic realm="kv", charset="UTF-8"'
BEARER_INVALID = 'Bearer realm="kv", error="invalid_token"'
ALICE_PW, BOB_PW = "alice-pw-91!", "bob-pw-37!"
# Two tenants whose names and values are distinctive enough to grep any body for.
TENANT_A = ("notes:alice", "alicediary-k7q", "alice-value-Zq93")
TENANT_B = ("bills:bob", "bobledger-k2x", "bob-value-Wx51")
BAD_CALLERS = ("malformed_basic", "malformed_bearer", "unknown", "expired", "revoked")
CHALLENGE_OF = dict(dict.fromkeys(BAD_CALLERS, BEARER_INVALID), malformed_basic=BASIC_CHALLENGE)
VALID_CALLERS = ("none", "basic", "user_token", "app", "session", "admin")


def basic(name: str, password: str) -> dict:
    return {"Authorization": "Basic " + base64.b64encode(
        ("%s:%s" % (name, password)).encode()).decode()}


def bearer(token: str) -> dict:
    return {"Authorization": "Bearer " + token}


def rfc3339(seconds_from_now: float) -> str:
    moment = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(
        seconds=seconds_from_now)
    return moment.isoformat().replace("+00:00", "Z")


def send(app, method, path, body=None, headers=None):
    """One request: a dict or list body is sent as JSON, bytes as text/plain."""
    headers = dict(headers or {})
    if isinstance(body, (dict, list)):
        body = json.dumps(body).encode()
        headers.setdefault("Content-Type", "application/json")
    elif body is not None:
        headers.setdefault("Content-Type", "text/plain")
    return app._gen_request(method, path, params=body or b"", headers=headers, status="*",
                            expect_errors=True)


def expect(response, *statuses):
    """The JSON body of ``response`` (None when empty), after checking its status."""
    if response.status not in statuses:
        raise AssertionError("%s, expected %s: %s" % (response.status, statuses,
                                                      response.body[:400]))
    return json.loads(response.body) if response.body else None


def error_code(response):
    """The error code of an answer's JSON body (None for another body)."""
    try:
        return json.loads(response.body)["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return None


def node(config):
    """(WSGI application, paste TestApp): one web node on ``config``."""
    wsgi = controller.create_application(config)
    return wsgi, paste.fixture.TestApp(pep3333(wsgi))


class AuthFixture:
    """setUpClass: the shared servers emptied, a configuration with
    authentication on, the first admin from ``bootstrap-admin``, one web
    node (``app``), and two tenants: user alice and app notes (Sauropod's
    two rules, bucket ``notes:alice``), user bob and app bills (``bills:bob``),
    plus ``anyone`` may read and list ``pub/#`` of ``default``.
    ``callers`` maps each kind of caller of the matrix to its headers."""

    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.mkdtemp(prefix="kv-auth-")
        servers = dbservers.shared(3)
        for server in servers:
            server.execute("DELETE FROM kv_rows")
        cls.config = dbservers.write_config(os.path.join(cls.dir, "c.cfg"), servers,
                                            replicas=2, extra=AUTH_ON)
        cls.addClassCleanup(shutil.rmtree, cls.dir, True)
        cls.admin = admin = bearer(dbservers.bootstrap_admin(cls.config))
        cls.wsgi, cls.app = node(cls.config)
        cls.addClassCleanup(cls.wsgi.store.close)
        for user, password in (("alice", ALICE_PW), ("bob", BOB_PW)):
            expect(cls.call("PUT", "/auth/users/" + user, {"password": password}, admin), 201)
        expiring = expect(cls.call("POST", "/auth/tokens", {"principal": "user:alice",
                                                            "expires": rfc3339(1.5)}, admin), 201)
        expiring_at = time.monotonic() + 1.6
        expect(cls.call("GET", "/auth/whoami", None, bearer(expiring["token"])), 200)
        tokens = {}
        for app in ("notes", "bills"):
            expect(cls.call("PUT", "/auth/apps/" + app, {"description": app}, admin), 201)
            cls.rule(effect="allow", principal="app:" + app, verbs=["read", "write", "list"],
                     bucket=app + ":*", keys="#")
            cls.rule(effect="allow", principal="user:*", verbs=["read", "write", "list"],
                     bucket=app + ":${user}", keys="#", via_app=app)
            tokens[app] = cls.token("app:" + app)
        cls.public_rule = cls.rule(effect="allow", principal="anyone", verbs=["read", "list"],
                                   bucket="default", keys="pub/#")
        revoked = expect(cls.call("POST", "/auth/tokens", {"principal": "user:alice"}, admin), 201)
        expect(cls.call("GET", "/auth/whoami", None, bearer(revoked["token"])), 200)
        expect(cls.call("DELETE", "/auth/tokens/" + revoked["id"], None, admin), 204)
        for bucket, key, value in (TENANT_A, TENANT_B, ("default", "pub/doc", "public")):
            expect(cls.call("PUT", "/buckets/%s/keys/%s" % (bucket, key), value.encode(), admin),
                   201)
        cls.tokens = tokens
        cls.callers = {
            "malformed_basic": {"Authorization": "Basic %%%not-base64"},
            "malformed_bearer": {"Authorization": "Bearer not-a-kv-token"},
            "unknown": bearer("kv_" + "A" * 43), "expired": bearer(expiring["token"]),
            "revoked": bearer(revoked["token"]), "none": {}, "basic": basic("alice", ALICE_PW),
            "user_token": bearer(cls.token("user:alice")), "app": bearer(tokens["notes"]),
            "session": cls.session("notes", "alice", ALICE_PW), "admin": admin}
        time.sleep(max(0.0, expiring_at - time.monotonic()))

    @classmethod
    def call(cls, method, path, body=None, headers=None, app=None):
        return send(app or cls.app, method, path, body, headers)

    @classmethod
    def rule(cls, **doc) -> str:
        """Add a rule as the admin; its id."""
        return expect(cls.call("POST", "/auth/rules", doc, cls.admin), 201)["id"]

    @classmethod
    def token(cls, principal: str) -> str:
        return expect(cls.call("POST", "/auth/tokens", {"principal": principal}, cls.admin),
                      201)["token"]

    @classmethod
    def session(cls, app: str, user: str, password: str) -> dict:
        """The headers of a new session of ``user`` started by ``app``."""
        started = expect(cls.call("POST", "/sessions", {"user": user, "password": password},
                                  bearer(cls.tokens[app])), 201)
        return bearer(started["token"])


class AuthTest(AuthFixture, unittest.TestCase):

    def status(self, method, path, headers, body=None, app=None):
        return self.call(method, path, body, headers, app).status

    # -- specificity (the engine has its own unit tests: test_rules.py) ---------
    def test_specificity_through_http(self):
        carol = bearer(self.token_for_new_user("carol"))
        deny_secret = self.rule(effect="deny", principal="user:carol", verbs=["read"],
                                bucket="spec", keys="secret/#")
        allow_spec = self.rule(effect="allow", principal="user:carol", verbs=["read"],
                               bucket="spec", keys="#")
        self.rule(effect="deny", principal="user:carol", verbs=["read"], bucket="acme:*", keys="#")
        self.rule(effect="allow", principal="user:carol", verbs=["read"], bucket="acme:carol",
                  keys="#")
        self.rule(effect="allow", principal="user:carol", verbs=["read"], bucket="tie", keys="a/+")
        self.rule(effect="deny", principal="authenticated", verbs=["read"], bucket="tie",
                  keys="a/+")
        self.rule(effect="allow", principal="user:*", verbs=["read"], bucket="home:${user}",
                  keys="#")
        self.rule(effect="allow", principal="user:carol", verbs=["read"], bucket="cfgb",
                  keys="cfg/#")
        cases = [("spec", "secret/x", 403), ("spec", "secret", 403), ("spec", "open", 404),
                 ("acme:carol", "k", 404), ("acme:other", "k", 403), ("tie", "a/b", 403),
                 ("home:carol", "k", 404), ("home:dave", "k", 403), ("cfgb", "cfg", 404),
                 ("cfgb", "cfg/a/b", 404), ("cfgb", "cfgx", 403), ("cfgb", "cfgx/a", 403)]
        for bucket, key, status in cases:
            with self.subTest(bucket=bucket, key=key):
                self.assertEqual(self.status("GET", "/buckets/%s/keys/%s" % (bucket, key), carol),
                                 status)
        # via_app: alice's own bucket of notes, through notes only.
        path = "/buckets/%s/keys/%s" % TENANT_A[:2]
        self.assertEqual(self.status("GET", path, self.callers["user_token"]), 403)
        self.assertEqual(self.status("GET", path, self.callers["session"]), 200)
        self.assertEqual(self.status("GET", path, self.session("bills", "alice", ALICE_PW)), 403)
        # /auth/check names the deciding rule.
        for key, allowed, rule in (("secret/x", False, deny_secret), ("open", True, allow_spec),
                                   ("x", False, None)):
            query = urllib.parse.urlencode({"principal": "user:carol", "verb": "read",
                                            "bucket": "spec" if rule else "nowhere", "key": key})
            check = expect(self.call("GET", "/auth/check?" + query, None, self.admin), 200)
            self.assertEqual((check["allowed"], check["rule"] and check["rule"]["id"]),
                             (allowed, rule), key)
        query = "principal=user:alice&app=notes&verb=read&bucket=notes:alice&key=k"
        self.assertTrue(expect(self.call("GET", "/auth/check?" + query, None, self.admin),
                               200)["allowed"])

    def token_for_new_user(self, name: str, password=None) -> str:
        expect(self.call("PUT", "/auth/users/" + name,
                         {"password": password} if password else {}, self.admin), 201)
        return self.token("user:" + name)

    # -- change feed ---------------------------------------------------------------
    def test_change_feed_is_filtered_as_listings_and_its_cursor_sealed(self):
        fay = bearer(self.token_for_new_user("fay"))
        self.rule(effect="allow", principal="user:fay", verbs=["list"], bucket="chg",
                  keys="shared/#")
        self.rule(effect="allow", principal="user:fay", verbs=["read"], bucket="chg",
                  keys="shared/readable/#")
        start = expect(self.call("GET", "/buckets/chg/changes", None, fay), 200)["next"]
        hidden = ["hidden-%d" % i for i in range(5)] + ["sharedx"]
        shown = ["shared/readable/1", "shared/x"]
        ops = [{"op": "put", "bucket": "chg", "key": k, "value": "val-" + k}
               for k in hidden + shown]
        expect(self.call("POST", "/batch", {"ops": ops}, self.admin), 200)
        page = expect(self.call("GET", "/buckets/chg/changes?values=true&since="
                                + urllib.parse.quote(start), None, fay), 200)
        self.assertEqual(sorted((c["key"], c.get("value")) for c in page["changes"]),
                         [("shared/readable/1", "val-shared/readable/1"), ("shared/x", None)])
        self.assertNotRevealed(page["next"], hidden + ["chg"])
        everything = expect(self.call("GET", "/buckets/chg/changes?since=0", None, self.admin),
                            200)
        self.assertEqual(len(everything["changes"]), len(hidden + shown))
        self.assertEqual(self.status("GET", "/buckets/chg/changes?prefix=hidden", fay), 403)
        self.assertEqual(self.status("GET", "/buckets/other/changes", fay), 403)
        self.assertEqual(self.status("GET", "/buckets/chg/changes", {}), 401)
        raw = FeedCursor(b"chg", int(time.time() * 1e6), {}).encode()   # valid, but not sealed
        for bad in (raw, page["next"][:-3]):
            response = self.call("GET", "/buckets/chg/changes?since=" + urllib.parse.quote(bad),
                                 None, fay)
            self.assertEqual((response.status, error_code(response)), (400, "bad_request"))

    # -- listings -----------------------------------------------------------------
    def test_listing_filtered_values_and_opaque_cursors(self):
        dan = bearer(self.token_for_new_user("dan"))
        self.rule(effect="allow", principal="user:dan", verbs=["list"], bucket="lst",
                  keys="shared/#")
        self.rule(effect="allow", principal="user:dan", verbs=["read"], bucket="lst",
                  keys="shared/readable/#")
        hidden = ["a-hidden-%d" % i for i in range(6)] + ["sharedx-hidden", "zz-hidden"]
        shown = ["shared", "shared/readable/1", "shared/x", "shared/y"]
        ops = [{"op": "put", "bucket": "lst", "key": k, "value": "val-" + k}
               for k in hidden + shown]
        expect(self.call("POST", "/batch", {"ops": ops}, self.admin), 200)
        self.assertEqual(self.status("GET", "/buckets/lst/keys?prefix=a-", dan), 403)
        whole = expect(self.call("GET", "/buckets/lst/keys?values=true", None, dan), 200)
        self.assertEqual([(i["key"], i.get("value")) for i in whole["items"]],
                         [(k, "val-" + k if "readable" in k else None) for k in shown])
        # A page examines at most LIST_ROW_BUDGET rows: with 3, the hidden keys
        # before the first shown one make empty pages that still have a next.
        with mock.patch("kv.cluster.listing.LIST_ROW_BUDGET", 3):
            seen, pages, cursor = [], [], None
            while True:
                path = "/buckets/lst/keys?limit=2" + (
                    "&cursor=" + urllib.parse.quote(cursor) if cursor else "")
                response = self.call("GET", path, None, dan)
                page = expect(response, 200)
                pages.append(page)
                seen += [i["key"] for i in page["items"]]
                cursor = page["next"]
                if cursor is None:
                    break
                self.assertNotRevealed(cursor, hidden + ["lst"])
                self.assertNotRevealed(response.header("Link"), hidden)
                self.assertLess(len(pages), 20)
        self.assertEqual(seen, shown)
        self.assertTrue(any(not p["items"] and p["next"] for p in pages), pages)
        cursor = pages[0]["next"]
        tampered = cursor[:30] + ("A" if cursor[30] != "A" else "B") + cursor[31:]
        forged = encode_cursor((b"shared/x", False))
        for bad in (tampered, forged, cursor[:-4]):
            response = self.call("GET", "/buckets/lst/keys?cursor=" + urllib.parse.quote(bad),
                                 None, dan)
            self.assertEqual((response.status, error_code(response)), (400, "bad_request"))

    # With a delimiter, a caller allowed list on shared/readable/# sees the folder
    # shared/ that holds the keys it may list, so it can walk down to them.
    def test_delimiter_listing_shows_the_folders_of_listable_keys(self):
        ivy = bearer(self.token_for_new_user("ivy"))
        self.rule(effect="allow", principal="user:ivy", verbs=["list"], bucket="dirs",
                  keys="shared/readable/#")
        ops = [{"op": "put", "bucket": "dirs", "key": k, "value": "v"}
               for k in ("shared/readable/1", "shared/x", "top")]
        expect(self.call("POST", "/batch", {"ops": ops}, self.admin), 200)
        self.assertEqual(expect(self.call("GET", "/buckets/dirs/keys", None, ivy), 200)["items"]
                         [0]["key"], "shared/readable/1")
        root = expect(self.call("GET", "/buckets/dirs/keys?delimiter=/", None, ivy), 200)
        self.assertEqual((root["items"], root["prefixes"]), ([], ["shared/"]))

    def assertNotRevealed(self, cursor: str, names):
        """``cursor`` holds none of ``names`` in clear, percent-encoded, in
        base64 (at any alignment), or as the service's unsealed cursor."""
        try:
            raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        except ValueError:                   # a Link header: its cursor is checked alone
            raw = b""
        for name in names:
            data = name.encode()
            self.assertNotIn(name, cursor)
            self.assertNotIn(urllib.parse.quote(name, safe=""), cursor)
            self.assertNotIn(data, raw)
            for inclusive in (False, True):
                self.assertNotIn(encode_cursor((data, inclusive)).rstrip("A"), cursor)
            for shift in range(3):
                for encode in (base64.b64encode, base64.urlsafe_b64encode):
                    core = encode(b"\0" * shift + data).decode()[4 if shift else 0:-4]
                    if len(core) >= 4:
                        self.assertNotIn(core, cursor, name)

    # -- the password cache and a second web node -------------------------------
    def test_password_change_and_cache(self):
        self.token_for_new_user("erin", "erin-pw-1")
        old, new = basic("erin", "erin-pw-1"), basic("erin", "erin-pw-2")
        wrong = basic("erin", "x")
        for headers, status in ((old, 200), (wrong, 401), (old, 200), (wrong, 401)):
            response = self.call("GET", "/auth/whoami", None, headers)
            self.assertEqual(response.status, status)
        self.assertEqual(response.header("WWW-Authenticate"), BASIC_CHALLENGE)
        self.assertEqual(error_code(response), "invalid_credentials")
        expect(self.call("PUT", "/auth/users/erin", {"password": "erin-pw-2"}, self.admin), 200)
        self.assertEqual(self.status("GET", "/auth/whoami", old), 401)   # at once, on this node
        self.assertEqual(self.status("GET", "/auth/whoami", new), 200)
        self.assertEqual(self.status("GET", "/auth/whoami", old), 401)

    def test_changes_reach_another_node_within_refresh_seconds(self):
        """A second create_application on the same configuration is another
        web node: what it has cached stops working within refresh_seconds."""
        wsgi, other = node(self.config)
        self.addCleanup(wsgi.store.close)
        frank = bearer(self.token_for_new_user("frank", "frank-pw"))
        henry = basic("henry", "henry-pw-1")
        self.token_for_new_user("henry", "henry-pw-1")
        revocable = expect(self.call("POST", "/auth/tokens", {"principal": "app:notes"},
                                     self.admin), 201)
        kate = bearer(self.token_for_new_user("kate"))
        rule = self.rule(effect="allow", principal="user:kate", verbs=["read"], bucket="kb",
                         keys="#")
        me, kb = "/auth/whoami", "/buckets/kb/keys/k"
        cases = [  # (what stops, its request, the status once stopped, the change on node 1)
            ("disabled user by Basic", basic("frank", "frank-pw"), me, 401,
             ("PUT", "/auth/users/frank", {"disabled": True})),
            ("disabled user's token", frank, me, 401, None),
            ("revoked token", bearer(revocable["token"]), me, 401,
             ("DELETE", "/auth/tokens/" + revocable["id"], None)),
            ("changed password", henry, me, 401,
             ("PUT", "/auth/users/henry", {"password": "henry-pw-2"})),
            ("deleted rule", kate, kb, 403, ("DELETE", "/auth/rules/" + rule, None))]
        for what, headers, path, _, _ in cases:   # each works on the other node before
            self.assertIn(self.status("GET", path, headers, app=other), (200, 404), what)
        changed = {}
        for what, headers, path, stopped, change in cases:
            if change:
                expect(self.call(change[0], change[1], change[2], self.admin), 200, 204)
                changed[what] = time.monotonic()
            else:
                changed[what] = changed[cases[0][0]]
            self.assertEqual(self.status("GET", path, headers), stopped, what)   # here: at once
        deadline = time.monotonic() + REFRESH_SECONDS + 2
        for what, headers, path, stopped, _ in cases:
            while self.status("GET", path, headers, app=other) != stopped:
                self.assertLess(time.monotonic(), deadline, "%s: still works on node 2" % what)
                time.sleep(0.1)
            self.assertLess(time.monotonic() - changed[what], REFRESH_SECONDS + 2, what)
        self.assertEqual(self.status("GET", me, basic("henry", "henry-pw-2"), app=other), 200)

    # -- batch -------------------------------------------------------------------
    def test_batch_has_a_403_per_op_and_bad_credentials_401_the_whole(self):
        ops = [{"op": "put", "bucket": "notes:alice", "key": "b1", "value": "1"},
               {"op": "put", "bucket": TENANT_B[0], "key": "b2", "value": "2"},
               {"op": "get", "key": "pub/doc"},
               {"op": "put", "key": "pub/b3", "value": "3"},
               {"op": "get", "bucket": TENANT_B[0], "key": TENANT_B[1]},
               {"op": "delete", "bucket": "notes:alice", "key": "absent"}]
        response = self.call("POST", "/batch", {"ops": ops}, self.callers["app"])
        results = expect(response, 200)["results"]
        self.assertEqual([r["status"] for r in results], [201, 403, 200, 403, 403, 404])
        self.assertEqual({r["error"]["code"] for r in results if r["status"] == 403},
                         {"forbidden"})
        for word in TENANT_B:
            self.assertNotIn(word.encode(), response.body)
        for path in ("/buckets/%s/keys/b2" % TENANT_B[0], "/keys/pub/b3"):
            self.assertEqual(self.status("GET", path, self.admin), 404)
        anonymous = expect(self.call("POST", "/batch", {"ops": ops[2:4]}), 200)["results"]
        self.assertEqual([r["status"] for r in anonymous], [200, 401])
        for caller in BAD_CALLERS:
            response = self.call("POST", "/batch", {"ops": [ops[0]]}, self.callers[caller])
            self.assertEqual((response.status, error_code(response)), (401, "invalid_credentials"))
            self.assertEqual(response.header("WWW-Authenticate"), CHALLENGE_OF[caller])
        self.assertEqual(expect(self.call("GET", "/buckets/notes:alice/keys/b1", None,
                                          self.admin), 200)["version"], 1)

    # -- sessions ------------------------------------------------------------------
    def test_sessions(self):
        app = bearer(self.tokens["notes"])
        response = self.call("POST", "/sessions", {"user": "alice", "password": ALICE_PW}, app)
        started = expect(response, 201)
        self.assertTrue(started["token"].startswith("kv_"))
        self.assertEqual(started["bucket"], "notes:alice")
        expires = datetime.datetime.fromisoformat(started["expires"].replace("Z", "+00:00"))
        ahead = expires - datetime.datetime.now(datetime.timezone.utc)
        self.assertLess(abs(ahead.total_seconds() - 86400), 120)
        session = bearer(started["token"])
        me = expect(self.call("GET", "/auth/whoami", None, session), 200)
        self.assertEqual((me["principals"], me["session_bucket"], me["token_id"], me["expires"]),
                         (["app:notes", "user:alice"], "notes:alice", started["id"],
                          started["expires"]))
        self.assertEqual(self.status("GET", "/buckets/%s/keys/%s" % TENANT_A[:2], session), 200)
        self.assertEqual(self.status("GET", "/buckets/%s/keys/%s" % TENANT_B[:2], session), 403)
        body = {"user": "alice", "password": ALICE_PW}
        for headers, status, code in ((self.callers["user_token"], 403, "forbidden"),
                                      (self.callers["basic"], 403, "forbidden"),
                                      (session, 403, "forbidden"),
                                      ({}, 401, "authentication_required"),
                                      (self.callers["unknown"], 401, "invalid_credentials")):
            response = self.call("POST", "/sessions", body, headers)
            self.assertEqual((response.status, error_code(response)), (status, code))
        for wrong in ({"user": "alice", "password": "nope"}, {"user": "nobody", "password": "x"}):
            response = self.call("POST", "/sessions", wrong, app)
            self.assertEqual((response.status, error_code(response)), (401, "invalid_credentials"))
        for headers in (app, self.callers["user_token"], self.admin):
            self.assertEqual(self.status("DELETE", "/sessions/current", headers), 403)
        self.assertEqual(self.status("DELETE", "/sessions/current", session), 204)
        for method, path in (("GET", "/auth/whoami"), ("DELETE", "/sessions/current"),
                             ("GET", "/buckets/%s/keys/%s" % TENANT_A[:2])):
            response = self.call(method, path, None, session)
            self.assertEqual((response.status, error_code(response)), (401, "invalid_credentials"))
            self.assertEqual(response.header("WWW-Authenticate"), BEARER_INVALID)

