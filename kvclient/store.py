"""This module provides :class:`Store`, a connection to the key-value service
(API.md), and :func:`connect`, which opens one.

Values are bytes; a ``str`` value is encoded as UTF-8.  Keys are ``str`` (or
UTF-8 ``bytes``) and are percent-encoded on the wire, so ``#``, ``?``, ``%``,
``/``, quotes and brackets travel as they are.  One keep-alive
``requests.Session`` per store.  Errors mirror the API's error codes, see
:class:`kvclient.errors.KVError`.

Retries (``retries`` per call, exponential backoff, honouring Retry-After):
a request that could not connect never left, and is retried whatever its
method.  GET and HEAD are retried after a 503 or a lost answer (a reset or
closed connection, a read timeout), and so are PUT, DELETE and ``create``
(POST /keys); but a write attempt whose answer was lost (or was a 503) may
have taken effect (API.md: only a 2xx says a write is committed, only a 4xx
that nothing was), so a later 404, 409 or 412 that it would explain is
checked as :meth:`Store.put`, :meth:`Store.create` and :meth:`Store.delete`
say.  When nothing can tell, :class:`Indeterminate` (an Unavailable) is
raised.  ``batch`` is never retried once sent, and no request is retried
after a 401 (:class:`kvclient.errors.Unauthorized`) or a 403
(:class:`kvclient.errors.Forbidden`).

Buckets and credentials (API.md "Buckets", "Authentication"): a store opened
with ``bucket=`` sends every key method to ``/buckets/{bucket}/keys...``; one
opened with ``token=`` or ``user=``/``password=`` sends them on every request.
"""

import base64
import re
import time
from typing import Iterator, List, Optional, Tuple, Union

import requests
from requests.adapters import HTTPAdapter
from urllib3.exceptions import ConnectTimeoutError
from urllib3.util.retry import Retry

from kvclient.connection import authorization, service_url
from kvclient.errors import Indeterminate, NotFound, Unavailable, error_for
from kvclient.records import Record, decode_value
from kvclient.tenants import TenantsMixin, quote_key, segment
from kvclient.watch import Watcher

__all__ = ["connect", "Store"]

RAW = "application/octet-stream"
PAGE = 1000
BACKOFF_SECONDS = 0.1          # the first wait before a retry; doubled each time

_ETAG = re.compile(r'(?:W/)?"[^"]*"')


def _never_sent(error: requests.RequestException) -> bool:
    """True when ``error`` is a failure to connect: the request never left."""
    reason = getattr(error.args[0], "reason", None) if error.args else None
    return isinstance(error, requests.ConnectTimeout) or isinstance(reason, ConnectTimeoutError)


def _key(key: Union[str, bytes]) -> str:
    return key.decode("utf-8") if isinstance(key, bytes) else key


def _bytes(value: Union[str, bytes]) -> bytes:
    if isinstance(value, str):
        return value.encode("utf-8")
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise TypeError("a value is bytes or str, not %s" % type(value).__name__)
    return bytes(value)


def connect(url: str, timeout: float = 10.0, retries: int = 3, *, bucket: Optional[str] = None,
            token: Optional[str] = None, user: Optional[str] = None,
            password: Optional[str] = None, app: Optional[str] = None) -> "Store":
    """Open a store on the service at ``url`` (e.g. ``http://127.0.0.1:8080``;
    without a scheme, ``http://`` is assumed: ``localhost:8080``).

    :param float timeout: seconds to wait for a connection and for each answer.
    :param int retries: retries per call (0 for none), as the module docstring says.
    :param str bucket: the bucket every key method works in (API.md "Buckets"),
        e.g. ``notes:alice@example.com``; None (the default) uses the ``/keys``
        routes, which are the bucket ``default``.
    :param str token: a bearer token (``kv_...``) sent as ``Authorization: Bearer``.
    :param str user: a user name, sent with ``password`` as HTTP Basic (UTF-8,
        RFC 7617); give either ``token`` or ``user``, not both.
    :param str app: the application id ``token`` belongs to; only recorded
        (``store.app``), for :meth:`Store.start_session`.
    :returns: :class:`Store` (nothing is sent until the first call).
    :raises ValueError: when both a token and a user are given, or a password
        without a user, or the URL is unusable (:func:`kvclient.connection.service_url`).
    """
    return Store(url, timeout, retries, bucket=bucket, token=token, user=user, password=password,
                 app=app)


class Store(TenantsMixin):
    """A connection to the service; a dict-like view of the keys of one bucket.

    ``store[key]`` reads, ``store[key] = value`` writes, ``del store[key]``
    deletes, ``key in store`` tests and ``iter(store)`` walks every key.
    Thread-safe in the way requests sessions are: use one Store per thread
    for heavy concurrent use.  The arguments are :func:`connect`'s; ``bucket``,
    ``app`` and ``user`` stay readable as attributes.  Buckets, sessions,
    cross-bucket reads and the administration API are in
    :class:`kvclient.tenants.TenantsMixin`.  A 401 (:class:`Unauthorized`) or
    403 (:class:`Forbidden`) is never retried.
    """

    def __init__(self, url: str, timeout: float = 10.0, retries: int = 3, *,
                 bucket: Optional[str] = None, token: Optional[str] = None,
                 user: Optional[str] = None, password: Optional[str] = None,
                 app: Optional[str] = None):
        self.url = service_url(url)
        self.timeout, self.retries = timeout, retries
        self.bucket, self.app, self.user = bucket, app, user
        self._token = token
        self._keys = "/keys" if bucket is None else "/buckets/%s/keys" % segment(bucket)
        self.session = requests.Session()
        self.session.auth = authorization(token, user, password)
        # urllib3 retries connection failures of every method, and GET and HEAD
        # after a 503 or a lost answer; _write retries the writes itself.
        retry = Retry(total=retries, connect=retries, read=retries, status=retries,
                      backoff_factor=BACKOFF_SECONDS, status_forcelist=(503,),
                      allowed_methods=frozenset({"GET", "HEAD"}),
                      respect_retry_after_header=True, raise_on_status=False)
        adapter = HTTPAdapter(max_retries=retry)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)

    def close(self) -> None:
        """Close the keep-alive connections."""
        self.session.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # transport
    def _path(self, key) -> str:
        # "." is escaped too so that "." and ".." never look like dot-segments.
        return self._keys + "/" + quote_key(key)

    def _send(self, method: str, path: str, **kwargs) -> requests.Response:
        """One request (urllib3 retrying what it may).

        :raises Unavailable: when it could not connect, or a GET/HEAD got no answer.
        :raises Indeterminate: when a write was sent and no answer came.
        """
        try:
            return self.session.request(method, self.url + path, timeout=self.timeout, **kwargs)
        except requests.RequestException as e:
            if method in ("GET", "HEAD") or _never_sent(e):
                raise Unavailable(0, "no_connection", "cannot reach %s: %s" % (self.url, e)) from None
            raise Indeterminate(0, "indeterminate", "%s %s: no answer (%s)"
                                % (method, self.url + path, e)) from None

    def _request(self, method: str, path: str, ok=(200,), **kwargs) -> requests.Response:
        response = self._send(method, path, **kwargs)
        if response.status_code not in ok:
            raise error_for(response)
        return response

    def _write(self, method: str, path: str, **kwargs) -> Tuple[requests.Response, bool]:
        """Send a write; after a 503 or a lost answer, send it again (``retries`` times).

        :returns: (the last answer, a 503 only if no answer was lost; True when
            an earlier attempt may have taken effect: its answer was lost, or
            was a 503, which may follow a commit that failed to report back).
        :raises Unavailable: when it could not connect and nothing was sent.
        :raises Indeterminate: when an answer was lost and no later one but 503s came.
        """
        doubtful, lost = False, None
        for attempt in range(self.retries + 1):
            delay = BACKOFF_SECONDS * 2 ** attempt
            try:
                response = self._send(method, path, **kwargs)
            except Indeterminate as e:
                doubtful, lost = True, e
            except Unavailable:
                if lost is None:
                    raise
                break                    # no answer now either: an attempt may have landed
            else:
                if response.status_code != 503 or (attempt == self.retries and lost is None):
                    return response, doubtful
                doubtful = True
                if response.headers.get("Retry-After", "").isdigit():
                    delay = int(response.headers["Retry-After"])
            if attempt < self.retries:
                time.sleep(delay)
        raise Indeterminate(0, "indeterminate", "%s; it may have taken effect" % lost.message)

    def _resolve(self, key, expected: Optional[bytes], excluded=()) -> Optional[Record]:
        """Whether a doubtful write (see :meth:`_write`) landed, once a later
        attempt was refused: it did if a read of ``key`` finds it absent
        (``expected`` None: a delete) or holding ``expected`` under an ETag
        not in ``excluded`` (or another writer did the same meanwhile).

        :returns: the record read (None for a delete).
        :raises Indeterminate: when the read shows otherwise or fails.
        """
        try:
            record, readable = self.get_record(key), True
        except NotFound:
            record, readable = None, True
        except Unavailable:
            record, readable = None, False
        if expected is None:
            landed = readable and record is None
        else:
            landed = record is not None and record.value == expected and record.etag not in excluded
        if landed:
            return record
        raise Indeterminate(0, "indeterminate", "a write of %r was sent and its answer lost, "
                            "then refused: it may have taken effect" % _key(key))

    # single keys
    def get(self, key) -> bytes:
        """The value of ``key``.

        :raises NotFound: (a KeyError) when the key is absent or expired.
        :raises InvalidKey: (a ValueError) for an invalid key.
        :raises Unavailable: when the service or the key's partitions are down.
        """
        return self._request("GET", self._path(key), headers={"Accept": RAW}).content

    def get_record(self, key) -> Record:
        """The value and metadata of ``key`` (:class:`Record`); errors as :meth:`get`."""
        response = self._request("GET", self._path(key), headers={"Accept": "application/json"})
        return Record.from_json(response.json(), response.headers.get("ETag"))

    def put(self, key, value, ttl: Optional[int] = None, if_match: Optional[str] = None,
            if_none_match: Optional[str] = None) -> Record:
        """Create or replace ``key``.

        After a lost answer or a 503 it is sent again: unconditional, it writes
        the same value again (the version counts both).  With a condition, a
        412 that follows is checked by reading the key: if it holds ``value``
        under an ETag that ``if_match`` does not name, the lost attempt is
        taken to have landed (or another writer stored the same bytes) and
        that record is returned; else :class:`Indeterminate` is raised (the
        lost attempt may have landed and been overwritten).

        :param value: bytes, or str (sent as UTF-8).
        :param int ttl: seconds until the key expires (1 to 315360000), or None.
        :param str if_match: an ETag (or ``"*"``): write only if it matches.
        :param str if_none_match: ``"*"``: write only if the key does not exist.
        :returns: the :class:`Record` written.
        :raises PreconditionFailed: when a condition does not hold.
        :raises TooLarge, BadRequest, InvalidKey, Unavailable, Indeterminate: see above.
        """
        data = _bytes(value)
        headers = {"Content-Type": RAW, "Accept": "application/json"}
        if if_match is not None:
            headers["If-Match"] = if_match
        if if_none_match is not None:
            headers["If-None-Match"] = if_none_match
        response, doubtful = self._write("PUT", self._path(key), data=data, headers=headers,
                                         params={"ttl": ttl} if ttl is not None else None)
        if response.status_code == 412 and doubtful:
            return self._resolve(key, data, _ETAG.findall(if_match or ""))
        return self._record(response, (200, 201))

    def set(self, key, value, ttl: Optional[int] = None, if_match: Optional[str] = None,
            if_none_match: Optional[str] = None) -> Record:
        """Sauropod's name for :meth:`put` (same arguments, answer and errors)."""
        return self.put(key, value, ttl, if_match, if_none_match)

    def create(self, key, value, ttl: Optional[int] = None) -> Record:
        """Create ``key``; never replaces (POST /keys).

        After a lost answer or a 503 it is sent again (it cannot overwrite); a
        409 that follows is checked by reading the key: if it holds ``value``,
        that record is returned, else :class:`Indeterminate` is raised.

        :raises Conflict: when the key exists.
        """
        data = _bytes(value)
        body = {"key": _key(key), "value": base64.b64encode(data).decode("ascii"),
                "encoding": "base64"}
        if ttl is not None:
            body["ttl"] = ttl
        response, doubtful = self._write("POST", self._keys, json=body,
                                         headers={"Accept": "application/json"})
        if response.status_code == 409 and doubtful:
            return self._resolve(key, data)
        return self._record(response, (201,))

    def _record(self, response, ok) -> Record:
        if response.status_code not in ok:
            raise error_for(response)
        return Record.from_json(response.json(), response.headers.get("ETag"))

    def compare_and_swap(self, key, etag: str, value) -> Record:
        """Replace ``key`` only if its current ETag is ``etag`` (atomic on the
        server); a lost answer is resolved as :meth:`put` says.

        :raises PreconditionFailed: when somebody wrote first (or the key is gone).
        """
        return self.put(key, value, if_match=etag)

    def delete(self, key, if_match: Optional[str] = None) -> None:
        """Delete ``key``.

        After a lost answer or a 503 it is sent again; a 404 that follows is
        success (the lost attempt deleted the key, or it was gone anyway).
        With ``if_match``, a 404 or 412 that follows is success if a read
        then finds the key absent, else :class:`Indeterminate` is raised.

        :raises NotFound: when the key is absent.
        :raises PreconditionFailed: when ``if_match`` does not match.
        """
        headers = {"If-Match": if_match} if if_match is not None else {}
        response, doubtful = self._write("DELETE", self._path(key), headers=headers)
        if doubtful and response.status_code == 404 and if_match is None:
            return
        if doubtful and response.status_code in (404, 412):
            self._resolve(key, None)
        elif response.status_code != 204:
            raise error_for(response)

    def __contains__(self, key) -> bool:
        try:
            self._request("HEAD", self._path(key), headers={"Accept": RAW})
        except NotFound:
            return False
        return True

    def __getitem__(self, key) -> bytes:
        return self.get(key)

    def __setitem__(self, key, value) -> None:
        self.put(key, value)

    def __delitem__(self, key) -> None:
        self.delete(key)

    def __iter__(self) -> Iterator[str]:
        return self.iter_keys()

    # listing
    def pages(self, prefix: Optional[str] = None, delimiter: Optional[str] = None,
              values: bool = False, limit: int = PAGE) -> Iterator[dict]:
        """The raw listing pages (dicts of API.md's JSON list), fetched lazily."""
        params = {"limit": limit}
        if prefix:
            params["prefix"] = prefix
        if delimiter:
            params["delimiter"] = delimiter
        if values:
            params["values"] = "true"
        while True:
            page = self._request("GET", self._keys, params=params,
                                 headers={"Accept": "application/json"}).json()
            yield page
            if not page["next"]:
                return
            params["cursor"] = page["next"]

    def iter_keys(self, prefix: Optional[str] = None) -> Iterator[str]:
        """Every live key starting with ``prefix``, in byte order, lazily."""
        for page in self.pages(prefix):
            for item in page["items"]:
                yield item["key"]

    def keys(self, prefix: Optional[str] = None) -> List[str]:
        """Every live key starting with ``prefix``, as a list."""
        return list(self.iter_keys(prefix))

    def iter_prefixes(self, delimiter: str, prefix: str = "") -> Iterator[str]:
        """Keys and common prefixes up to ``delimiter`` (kept), as S3 lists them."""
        for page in self.pages(prefix, delimiter):
            merged = [item["key"] for item in page["items"]] + page["prefixes"]
            yield from sorted(merged, key=lambda k: k.encode("utf-8"))

    def items(self, prefix: Optional[str] = None) -> Iterator[Tuple[str, bytes]]:
        """(key, value) of every live key starting with ``prefix``, lazily."""
        for item in self.records(prefix):
            yield item["key"], decode_value(item)

    def records(self, prefix: Optional[str] = None) -> Iterator[dict]:
        """The raw JSON items of a values=true listing: key, value, encoding,
        version, modified and expires (RFC 3339 UTC, or None: never)."""
        for page in self.pages(prefix, values=True):
            yield from page["items"]

    def iter_records(self, prefix: Optional[str] = None) -> Iterator[Record]:
        """Every live key starting with ``prefix`` as a :class:`Record`, with its
        value and expiry, lazily; ``etag`` and ``created`` are None (a listing
        does not carry them)."""
        return map(Record.from_json, self.records(prefix))

    def watch(self, prefix: str = "", since: str = "now", values: bool = False, wait: int = 30,
              cursor: Optional[str] = None, **options) -> Watcher:
        """Follow this bucket's change feed: ``for change in store.watch(prefix="cfg/")``
        yields each :class:`kvclient.watch.Change`, reconnecting and resuming by
        itself.  Arguments (``options``: restart, max_backoff, give_up_after, dedupe,
        limit), cursor and errors: :class:`kvclient.watch.Watcher`'s."""
        return Watcher(self, prefix, since, values, wait, cursor, **options)

    # many at once
    def batch(self, ops: List[dict]) -> List[dict]:
        """POST /batch (API.md): at most 1000 ops; returns one result dict per op.

        An op is API.md's dict (``{"op": "put", "key": "a", "value": ...}``,
        ``{"op": "get", "key": "b"}``, ``{"op": "delete", "key": "c"}``);
        a put's ``value`` may be bytes (sent as base64) or str (sent as
        UTF-8, or as its ``encoding`` says).  On a store opened with a
        ``bucket``, an op without ``"bucket"`` gets it.

        A result is ``{"status": int}`` plus ``"record"``, a :class:`Record`
        (its ``value`` bytes, as :meth:`get` returns; ``etag`` None: batch
        results carry none), or ``"error"``, API.md's error dict
        (``status``, ``code``, ``message``).  Per-op failures are results,
        not exceptions.  Not retried once sent.

        :raises BadRequest: for a malformed batch (nothing was applied).
        :raises Indeterminate: when the answer was lost (some ops may have been applied).
        """
        ops = [self._batch_op(op) for op in ops]
        response = self._request("POST", "/batch", json={"ops": ops},
                                 headers={"Accept": "application/json"})
        results = []
        for result in response.json()["results"]:
            result = dict(result)
            if result.get("record") is not None:
                result["record"] = Record.from_json(result["record"])
            results.append(result)
        return results

    def _batch_op(self, op: dict) -> dict:
        """``op`` as sent: the store's bucket added, a bytes value as base64."""
        if self.bucket is not None and "bucket" not in op:
            op = dict(op, bucket=self.bucket)
        if isinstance(op.get("value"), (bytes, bytearray, memoryview)):
            op = dict(op, value=base64.b64encode(op["value"]).decode("ascii"), encoding="base64")
        return op

    def health(self) -> dict:
        """The /health report (also when some partition is down): ``{"status":
        "ok" or "degraded", "partitions": [{"name", "engine", "up", "reason"}]}``.
        With authentication on, the service says only the status (API.md):
        ``partitions`` is then an empty list."""
        response = self._request("GET", "/health", ok=(200, 503))
        try:
            report = response.json()
        except ValueError:
            report = {}
        if not isinstance(report, dict) or "status" not in report:
            report = {"status": "ok" if response.status_code == 200 else "degraded"}
        report.setdefault("partitions", [])
        return report
