"""This module provides :class:`Watcher`, a follower of one bucket's change
feed (API.md "Change feed (watch)"), as :meth:`kvclient.Store.watch`
returns it, and :class:`Change` and :class:`Page`, what it hands out.

    >>> for change in store.watch(prefix="config/"):
    ...     print(change.key, change.version, change.deleted)

The watcher long-polls ``GET /changes`` (or ``/buckets/{bucket}/changes``)
in a loop, always from the ``next`` cursor of the last answer:

- Reconnection: a connection failure, a lost answer, a 502, 503 or 504 (a
  server restarting, a partition down, too many long polls on a worker) is
  retried after a pause that starts at ``BACKOFF_SECONDS`` and doubles up to
  ``max_backoff`` seconds, or as long as the answer's ``Retry-After`` says;
  the request is sent again from the same cursor, so a server that was
  restarted delivers what changed while it was away (the cursor is held by
  the client; the server keeps no state per watcher).  The first failure
  and the recovery are logged (logger ``kvclient.watch``, WARNING).
- Delivery is at least once (API.md): an entry may come again (same key,
  version and time); the watcher drops an entry whose exact state it handed
  out among the last ``DEDUPE_ENTRIES``, never a newer one.  Several writes
  of one key may arrive as one entry, its newest state.
- Resumption: :attr:`Watcher.cursor`, each :attr:`Change.cursor` and each
  :attr:`Page.cursor` are opaque strings to persist; passing one back as
  ``cursor=`` (or ``since=``) resumes there.
- Expiry: a cursor older than the server's tombstone window answers 410;
  the watcher raises :class:`kvclient.errors.CursorExpired`, or with
  ``restart=True`` logs it and starts again from ``now`` (the changes in
  between are then not delivered).

Other errors end the iteration with the client's exceptions: 400
(:class:`~kvclient.errors.BadRequest`: a malformed or another bucket's
cursor), 401/403 (:class:`~kvclient.errors.Unauthorized`,
:class:`~kvclient.errors.Forbidden`; the feed needs ``list``, and ``read``
for ``values=True``), a 500 (:class:`~kvclient.errors.ServerError`).
"""

import collections
import dataclasses
import datetime
import logging
import threading
import time
from typing import Iterator, List, Optional

import requests

from kvclient.errors import CursorExpired, KVError, ServerError, Unavailable, error_for
from kvclient.records import decode_value, parse_time
from kvclient.tenants import segment

__all__ = ["Watcher", "Change", "Page"]

log = logging.getLogger("kvclient.watch")

BACKOFF_SECONDS = 0.2          # the first pause after a failure; doubled each time
MAX_BACKOFF_SECONDS = 5.0      # the longest pause between two attempts (default)
DEDUPE_ENTRIES = 10000         # (key, version, modified) remembered to drop repeats
PAGE_LIMIT = 1000              # entries per page asked for (API.md: 1 to 1000)
#: Statuses after which the same request is sent again (0: no answer at all).
RETRIED = (0, 429, 502, 503, 504)


@dataclasses.dataclass(frozen=True)
class Change:
    """One entry of the change feed: the state of ``key`` when the server read it.

    :ivar str key: the key.
    :ivar int version: its version (API.md: +1 on every write of the key).
    :ivar datetime.datetime modified: when it was written or deleted (aware, UTC).
    :ivar bool deleted: True for a delete (a tombstone).
    :ivar expires: when it expires (aware UTC datetime), or None: never.
    :ivar value: bytes with ``values=True`` for a key that is not deleted
        (and that the caller may ``read``), else None.
    :ivar str cursor: where to resume once this change is handled: resuming
        there never skips a change that comes after it (it may repeat some).
    """
    key: str
    version: int
    modified: datetime.datetime
    deleted: bool
    expires: Optional[datetime.datetime]
    value: Optional[bytes]
    cursor: str


@dataclasses.dataclass(frozen=True)
class Page:
    """One answer of the feed, repeats already dropped.

    :ivar list changes: the :class:`Change` objects (maybe none: a long poll
        that timed out, or only repeats).
    :ivar str cursor: the answer's ``next``: where to resume once every
        change of the page is handled.  Persist it after empty pages too: the
        server refreshes the cursor's age in them, so that a feed that stays
        quiet longer than the tombstone window does not expire.
    :ivar bool complete: False when a partition could not be read (its
        entries come in a later page).
    """
    changes: List[Change]
    cursor: str
    complete: bool


class Watcher:
    """Follows a bucket's change feed; iterate it for :class:`Change`
    objects, or call :meth:`pages` for whole pages.  See the module
    docstring for reconnection, repeats and expiry.

    With ``since="now"`` the starting position is fixed when the watcher is
    made (one immediate request), so every change committed after
    :meth:`kvclient.Store.watch` returns is delivered, even if iteration
    starts later; if the service cannot be reached then, the position is
    fixed by the first request that succeeds.

    :param store: the :class:`kvclient.Store` whose bucket, URL, credentials
        and ``timeout`` (seconds, to connect; added to ``wait`` for each
        answer) are used.  The watcher has its own HTTP connection.
    :param str prefix: only keys starting with it ("" for all).
    :param str since: ``"now"`` (only changes from now on), ``"0"``
        (everything still retained) or a cursor kept from before.
    :param bool values: deliver each value too (needs the ``read`` verb).
    :param int wait: seconds each long poll may be held, 1 to 30.
    :param str cursor: a kept cursor; when not None it wins over ``since``
        (so ``cursor=load_saved_or_none()`` works on a first run too).
    :param bool restart: on 410 start again from ``"now"`` (logged) instead
        of raising :class:`CursorExpired`.
    :param float max_backoff: the longest pause between two attempts (seconds).
    :param float give_up_after: raise :class:`Unavailable` once the service
        has failed for this many seconds in a row; None (default): never.
    :param bool dedupe: drop repeats of a state already handed out.
    :param int limit: entries per page, 1 to 1000.
    :raises ValueError: for a ``wait`` or ``limit`` out of range.
    :raises BadRequest, Unauthorized, Forbidden, CursorExpired: when fixing
        the starting position is refused.
    """

    def __init__(self, store, prefix: str = "", since: str = "now", values: bool = False,
                 wait: int = 30, cursor: Optional[str] = None, *, restart: bool = False,
                 max_backoff: float = MAX_BACKOFF_SECONDS,
                 give_up_after: Optional[float] = None, dedupe: bool = True,
                 limit: int = PAGE_LIMIT):
        if not (isinstance(wait, int) and 1 <= wait <= 30):
            raise ValueError("wait is a whole number of seconds from 1 to 30, not %r" % (wait,))
        if not (isinstance(limit, int) and 1 <= limit <= 1000):
            raise ValueError("limit is a whole number from 1 to 1000, not %r" % (limit,))
        self.url = store.url + ("/changes" if store.bucket is None
                                else "/buckets/%s/changes" % segment(store.bucket))
        self.prefix, self.values, self.wait, self.limit = prefix or "", values, wait, limit
        self.restart, self.max_backoff, self.give_up_after = restart, max_backoff, give_up_after
        self.timeout = store.timeout
        self.session = requests.Session()
        for name in ("auth", "headers", "verify", "cert", "proxies", "trust_env"):
            setattr(self.session, name, getattr(store.session, name))
        self._seen = collections.OrderedDict() if dedupe else None
        self._stopped = threading.Event()
        #: False after a page that could not read every partition.
        self.complete = True
        #: how many times a 410 made the watcher start again from "now".
        self.restarts = 0
        self._position = cursor if cursor is not None else (since or "now")
        #: Where to resume without skipping anything the caller has not
        #: finished with: the cursor of the last change handed out, or the
        #: ``next`` of the last page once the caller asks for more.
        self.cursor = self._position
        if self._position == "now":
            try:
                self._position = self.cursor = self._fetch("now", None, retry=False)["next"]
            except Unavailable as e:
                log.warning("%s; the feed starts when the service answers", e)

    # iteration
    def __iter__(self) -> Iterator[Change]:
        for page in self.pages():
            for change in page.changes:
                self.cursor = change.cursor
                yield change

    def pages(self) -> Iterator[Page]:
        """The feed page by page, forever (until :meth:`stop`): each long
        poll's answer, empty ones included.

        :raises CursorExpired: on 410 (unless ``restart``).
        :raises BadRequest, Unauthorized, Forbidden, ServerError: as the module says.
        :raises Unavailable: once ``give_up_after`` seconds of failures have passed.
        """
        while not self._stopped.is_set():
            try:
                if self._position == "now":       # never hand out "now" as a resume point
                    doc = self._fetch("now", None)
                    if doc is not None:
                        self._position = self.cursor = doc["next"]
                    continue
                since = self._position
                doc = self._fetch(since, self.wait)
            except CursorExpired as e:
                if not self.restart:
                    raise
                log.warning("the cursor expired (%s); starting again from now (changes in "
                            "between are not shown)", e.message)
                self.restarts += 1
                self._position = "now"
                continue
            if doc is None:
                return
            changes = [change for change in self._changes(doc["changes"], since, doc["next"])
                       if self._fresh(change)]
            if doc.get("complete", True) != self.complete:
                self.complete = doc.get("complete", True)
                if not self.complete:
                    log.warning("a partition could not be read; its changes come later")
            self._position = doc["next"]
            yield Page(changes, doc["next"], self.complete)
            self.cursor = doc["next"]

    def _changes(self, entries: list, since: str, after: str) -> List[Change]:
        """The API's entries as :class:`Change` objects; the last carries
        ``after`` (the page's ``next``), the others ``since``."""
        out = []
        for i, entry in enumerate(entries):
            value = decode_value(entry) if "value" in entry else None
            out.append(Change(entry["key"], entry["version"], parse_time(entry["modified"]),
                              bool(entry.get("deleted")), parse_time(entry.get("expires")),
                              value, after if i == len(entries) - 1 else since))
        return out

    def _fresh(self, change: Change) -> bool:
        """False for a repeat of a state handed out among the last
        DEDUPE_ENTRIES (never for a newer state of the key)."""
        if self._seen is None:
            return True
        state = (change.key, change.version, change.modified, change.deleted)
        if state in self._seen:
            self._seen.move_to_end(state)
            return False
        self._seen[state] = None
        if len(self._seen) > DEDUPE_ENTRIES:
            self._seen.popitem(last=False)
        return True

    # transport
    def _fetch(self, since: str, wait: Optional[int], retry: bool = True) -> Optional[dict]:
        """One page from ``since`` (a long poll of ``wait`` seconds, None:
        at once), sent again after failures the module docstring lists.

        :returns: the answer's JSON document, or None once :meth:`stop` was called.
        :raises KVError: a refusal (or with ``retry`` False, any failure).
        """
        params = {"since": since, "limit": self.limit}
        if self.prefix:
            params["prefix"] = self.prefix
        if self.values:
            params["values"] = "true"
        if wait:
            params["wait"] = wait
        delay, failing_since = BACKOFF_SECONDS, None
        while not self._stopped.is_set():
            answer = self._get(params, (wait or 0) + self.timeout)
            if not isinstance(answer, KVError):
                if failing_since is not None:
                    log.warning("the change feed answers again (after %.1f s)",
                                time.monotonic() - failing_since)
                return answer
            error = answer
            if self._stopped.is_set():
                return None
            if not retry or error.status not in RETRIED:
                raise error
            now = time.monotonic()
            if failing_since is None:
                failing_since = now
                log.warning("%s; retrying from the same cursor", error)
            if self.give_up_after is not None and now - failing_since >= self.give_up_after:
                raise error
            pause = getattr(error, "retry_after", None) or delay
            self._stopped.wait(pause)
            delay = min(delay * 2, self.max_backoff)
        return None

    def _get(self, params: dict, read_seconds: float):
        """Send one request; returns its JSON document, or the KVError it
        amounts to (status 0: no answer)."""
        try:
            response = self.session.get(self.url, params=params,
                                        headers={"Accept": "application/json"},
                                        timeout=(self.timeout, read_seconds))
        except requests.RequestException as e:
            return Unavailable(0, "no_connection", "cannot reach %s: %s" % (self.url, e))
        if response.status_code != 200:
            return error_for(response)
        try:
            doc = response.json()
            doc["changes"], doc["next"]
        except (ValueError, KeyError, TypeError):
            return ServerError(200, "bad_answer", "the change feed answered something else "
                               "than its JSON document: %r" % response.text[:200])
        return doc

    # ending
    def stop(self) -> None:
        """End the iteration (from any thread): after the long poll in
        flight returns (within ``wait`` seconds), or at once during a pause."""
        self._stopped.set()

    def close(self) -> None:
        """:meth:`stop`, then close the watcher's connection."""
        self.stop()
        self.session.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
