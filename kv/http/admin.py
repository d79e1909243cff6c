"""This module provides the handlers of API.md "Authentication" and
"Administration": sessions (``/sessions``, ``/sessions/current``),
``/auth/whoami``, and the admin routes over users, apps, tokens and rules
(``/auth/...``), which all need the ``admin`` verb (over ``*`` and ``#``).

They answer JSON documents (XML on request); bodies are JSON objects of at
most ADMIN_BODY_BYTES.  Times are RFC 3339 UTC.  Secrets are shown once: a
token's when it is made, never a password hash.  With authentication off
every route here answers 404 ``not_found`` (there is nothing to manage
and no caller to name).
"""

import datetime
import json
from typing import Optional

import web

from kv.auth.directory import principal_parts
from kv.auth.rule_syntax import VERBS, check_app_id, check_user_name
from kv.auth.rules import Caller
from kv.errors import InvalidRequest, KeyNotFound
from kv.http.access import BASIC_CHALLENGE
from kv.http.errors import HTTPProblem
from kv.http.negotiation import endpoint
from kv.http.representations import DOCUMENT, EMPTY, timestamp
from kv.http.paging import page_args, paged
from kv.http.request import query, read_body

ADMIN_BODY_BYTES = 65536
JSON_ONLY = ("application/json",)


def _json_object() -> dict:
    """The request body as a JSON object (at most ADMIN_BODY_BYTES).

    :raises InvalidRequest: when it is not one.
    """
    try:
        doc = json.loads(read_body(ADMIN_BODY_BYTES))
    except ValueError:
        raise InvalidRequest("the body is not a JSON object") from None
    if not isinstance(doc, dict):
        raise InvalidRequest("the body is not a JSON object")
    return doc


def _body(fields: dict) -> dict:
    """The request's JSON object, checked against ``fields`` (name -> the
    accepted types; a name ending in ``?`` is optional).

    :raises InvalidRequest: for anything else.
    """
    doc = _json_object()
    names = {name.rstrip("?") for name in fields}
    unknown = sorted(set(doc) - names)
    if unknown:
        raise InvalidRequest("unknown field %r" % unknown[0])
    for name, types in fields.items():
        plain = name.rstrip("?")
        if plain not in doc:
            if not name.endswith("?"):
                raise InvalidRequest("the field %r is missing" % plain)
        elif not isinstance(doc[plain], types):
            raise InvalidRequest("the field %r has the wrong type" % plain)
    return doc


def _time_us(text: Optional[str]) -> Optional[int]:
    """Microseconds of an RFC 3339 time (None stays None).

    :raises InvalidRequest: for anything else.
    """
    if text is None:
        return None
    try:
        moment = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidRequest("%r is not an RFC 3339 time" % text) from None
    if moment.tzinfo is None:
        raise InvalidRequest("%r has no time zone" % text)
    return int(moment.timestamp()) * 1_000_000 + moment.microsecond


def _page(items, next_cursor):
    sealed, headers = paged(next_cursor)
    return {DOCUMENT: {"items": items, "next": sealed}}, 200, headers


def _token_json(doc: dict) -> dict:
    return dict(doc, expires=timestamp(doc["expires"]), created=timestamp(doc["created"]),
                last_used=timestamp(doc["last_used"]))


def _directory():
    directory = web.ctx.access.directory
    if directory is None:
        raise HTTPProblem(404, "not_found", "authentication is off on this service")
    return directory


# -- sessions and whoami ------------------------------------------------------

class Sessions:
    """POST /sessions: an app (its own token) starts a session for a user."""

    PARAMETERS = {"POST": ()}

    @staticmethod
    def guard(access, _):
        access.require_caller(app=True)

    @endpoint(DOCUMENT, takes=JSON_ONLY)
    def POST(self):
        access = web.ctx.access
        directory = _directory()
        doc = _body({"user": str, "password": str})
        if not directory.check_password(doc["user"], doc["password"]):
            raise HTTPProblem(401, "invalid_credentials", "the user's credentials are not valid",
                              [("WWW-Authenticate", BASIC_CHALLENGE)])
        expires = directory.store.clock() + directory.settings.session_seconds * 1_000_000
        secret, token = directory.create_token(doc["user"], access.caller.app, expires)
        return {DOCUMENT: {"token": secret, "id": token["id"], "expires": timestamp(expires),
                           "bucket": "%s:%s" % (access.caller.app, doc["user"])}}, 201, []


class CurrentSession:
    """DELETE /sessions/current: the session's own token revokes itself."""

    PARAMETERS = {"DELETE": ()}

    @staticmethod
    def guard(access, _):
        access.require_caller(session=True)

    @endpoint(EMPTY)
    def DELETE(self):
        _directory().revoke_token(web.ctx.access.token.id)
        return {EMPTY: True}, 204, []


class WhoAmI:
    """GET /auth/whoami: the caller's principals."""

    PARAMETERS = {"GET": ()}

    @staticmethod
    def guard(access, _):
        access.require_caller()

    @endpoint(DOCUMENT)
    def GET(self):
        _directory()
        access = web.ctx.access
        caller, token = access.caller, access.token
        principals = ([("app:" + caller.app)] if caller.app else []) + (
            [("user:" + caller.user)] if caller.user else [])
        session = caller.app is not None and caller.user is not None
        return {DOCUMENT: {
            "principals": principals,
            "session_bucket": "%s:%s" % (caller.app, caller.user) if session else None,
            "token_id": token.id if token else None,
            "expires": timestamp(token.expires_us) if token else None}}, 200, []


# -- administration (admin verb; the processor's default guard) -------------------

class Member:
    """/auth/users/{name} and /auth/apps/{id}: PUT, GET, DELETE."""

    PARAMETERS = {"GET": (), "PUT": (), "DELETE": ()}

    @endpoint(DOCUMENT)
    def GET(self, kind, name):
        return {DOCUMENT: self._document(kind, name)}, 200, []

    @staticmethod
    def _document(kind, name) -> dict:
        directory = _directory()
        if kind == "users":
            user = directory.user(check_user_name(name))
            if user is None:
                raise KeyNotFound(name.encode())
            return {"name": name, "disabled": bool(user.get("disabled")),
                    "password": user.get("hash") is not None}
        app = directory.app(check_app_id(name))
        if app is None:
            raise KeyNotFound(name.encode())
        return {"id": name, "description": app.get("description", "")}

    @endpoint(DOCUMENT, takes=JSON_ONLY)
    def PUT(self, kind, name):
        directory = _directory()
        if kind == "users":
            doc = _body({"password?": (str, type(None)), "disabled?": bool})
            created = directory.put_user(name, doc.get("password"), doc.get("disabled", False),
                                         keep_password="password" not in doc)
        else:
            doc = _body({"description?": str})
            created = directory.put_app(name, doc.get("description", ""))
        return {DOCUMENT: self._document(kind, name)}, 201 if created else 200, []

    @endpoint(EMPTY)
    def DELETE(self, kind, name):
        directory = _directory()
        (directory.delete_user if kind == "users" else directory.delete_app)(name)
        return {EMPTY: True}, 204, []


class Members:
    """/auth/users and /auth/apps: GET the names, paged."""

    PARAMETERS = {"GET": ("limit", "cursor")}

    @endpoint(DOCUMENT)
    def GET(self, kind):
        limit, cursor = page_args()
        names, next_cursor = _directory().names(kind[:-1], cursor, limit)
        field = "name" if kind == "users" else "id"
        return _page([{field: n} for n in names], next_cursor)


class Tokens:
    """/auth/tokens: POST issues a token (its secret shown this once); GET lists them."""

    PARAMETERS = {"POST": (), "GET": ("principal", "limit", "cursor")}

    @endpoint(DOCUMENT, takes=JSON_ONLY)
    def POST(self):
        directory = _directory()
        doc = _body({"principal": str, "expires?": (str, type(None))})
        user, app = principal_parts(doc["principal"])
        if (directory.user(user) if user else directory.app(app)) is None:
            raise InvalidRequest("no such principal %r" % doc["principal"])
        secret, token = directory.create_token(user, app, _time_us(doc.get("expires")))
        return {DOCUMENT: dict(_token_json(token), token=secret)}, 201, []

    @endpoint(DOCUMENT)
    def GET(self):
        limit, cursor = page_args()
        docs, next_cursor = _directory().tokens(query().get("principal"), cursor, limit)
        return _page([_token_json(d) for d in docs], next_cursor)


class TokenResource:
    """/auth/tokens/{id}: DELETE revokes."""

    PARAMETERS = {"DELETE": ()}

    @endpoint(EMPTY)
    def DELETE(self, id_):
        _directory().revoke_token(id_)
        return {EMPTY: True}, 204, []


class Rules:
    """/auth/rules: POST a new rule (201 with its id); GET them, paged and
    filtered by ``principal`` and ``bucket`` (exact selector)."""

    PARAMETERS = {"POST": (), "GET": ("principal", "bucket", "limit", "cursor")}

    @endpoint(DOCUMENT, takes=JSON_ONLY)
    def POST(self):
        rule = _directory().add_rule(_json_object())
        return {DOCUMENT: rule.doc()}, 201, [("Location", "/auth/rules/" + rule.id)]

    @endpoint(DOCUMENT)
    def GET(self):
        limit, cursor = page_args()
        q = query()
        rules, next_cursor = _directory().rule_page(cursor, limit)
        return _page([r.doc() for r in rules
                      if q.get("principal") in (None, r.principal)
                      and q.get("bucket") in (None, r.bucket)], next_cursor)


class RuleResource:
    """/auth/rules/{id}: GET, DELETE."""

    PARAMETERS = {"GET": (), "DELETE": ()}

    @endpoint(DOCUMENT)
    def GET(self, id_):
        return {DOCUMENT: _directory().rule(id_).doc()}, 200, []

    @endpoint(EMPTY)
    def DELETE(self, id_):
        _directory().delete_rule(id_)
        return {EMPTY: True}, 204, []


class Check:
    """GET /auth/check?principal=&app=&verb=&bucket=&key=: the decision and
    the rule that made it; a user principal with ``app`` is that app's
    session of that user (both halves)."""

    PARAMETERS = {"GET": ("principal", "app", "verb", "bucket", "key")}

    @endpoint(DOCUMENT)
    def GET(self):
        q = query()
        missing = [f for f in ("principal", "verb", "bucket", "key") if f not in q]
        if missing:
            raise InvalidRequest("the parameter %r is missing" % missing[0])
        if q["verb"] not in VERBS:
            raise InvalidRequest("verb must be one of %s" % ", ".join(VERBS))
        user, app = principal_parts(q["principal"])
        if q.get("app"):
            if user is None:
                raise InvalidRequest("app goes with a user principal (a session)")
            app = check_app_id(q["app"])
        decision = _directory().rules().authorize(Caller(user, app, True), q["verb"],
                                                  q["bucket"], q["key"])
        return {DOCUMENT: {"allowed": decision.allowed,
                           "rule": decision.rule.doc() if decision.rule else None}}, 200, []


#: The routes of this module, in web.py's URL map form.
URLS = ("/sessions", Sessions, "/sessions/current", CurrentSession, "/auth/whoami", WhoAmI,
        "/auth/check", Check, "/auth/(users|apps)/(.+)", Member, "/auth/(users|apps)", Members,
        "/auth/tokens/(.+)", TokenResource, "/auth/tokens", Tokens,
        "/auth/rules/(.+)", RuleResource, "/auth/rules", Rules)
