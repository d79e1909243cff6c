"""This module provides the authentication and authorization of a request
(API.md "Authentication" and "Permissions"): :func:`authenticate` turns the
``Authorization`` header into an :class:`Access`, whose ``require*``
methods every route calls, through the controller's processor, before any
storage is read.

With ``[auth] enabled = false`` every request gets :data:`OPEN`, which
allows everything at the cost of one attribute test.  With it on:

- no credentials: the caller is anonymous and may do what rules for
  ``anyone`` allow; a refusal is 401 ``authentication_required`` with both
  challenges (RFC 9110 section 11.6.1);
- malformed, unknown, expired or revoked credentials: 401
  ``invalid_credentials`` with the challenge of the scheme used (RFC 6750
  section 3.1 for Bearer), never anonymous access;
- valid credentials that no rule allows: 403 ``forbidden``, the same answer
  for a present key, an absent key and a bucket that does not exist.

Listing cursors are sealed (Fernet: AES-128-CBC and HMAC-SHA256, from the
``cryptography`` library) under a key kept in ``_auth``, so a cursor never
shows a key or bucket name the caller may not list.
"""

import hashlib
import time
import urllib.parse
from typing import Optional

from cryptography.fernet import Fernet, InvalidToken

from kv.auth.credentials import parse_authorization
from kv.auth.rules import Caller, RuleSet
from kv.errors import InvalidRequest
from kv.http.errors import HTTPProblem
from kv.metrics import count_auth

BASIC_CHALLENGE = 'Basic realm="kv", charset="UTF-8"'
BEARER_CHALLENGE = 'Bearer realm="kv"'
ANONYMOUS = Caller(None, None, False)


class Access:
    """What the current request may do.

    :ivar caller: the :class:`kv.auth.rules.Caller` (anonymous: no user, no app).
    :ivar token: the :class:`kv.auth.directory.Token` used, or None.
    :ivar directory: the :class:`kv.auth.directory.Directory`, None when
        authentication is off (then every ``require`` passes).
    """

    def __init__(self, directory, caller: Caller = ANONYMOUS, token=None):
        self.directory, self.caller, self.token = directory, caller, token
        self.enabled = directory is not None
        self._rules: Optional[RuleSet] = directory.rules() if directory is not None else None

    def _refusal(self) -> HTTPProblem:
        if not self.caller.authenticated:
            return HTTPProblem(401, "authentication_required", "this needs credentials",
                               [("WWW-Authenticate", BASIC_CHALLENGE + ", " + BEARER_CHALLENGE)])
        return HTTPProblem(403, "forbidden", "no rule allows this")

    def may(self, verb: str, bucket: bytes, key: bytes) -> bool:
        """True when ``verb`` is allowed on (bucket, key) (API.md "Permissions")."""
        if not self.enabled:
            return True
        return self._rules.authorize(self.caller, verb, bucket.decode("ascii"),
                                     key.decode("utf-8")).allowed

    def require(self, verb: str, bucket: bytes, key: bytes) -> None:
        """:raises HTTPProblem: 401 or 403 unless ``verb`` is allowed on (bucket, key)."""
        if self.enabled and not self.may(verb, bucket, key):
            raise self._refusal()

    def may_some(self, verb: str, bucket: str, prefix: bytes) -> bool:
        """True when some rule could allow ``verb`` on some key that starts
        with ``prefix`` in ``bucket`` (an exact name, ``{app}:*`` or ``*``)."""
        return not self.enabled or self._rules.could_allow(
            self.caller, verb, bucket, prefix.decode("utf-8", "replace"))

    def require_some(self, verb: str, bucket: str, prefix: bytes) -> None:
        """Refuse a listing when :meth:`may_some` is False (API.md: 403 when
        no rule could allow anything under the prefix); otherwise its
        entries are filtered one by one.

        :raises HTTPProblem: 401 or 403.
        """
        if not self.may_some(verb, bucket, prefix):
            raise self._refusal()

    def require_admin(self) -> None:
        """:raises HTTPProblem: 401 or 403 unless the caller has ``admin``."""
        if self.enabled and not self._rules.may_admin(self.caller).allowed:
            raise self._refusal()

    def require_caller(self, app: bool = False, session: bool = False) -> None:
        """Require credentials (an app's own token with ``app``, a session's
        token with ``session``).

        :raises HTTPProblem: 401 without credentials, 403 for another kind.
        """
        if not self.enabled:
            raise HTTPProblem(404, "not_found", "authentication is off on this service")
        if not self.caller.authenticated:
            raise self._refusal()
        is_session = self.caller.user is not None and self.caller.app is not None
        if app and (self.caller.app is None or is_session):
            raise HTTPProblem(403, "forbidden", "only an application's own token may do this")
        if session and not (is_session and self.token is not None):
            raise HTTPProblem(403, "forbidden", "only a session's token may do this")

    # -- cursors ------------------------------------------------------------
    def seal(self, cursor: Optional[str]) -> Optional[str]:
        """Encrypt a listing cursor (unchanged when authentication is off)."""
        if not self.enabled or cursor is None:
            return cursor
        return Fernet(self.directory.cursor_key()).encrypt(cursor.encode()).decode()

    def unseal(self, cursor: Optional[str]) -> Optional[str]:
        """Decrypt a cursor made by :meth:`seal`.

        :raises InvalidRequest: for a cursor this service did not make.
        """
        if not self.enabled or not cursor:
            return cursor
        try:
            return Fernet(self.directory.cursor_key()).decrypt(cursor.encode()).decode()
        except (InvalidToken, ValueError):
            raise InvalidRequest("the cursor is not one this service gave") from None


OPEN = Access(None)
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")


def refuse_cross_site(access: Access, method: str, env: dict) -> None:
    """Refuse a state-changing request that a browser sends from another
    site with the Basic credentials it remembers (cross-site request
    forgery: a form on any page can POST to ``/keys``).  Bearer tokens are
    never attached by a browser on its own, so only Basic is checked.

    The rule is OWASP's "verifying origin with standard headers": the Fetch
    Metadata header ``Sec-Fetch-Site: cross-site``, or else an ``Origin``
    whose host is not the request's ``Host``, is refused.  Requests without
    either header (curl, programs) pass.

    :raises HTTPProblem: 403 ``cross_site_request``.
    """
    if method in SAFE_METHODS or access.token is not None or not access.caller.authenticated:
        return
    site = env.get("HTTP_SEC_FETCH_SITE")
    if site is not None:
        cross = site == "cross-site"
    else:
        origin = env.get("HTTP_ORIGIN")
        cross = origin is not None and (origin == "null" or urllib.parse.urlsplit(
            origin).netloc.lower() != env.get("HTTP_HOST", "").lower())
    if cross:
        raise HTTPProblem(403, "cross_site_request", "a browser sent this %s from another "
                          "site; it is refused (open the service's own page instead)" % method)


#: How long a worker remembers a successful authentication (seconds).
MEMO_SECONDS = 1.0
MEMO_ENTRIES = 4096


class Authenticator:
    """The :class:`Access` of a request from its ``Authorization`` header,
    with a short memo: a worker sees the same few credentials again and
    again, and checking a token or a cached password costs about 30 us of a
    request (digests, three cache lookups, the rules snapshot) against
    about 5 us for a hit.

    The memo is keyed by the SHA-256 of the header, so it keeps no secret;
    it holds successful authentications only, each for MEMO_SECONDS (less
    when ``refresh_seconds`` plus it would pass API.md's 30 s: a revoked
    token or a disabled user stops working within ``refresh_seconds`` +
    1 s; a change made through this process drops the memo at once).  A
    token's expiry is checked on every request, hit or not.

    :param directory: the Directory of users, apps, tokens and rules.
    :param clock: monotonic seconds (injected by tests).
    """

    def __init__(self, directory, clock=time.monotonic):
        self.directory, self.clock = directory, clock
        self.seconds = max(0.0, min(MEMO_SECONDS, 30.0 - directory.settings.refresh_seconds))
        self._memo: dict = {}

    def __call__(self, header: Optional[str]) -> Access:
        """:raises HTTPProblem: 401 ``invalid_credentials`` for credentials
        that are malformed, unknown, expired or revoked (or a user disabled).
        :raises PartitionUnavailable: when ``_auth`` cannot be read.

        Each call is counted in ``kv_auth_requests_total{scheme,result}``
        (scheme none, basic, bearer or other; result anonymous, ok, invalid
        or error)."""
        directory = self.directory
        if not header:
            count_auth("none", "anonymous")
            return Access(directory)
        key = hashlib.sha256(header.encode("utf-8", "surrogateescape")).digest()
        now = self.clock()
        hit = self._memo.get(key)
        if hit is not None and now < hit[1] and hit[3] == directory.generation:
            access, _, scheme, _ = hit
            token = access.token
            if token is None or token.expires_us is None \
                    or token.expires_us > directory.store.clock():
                count_auth(scheme, "ok")
                return access
        generation = directory.generation
        access, scheme = _authenticate(directory, header)
        if len(self._memo) >= MEMO_ENTRIES:
            self._memo = {}
        self._memo[key] = (access, now + self.seconds, scheme, generation)
        return access


def _authenticate(directory, header: str):
    """(Access, scheme) of a non-empty ``Authorization`` header, checked
    against the directory (see :class:`Authenticator`)."""
    scheme, credentials = parse_authorization(header)
    known = scheme if scheme in ("basic", "bearer") else "other"
    try:
        if scheme == "basic" and credentials and directory.check_password(*credentials):
            count_auth(known, "ok")
            return Access(directory, Caller(credentials[0], None, True)), known
        if scheme == "bearer" and credentials:
            token = directory.token(credentials[0])
            if token is not None:
                count_auth(known, "ok")
                return Access(directory, Caller(token.user, token.app, True), token), known
    except Exception:
        count_auth(known, "error")
        raise
    count_auth(known, "invalid")
    challenge = {"bearer": BEARER_CHALLENGE + ', error="invalid_token"',
                 "basic": BASIC_CHALLENGE}.get(scheme, BASIC_CHALLENGE + ", " + BEARER_CHALLENGE)
    raise HTTPProblem(401, "invalid_credentials", "the credentials are not valid",
                      [("WWW-Authenticate", challenge)])
