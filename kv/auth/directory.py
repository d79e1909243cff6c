"""This module provides :class:`Directory`: the users, applications, tokens
and rules of API.md "Authentication" and "Permissions", stored as JSON
values in the reserved bucket ``_auth`` of the partitions (so they are
placed, replicated and repaired by sync like any data), and the
per-process caches that keep a credential check off the database.

Keys of ``_auth``: ``user/{name}`` ``{"hash": argon2id or null, "disabled":
bool}``; ``app/{id}`` ``{"description": str}``; ``token/{id}`` ``{"digest":
sha256 hex, "user": name or null, "app": id or null, "expires": us or null}``
(a session token has both; stored with the token's expiry as its TTL, so an
expired token disappears); ``used/{id}`` the last-used time (kept apart so
that recording a use can never bring back a revoked token); ``rule/{id}``
the rule's JSON.

Freshness: rules are reloaded, and users, apps and tokens read again, when
what a process holds is older than ``[auth] refresh_seconds`` (10 s; at most
30): a change made on one node (a new rule, a revoked token, a disabled user,
a changed password) takes effect on every node within that delay.  A
successful password check is remembered for PASSWORD_CACHE_SECONDS under a
digest of the name *and* the password, and only while the user's stored hash
is the one it was checked against.
"""

import base64
import hashlib
import json
import logging
import secrets
import threading
import time
from typing import Callable, Dict, List, NamedTuple, Optional, Tuple

from kv.auth.credentials import (hash_password, new_token, same_digest, token_digest, token_id,
                                 verify_password)
from kv.auth.rule_syntax import Rule, check_app_id, check_user_name, parse_rule
from kv.auth.rules import RuleSet
from kv.errors import InvalidRequest, KeyExists, KeyNotFound
from kv.records import MAX_TTL_SECONDS, Condition

log = logging.getLogger("kv.auth")

AUTH_BUCKET = b"_auth"
PASSWORD_CACHE_SECONDS = 30
#: Entries a process caches at most per cache (tokens, password checks);
#: past it the cache starts again empty, so a flood of made-up credentials
#: costs memory only up to this.
CACHE_ENTRIES = 100_000
PAGE = 1000
#: A token's last use is recorded at most this often per process (seconds).
USED_EVERY_SECONDS = 60


class Token(NamedTuple):
    """A stored token (never its secret): ``id``; ``user`` / ``app`` (a
    session has both); ``expires_us`` (None: never) and ``created_us``,
    microseconds since the epoch."""
    id: str
    digest: str
    user: Optional[str]
    app: Optional[str]
    expires_us: Optional[int]
    created_us: int

    @property
    def principal(self) -> str:
        """``user:{name}`` (sessions included) or ``app:{id}``."""
        return "user:" + self.user if self.user is not None else "app:" + str(self.app)


def _json(record) -> dict:
    return json.loads(record.value)


def principal_parts(principal: str) -> Tuple[Optional[str], Optional[str]]:
    """(user, app) of ``user:{name}`` or ``app:{id}``, validated.

    :raises InvalidRequest: for anything else.
    """
    kind, _, name = principal.partition(":")
    if kind == "user":
        return check_user_name(name), None
    if kind == "app":
        return None, check_app_id(name)
    raise InvalidRequest("a principal is user:{name} or app:{id}")


class _Cache:
    """A dict of key -> (value, monotonic time stored), bounded by CACHE_ENTRIES."""

    def __init__(self, seconds: float, clock: Callable[[], float]):
        self.seconds, self.clock, self.entries = seconds, clock, {}

    def get(self, key):
        """(True, value) when fresh, else (False, None)."""
        hit = self.entries.get(key)
        if hit is not None and self.clock() - hit[1] < self.seconds:
            return True, hit[0]
        return False, None

    def put(self, key, value) -> None:
        if len(self.entries) >= CACHE_ENTRIES:
            self.entries = {}
        self.entries[key] = (value, self.clock())

    def drop(self, key) -> None:
        self.entries.pop(key, None)


class Directory:
    """Users, apps, tokens and rules in the ``_auth`` bucket of ``store``.

    :param store: the :class:`kv.cluster.datastore.Datastore`.
    :param settings: its ``AuthSettings`` (``refresh_seconds``, ``session_seconds``).
    :param clock: monotonic seconds, for the caches (injected by tests).
    Every method may raise PartitionUnavailable when ``_auth`` cannot be read.
    """

    def __init__(self, store, settings, clock: Callable[[], float] = time.monotonic):
        self.store, self.settings, self.clock = store, settings, clock
        refresh = settings.refresh_seconds
        self._users, self._apps, self._tokens = (_Cache(refresh, clock), _Cache(refresh, clock),
                                                 _Cache(refresh, clock))
        self._passwords = _Cache(PASSWORD_CACHE_SECONDS, clock)
        self._used: Dict[str, float] = {}
        self._rules: Optional[RuleSet] = None
        self._rules_at = 0.0
        self._lock = threading.Lock()
        self._cursor_key: Optional[bytes] = None
        self._checking: Dict[bytes, threading.Lock] = {}
        self._flights = threading.Lock()
        #: +1 on every change this process makes to ``_auth`` (memos of
        #: what it read, such as kv.http.access.Authenticator's, drop then).
        self.generation = 0

    # -- reading (cached) -------------------------------------------------
    def _read(self, key: str) -> Optional[dict]:
        try:
            return _json(self.store.get(AUTH_BUCKET, key.encode("utf-8"))[0])
        except KeyNotFound:
            return None

    def _cached(self, cache: _Cache, key: str) -> Optional[dict]:
        fresh, value = cache.get(key)
        if not fresh:
            value = self._read(key)
            cache.put(key, value)
        return value

    def rules(self) -> RuleSet:
        """The rules as a compiled :class:`RuleSet`, reloaded when older than
        ``refresh_seconds`` (one thread reloads; the others use the old set)."""
        if self._rules is None or self.clock() - self._rules_at >= self.settings.refresh_seconds:
            if self._lock.acquire(blocking=self._rules is None):
                try:
                    self._rules = RuleSet(self._load_rules())
                    self._rules_at = self.clock()
                finally:
                    self._lock.release()
        return self._rules

    def _load_rules(self) -> List[Rule]:
        rules = []
        for key, doc in self._walk("rule/"):
            try:
                rules.append(parse_rule(doc, key[len("rule/"):]))
            except (InvalidRequest, ValueError) as e:
                log.error("_auth %s is not a valid rule and is ignored: %s", key, e)
        return rules

    def _walk(self, prefix: str):
        """Every (key str, JSON doc) of ``_auth`` under ``prefix``, in key order."""
        cursor = None
        while True:
            page = self.store.list(AUTH_BUCKET, prefix.encode("utf-8"), b"", cursor, PAGE, True)
            for record in page.items:
                yield record.key.decode("utf-8"), _json(record)
            cursor = page.next
            if not cursor:
                return

    def user(self, name: str) -> Optional[dict]:
        """The stored user ``{"hash", "disabled"}`` or None (cached)."""
        return self._cached(self._users, "user/" + name)

    def app(self, app: str) -> Optional[dict]:
        """The stored app ``{"description"}`` or None (cached)."""
        return self._cached(self._apps, "app/" + app)

    def check_password(self, name: str, password: str) -> bool:
        """True when ``name`` is an enabled user whose password this is.

        An unknown or disabled user costs one argon2 check, as a wrong
        password does.  Successes are cached (see the module docstring);
        concurrent requests with the same credentials wait for one check
        (argon2id costs about 0.25 s of CPU) instead of each making it.
        """
        user = self.user(name) if _valid_user(name) else None
        stored = user.get("hash") if user and not user.get("disabled") else None
        key = hashlib.sha256(b"%s\0%s" % (name.encode("utf-8"), password.encode("utf-8"))).digest()
        fresh, checked = self._passwords.get(key)
        if fresh and stored is not None and checked == stored:
            return True
        with self._flights:                    # one check per credential at a time: the
            flight = self._checking.setdefault(key, threading.Lock())   # others wait for it
        with flight:
            try:
                fresh, checked = self._passwords.get(key)
                if fresh and stored is not None and checked == stored:
                    return True
                if verify_password(stored, password):
                    self._passwords.put(key, stored)
                    return True
                return False
            finally:
                self._checking.pop(key, None)

    def token(self, secret: str) -> Optional[Token]:
        """The live token whose secret this is, or None (unknown, expired,
        revoked, or its user or app is gone or disabled).  Cached by digest."""
        digest = token_digest(secret)
        fresh, token = self._tokens.get(digest)
        if not fresh:
            doc = self._read("token/" + token_id(digest))
            token = None
            if doc is not None and same_digest(doc["digest"], digest):
                token = Token(token_id(digest), digest, doc.get("user"), doc.get("app"),
                              doc.get("expires"), doc.get("created", 0))
            self._tokens.put(digest, token)
        if token is None or (token.expires_us is not None
                             and token.expires_us <= self.store.clock()):
            return None
        if token.user is not None:
            user = self.user(token.user)
            if user is None or user.get("disabled"):
                return None
        if token.app is not None and self.app(token.app) is None:
            return None
        self._note_use(token)
        return token

    def _note_use(self, token: Token) -> None:
        now = self.clock()
        if now - self._used.get(token.id, -USED_EVERY_SECONDS) < USED_EVERY_SECONDS:
            return
        if len(self._used) >= CACHE_ENTRIES:
            self._used = {}
        self._used[token.id] = now
        try:
            self.store.put(AUTH_BUCKET, ("used/" + token.id).encode(), b"%d" % self.store.clock(),
                           self._ttl(token.expires_us))
        except Exception:                      # a lost last-used time is no reason to refuse
            log.warning("cannot record the use of token %s", token.id, exc_info=True)

    def _ttl(self, expires_us: Optional[int]) -> Optional[int]:
        if expires_us is None:
            return None
        seconds = max(1, -(-(expires_us - self.store.clock()) // 1_000_000))
        return seconds if seconds <= MAX_TTL_SECONDS else None   # beyond: checked when used

    # -- administration ---------------------------------------------------
    def _put(self, key: str, doc: dict, ttl: Optional[int] = None,
             condition: Condition = Condition()) -> bool:
        try:
            _, created, _ = self.store.put(AUTH_BUCKET, key.encode("utf-8"),
                                           json.dumps(doc, sort_keys=True).encode(), ttl,
                                           condition)
        finally:
            self.generation += 1
        return created

    def _delete(self, key: str) -> None:
        """Delete ``key`` of ``_auth``.  :raises KeyNotFound: when absent."""
        try:
            self.store.delete(AUTH_BUCKET, key.encode("utf-8"))
        finally:
            self.generation += 1

    def put_user(self, name: str, password: Optional[str], disabled: bool = False,
                 keep_password: bool = False) -> bool:
        """Create or replace a user (a None password: no Basic login; with
        ``keep_password`` the stored hash stays, as when disabling a user).

        :returns: True when created.
        :raises InvalidRequest: for a bad name.
        """
        check_user_name(name)
        if keep_password:
            stored = self._read("user/" + name)
            hashed = stored.get("hash") if stored else None
        else:
            hashed = hash_password(password) if password is not None else None
        created = self._put("user/" + name, {"hash": hashed, "disabled": bool(disabled)})
        self._users.drop("user/" + name)
        return created

    def put_app(self, app: str, description: str) -> bool:
        """Create or replace an app.  :returns: True when created."""
        check_app_id(app)
        created = self._put("app/" + app, {"description": description})
        self._apps.drop("app/" + app)
        return created

    def delete_user(self, name: str) -> None:
        """:raises KeyNotFound: when there is no such user."""
        self._delete("user/" + check_user_name(name))
        self._users.drop("user/" + name)

    def delete_app(self, app: str) -> None:
        """:raises KeyNotFound: when there is no such app."""
        self._delete("app/" + check_app_id(app))
        self._apps.drop("app/" + app)

    def names(self, kind: str, cursor: Optional[str], limit: int) -> Tuple[List[str], Optional[str]]:
        """A page of user names (``kind`` "user") or app ids ("app").

        :returns: (names, next cursor or None).
        """
        page = self.store.list(AUTH_BUCKET, kind.encode() + b"/", b"", cursor, limit)
        return [r.key.decode("utf-8")[len(kind) + 1:] for r in page.items], page.next

    def create_token(self, user: Optional[str], app: Optional[str],
                     expires_us: Optional[int]) -> Tuple[str, dict]:
        """Issue a token to a user, an app, or (both) a session.

        :returns: (the secret, shown once; the token's public document).
        :raises InvalidRequest: for an expiry in the past.
        """
        now = self.store.clock()
        if expires_us is not None and expires_us <= now:
            raise InvalidRequest("expires is in the past")
        secret, digest = new_token()
        doc = {"digest": digest, "user": user, "app": app, "expires": expires_us, "created": now}
        self._put("token/" + token_id(digest), doc, self._ttl(expires_us),
                  Condition(create_only=True))
        return secret, self.token_doc(token_id(digest), doc)

    @staticmethod
    def token_doc(token_id_: str, doc: dict, used_us: Optional[int] = None) -> dict:
        """The public JSON of a stored token (times in microseconds; the
        HTTP layer formats them); never the digest or the secret."""
        principal = "user:" + doc["user"] if doc.get("user") else "app:" + str(doc.get("app"))
        return {"id": token_id_, "principal": principal,
                "app": doc.get("app") if doc.get("user") else None,
                "session": bool(doc.get("user") and doc.get("app")),
                "expires": doc.get("expires"), "created": doc.get("created"), "last_used": used_us}

    def tokens(self, principal: Optional[str], cursor: Optional[str],
               limit: int) -> Tuple[List[dict], Optional[str]]:
        """A page of tokens (filtered by principal: a page may hold fewer
        than ``limit``).  :returns: (token documents, next cursor or None)."""
        page = self.store.list(AUTH_BUCKET, b"token/", b"", cursor, limit, True)
        docs = [self.token_doc(r.key.decode()[len("token/"):], _json(r)) for r in page.items]
        docs = [d for d in docs if principal is None or d["principal"] == principal]
        used = self.store.list(AUTH_BUCKET, b"used/", b"", None, 1000, True) if docs else None
        times = {r.key.decode()[len("used/"):]: int(r.value) for r in used.items} if used else {}
        for doc in docs:
            doc["last_used"] = times.get(doc["id"])
        return docs, page.next

    def revoke_token(self, id_: str) -> None:
        """Revoke a token now on this process, within refresh_seconds elsewhere.

        :raises KeyNotFound: when there is no such live token.
        """
        if not id_.isalnum():
            raise KeyNotFound(id_.encode("utf-8", "replace"))
        self._delete("token/" + id_)
        for digest, (token, _) in list(self._tokens.entries.items()):
            if token is not None and token.id == id_:
                self._tokens.drop(digest)

    def add_rule(self, doc: dict) -> Rule:
        """Store a new rule (its id is made here).

        :raises InvalidRequest: for an invalid rule or one that has an id.
        """
        if "id" in doc:
            raise InvalidRequest("a new rule has no id; the service gives it one")
        rule = parse_rule(doc, "r" + secrets.token_hex(6))
        self._put("rule/" + rule.id, {k: v for k, v in rule.doc().items() if k != "id"},
                  condition=Condition(create_only=True))
        self._rules_at = 0.0                   # this process sees it at once
        return rule

    def rule(self, id_: str) -> Rule:
        """:raises KeyNotFound: when there is no such rule."""
        doc = self._read("rule/" + id_)
        if doc is None:
            raise KeyNotFound(id_.encode("utf-8", "replace"))
        return parse_rule(doc, id_)

    def delete_rule(self, id_: str) -> None:
        """:raises KeyNotFound: when there is no such rule."""
        self._delete("rule/" + id_)
        self._rules_at = 0.0

    def rule_page(self, cursor: Optional[str], limit: int) -> Tuple[List[Rule], Optional[str]]:
        """A page of the stored rules in id order: (rules, next cursor or None)."""
        page = self.store.list(AUTH_BUCKET, b"rule/", b"", cursor, limit, True)
        return [parse_rule(_json(r), r.key.decode()[len("rule/"):]) for r in page.items], page.next

    def cursor_key(self) -> bytes:
        """The key that seals listing cursors (32 random bytes, URL-safe
        base64, as Fernet takes), made by the first node that needs it and
        shared by every node through ``_auth``."""
        if self._cursor_key is None:
            doc = self._read("secret/cursors")
            if doc is None:
                try:
                    self._put("secret/cursors", {"key": base64.urlsafe_b64encode(
                        secrets.token_bytes(32)).decode()}, condition=Condition(create_only=True))
                except KeyExists:
                    pass                       # another node made it first: use theirs
                doc = self._read("secret/cursors")
            self._cursor_key = doc["key"].encode()
        return self._cursor_key

    def admin_exists(self) -> bool:
        """True when some rule allows ``admin`` (bootstrap-admin refuses then)."""
        return any(r.effect == "allow" and "admin" in r.verbs for r in self._load_rules())


def _valid_user(name: str) -> bool:
    try:
        check_user_name(name)
        return True
    except InvalidRequest:
        return False
