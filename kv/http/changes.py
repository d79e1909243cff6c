"""This module provides ``GET /changes`` and ``GET /buckets/{bucket}/changes``
(API.md "Change feed (watch)"): the query parameters, the permissions (the
feed is filtered as a listing is), the sealing of the cursor when
authentication is on, and the answer document.  The feed itself is the
data layer's (kv.cluster.changes).
"""

import re
from typing import Optional

import web

from kv.cluster.changes import MAX_WAIT_SECONDS
from kv.errors import InvalidRequest
from kv.http.negotiation import endpoint
from kv.http.paging import page_args, values_arg
from kv.http.representations import DOCUMENT, text_of, timestamp
from kv.http.request import path_bucket_key, query


def entry_json(record, with_value: bool) -> dict:
    """One change as API.md's object: key, version, modified, deleted,
    expires; with ``with_value``, value and encoding of a key that is not
    deleted and that the caller may read (``record.value`` None: it may not)."""
    out = {"key": record.key.decode("utf-8"), "version": record.version,
           "modified": timestamp(record.modified_us), "deleted": record.deleted,
           "expires": timestamp(record.expires_us)}
    if with_value and not record.deleted and record.value is not None:
        out["value"], out["encoding"] = text_of(record.value, for_xml=True)
    return out


def _wait() -> Optional[int]:
    """The ``wait`` parameter: whole seconds, 1 to MAX_WAIT_SECONDS, or None.

    :raises InvalidRequest: for anything else.
    """
    raw = query().get("wait")
    if raw is None:
        return None
    if not re.fullmatch(r"[0-9]{1,5}", raw) or not 1 <= int(raw) <= MAX_WAIT_SECONDS:
        raise InvalidRequest("wait must be a whole number from 1 to %d" % MAX_WAIT_SECONDS)
    return int(raw)


class Changes:
    """/changes and /buckets/{bucket}/changes: GET a page of the bucket's
    change feed; ``wait`` makes it a long poll (at most
    ``[server] max_watchers`` per worker process, else 503 + Retry-After)."""

    PARAMETERS = {"GET": ("since", "prefix", "limit", "values", "wait")}

    @staticmethod
    def guard(access, method):
        bucket, _ = path_bucket_key()
        access.require_some("list", bucket.decode(), query().get("prefix", "").encode())

    @endpoint(DOCUMENT)
    def GET(self, *_):
        bucket, _ = path_bucket_key()
        q = query()
        values = values_arg()
        limit, _ = page_args()                # the feed's position is ``since``, not ``cursor``
        wait = _wait()
        access = web.ctx.access
        since = q.get("since", "now")
        if since not in ("now", "0"):
            since = access.unseal(since)
        visible = (lambda key: access.may("list", bucket, key)) if access.enabled else None
        page = web.ctx.store.changes(bucket, since, q.get("prefix", "").encode("utf-8"), limit,
                                     values, visible, wait)
        changes = page.changes
        if values and access.enabled:
            changes = [r if access.may("read", bucket, r.key) else r._replace(value=None)
                       for r in changes]
        headers = [("Cache-Control", "no-store")]
        if page.unavailable:
            headers.append(("X-Partitions-Unavailable", ", ".join(page.unavailable)))
        return {DOCUMENT: {"changes": [entry_json(r, values) for r in changes],
                           "next": access.seal(page.cursor.encode()),
                           "complete": page.complete}}, 200, headers
