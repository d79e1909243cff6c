"""This module provides :class:`TenantsMixin`, the part of
:class:`kvclient.Store` that reaches beyond one bucket's keys (API.md
"Buckets", "Authentication", "Administration", "Cross-bucket reads and
aggregation"): the buckets, app+user sessions, cross-bucket reads and
aggregates, ``whoami``, and the administration API (users, apps, tokens,
rules, ``check``).

Every method sends this store's credentials.  A paged answer
(``{"items": [...], "next": cursor-or-null}``) is walked lazily by following
``next`` with ``?cursor=``; a page filtered by permissions may hold no items
and still have a ``next``.  Errors are those of :mod:`kvclient.errors`: most
often :class:`~kvclient.errors.Unauthorized` (401: no valid credentials),
:class:`~kvclient.errors.Forbidden` (403: no rule allows it; every
administration call needs the ``admin`` verb), :class:`~kvclient.errors.NotFound`
(an absent user, app, token or rule) and :class:`~kvclient.errors.BadRequest`.
"""

import datetime
import urllib.parse
from typing import Iterator, Optional, Tuple, Union

from kvclient.records import Record, format_time, parse_time

__all__ = ["TenantsMixin", "segment", "quote_key", "format_time"]

JSON = {"Accept": "application/json"}
PAGE = 1000


def segment(name: str) -> str:
    """``name`` percent-encoded as one path segment (a bucket, user, app, token
    or rule id): ``:``, ``@`` and ``+`` stay as they are (RFC 3986 pchar),
    everything else outside the unreserved set is escaped, and so are the dots
    of ``.`` and ``..`` (never dot-segments)."""
    if name in (".", ".."):
        return name.replace(".", "%2E")
    return urllib.parse.quote(name, safe=":@+")


def quote_key(key: Union[str, bytes]) -> str:
    """A key (str, or UTF-8 bytes) as the last path segment: everything
    escaped, "." included, so that "." and ".." never look like dot-segments."""
    if isinstance(key, bytes):
        key = key.decode("utf-8")
    return urllib.parse.quote(key, safe="").replace(".", "%2E")


def _parse_expiry(text: Optional[str]):
    """An answer's time as an aware datetime; RFC 3339 without microseconds
    is accepted too, and anything unparsable is kept as the text."""
    try:
        return parse_time(text)
    except ValueError:
        try:
            return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            return text


class TenantsMixin:
    """Buckets, sessions, cross-bucket reads and administration; mixed into
    :class:`kvclient.Store`, whose ``_request(method, path, ok, **kwargs)``
    sends the requests."""

    def _json(self, method: str, path: str, ok=(200,), **kwargs) -> dict:
        return self._request(method, path, ok=ok, headers=JSON, **kwargs).json()

    def _paged(self, path: str, params: Optional[dict] = None) -> Iterator[dict]:
        """The items of every page of a listing, fetched lazily (parameters
        that are None are not sent)."""
        params = {k: v for k, v in (params or {}).items() if v is not None}
        while True:
            page = self._json("GET", path, params=params)
            yield from page["items"]
            if not page.get("next"):
                return
            params["cursor"] = page["next"]

    # sessions
    def start_session(self, user: str, credentials: dict):
        """Start an app+user session (Sauropod's ``start_session``):
        ``POST /sessions`` with ``{"user": user, **credentials}``, sent with
        this store's credentials (the app's token).

        >>> app = kvclient.connect(url, app="notes", token=APP_TOKEN)   # doctest: +SKIP
        >>> s = app.start_session("alice@example.com", {"password": "..."})
        >>> s.bucket
        'notes:alice@example.com'

        :param str user: the user name, e.g. ``alice@example.com``.
        :param dict credentials: the user's credentials, e.g. ``{"password": "..."}``.
        :returns: a :class:`kvclient.sessions.SessionStore` on the answer's
            bucket with the session token (its ``expires`` set); ``end()``
            (or ``close()``, or leaving ``with``) ends the session.
        :raises Unauthorized: when the app's token or the user's credentials are not valid.
        :raises Forbidden: when the app may not start sessions.
        """
        # Imported here: kvclient.sessions imports kvclient.store, which imports this module.
        from kvclient.sessions import SessionStore
        answer = self._json("POST", "/sessions", ok=(200, 201), json={"user": user, **credentials})
        return SessionStore(self.url, self.timeout, self.retries, bucket=answer["bucket"],
                            token=answer["token"], user=user, app=self.app,
                            expires=_parse_expiry(answer.get("expires")))

    def whoami(self) -> dict:
        """``GET /auth/whoami``: who this store's credentials are.

        :returns: ``{"principals": ["app:notes", "user:alice@example.com"],
            "session_bucket": str or None, "token_id": str or None, "expires": str or None}``.
        :raises Unauthorized: when the credentials are missing or not valid.
        """
        return self._json("GET", "/auth/whoami")

    # buckets
    def buckets(self, prefix: str = "") -> Iterator[str]:
        """The names of the buckets that hold a live key and in which the
        caller may ``list``, in byte order, starting with ``prefix``, lazily
        (``GET /buckets``).

        :raises Forbidden: when no rule of the caller could allow a listing under ``prefix``.
        """
        for item in self._paged("/buckets", {"prefix": prefix or None, "limit": PAGE}):
            yield item["bucket"]

    def read_across(self, app: str, key) -> Iterator[Tuple[str, Record]]:
        """Read ``key`` in every bucket of the application ``app``
        (``GET /buckets/{app}:*/keys/{key}``), lazily, in bucket byte order;
        only the buckets where the caller may read the key are shown.

        :returns: an iterator of (bucket name, :class:`Record`); the records
            come from a listing, so their ``etag`` may be None.
        :raises Forbidden: when the caller may read nothing of the app.
        """
        for item in self._paged(self._across(app, key), {"limit": PAGE}):
            yield item["bucket"], Record.from_json(item["record"], item.get("etag"))

    def aggregate(self, app: str, key, function: str) -> dict:
        """Aggregate the JSON-number values of ``key`` over every bucket of
        ``app`` where the caller may read it (``?aggregate=``).

        :param str function: ``count``, ``sum``, ``min``, ``max`` or ``avg``.
        :returns: ``{"aggregate": "sum", "value": 1234.5, "count": 17,
            "non_numeric": 2, "complete": true}`` (``complete`` is False when
            a partition could not be read).
        :raises BadRequest: for an unknown ``function``.
        """
        return self._json("GET", self._across(app, key), params={"aggregate": function})

    @staticmethod
    def _across(app: str, key) -> str:
        return "/buckets/%s:*/keys/%s" % (segment(app), quote_key(key))

    # users
    def put_user(self, name: str, password: Optional[str], disabled: bool = False) -> bool:
        """Create or replace the user ``name`` (``PUT /auth/users/{name}``).

        :param str password: the password (stored by the server as an argon2id
            hash); None leaves it out of the body, for the server to keep the
            current one (used to disable or enable a user).
        :param bool disabled: True: the user's credentials stop working (within 60 s).
        :returns: True when the user was created (201), False when replaced (200).
        """
        body = {"disabled": disabled}
        if password is not None:
            body["password"] = password
        path = "/auth/users/" + segment(name)
        return self._request("PUT", path, ok=(200, 201), json=body,
                             headers=JSON).status_code == 201

    def get_user(self, name: str) -> dict:
        """``GET /auth/users/{name}``: the user (never its password hash), e.g.
        ``{"name": "bob", "disabled": false}``.

        :raises NotFound: when there is no such user.
        """
        return self._json("GET", "/auth/users/" + segment(name))

    def delete_user(self, name: str) -> None:
        """``DELETE /auth/users/{name}``.  :raises NotFound: when there is no such user."""
        self._request("DELETE", "/auth/users/" + segment(name), ok=(200, 204), headers=JSON)

    def users(self) -> Iterator[str]:
        """The user names, lazily (``GET /auth/users``)."""
        for item in self._paged("/auth/users"):
            yield item["name"] if isinstance(item, dict) else item

    # apps
    def put_app(self, id: str, description: str = "") -> bool:
        """Create or replace the application ``id`` (``PUT /auth/apps/{id}``).

        :returns: True when the app was created (201), False when replaced (200).
        """
        return self._request("PUT", "/auth/apps/" + segment(id), ok=(200, 201),
                             json={"description": description}, headers=JSON).status_code == 201

    def get_app(self, id: str) -> dict:
        """``GET /auth/apps/{id}``, e.g. ``{"id": "notes", "description": "..."}``.

        :raises NotFound: when there is no such app.
        """
        return self._json("GET", "/auth/apps/" + segment(id))

    def delete_app(self, id: str) -> None:
        """``DELETE /auth/apps/{id}``.  :raises NotFound: when there is no such app."""
        self._request("DELETE", "/auth/apps/" + segment(id), ok=(200, 204), headers=JSON)

    def apps(self) -> Iterator[str]:
        """The application ids, lazily (``GET /auth/apps``)."""
        for item in self._paged("/auth/apps"):
            yield item["id"] if isinstance(item, dict) else item

    # tokens
    def create_token(self, principal: str, expires=None) -> dict:
        """Issue a token (``POST /auth/tokens``).

        :param str principal: ``user:{name}`` or ``app:{id}``.
        :param expires: when it expires: an RFC 3339 str, a datetime (naive is
            UTC), or None for never.
        :returns: the answer, with the secret shown this once: ``{"id": ...,
            "token": "kv_...", "principal": ..., "expires": ..., ...}``.
        """
        return self._json("POST", "/auth/tokens", ok=(200, 201),
                          json={"principal": principal, "expires": format_time(expires)})

    def tokens(self, principal: Optional[str] = None) -> Iterator[dict]:
        """The tokens (of ``principal`` only, if given), lazily: dicts with
        ``id``, ``principal``, ``expires``, ``created``, ``last_used``; never secrets."""
        return self._paged("/auth/tokens", {"principal": principal})

    def revoke_token(self, id: str) -> None:
        """Revoke a token (``DELETE /auth/tokens/{id}``); every web node
        refuses it within 30 s.  :raises NotFound: when there is no such token."""
        self._request("DELETE", "/auth/tokens/" + segment(id), ok=(200, 204), headers=JSON)

    # rules
    def add_rule(self, rule: dict) -> dict:
        """Add a rule (``POST /auth/rules``).

        :param dict rule: ``{"effect": "allow"|"deny", "principal": "user:*",
            "verbs": ["read", "write", "list"], "bucket": "notes:${user}",
            "keys": "#", "via_app": "notes"}`` (``via_app`` optional), without ``id``.
        :returns: the rule as stored, with its ``id``.
        """
        answer = self._json("POST", "/auth/rules", ok=(200, 201), json=rule)
        return dict(rule, **answer)

    def rules(self, principal: Optional[str] = None, bucket: Optional[str] = None
              ) -> Iterator[dict]:
        """The rules (with their ``id``), lazily, filtered by ``principal`` and
        ``bucket`` selector when given (``GET /auth/rules``)."""
        return self._paged("/auth/rules", {"principal": principal, "bucket": bucket})

    def get_rule(self, id: str) -> dict:
        """``GET /auth/rules/{id}``.  :raises NotFound: when there is no such rule."""
        return self._json("GET", "/auth/rules/" + segment(id))

    def delete_rule(self, id: str) -> None:
        """``DELETE /auth/rules/{id}``.  :raises NotFound: when there is no such rule."""
        self._request("DELETE", "/auth/rules/" + segment(id), ok=(200, 204), headers=JSON)

    def check(self, principal: str, verb: str, bucket: str, key: str,
              app: Optional[str] = None) -> dict:
        """Ask how a request would be decided (``GET /auth/check``); with a
        ``user:`` principal and ``app``, as that app's session of that user.

        :param str verb: ``list``, ``read``, ``write`` or ``admin``.
        :returns: ``{"allowed": bool, "rule": the deciding rule dict or None}``.
        """
        params = {"principal": principal, "verb": verb, "bucket": bucket, "key": key}
        if app is not None:
            params["app"] = app
        return self._json("GET", "/auth/check", params=params)
