"""This module provides the routes and answers that exist for the HTML pages
(API.md "HTML pages"): the home page ``/`` (:class:`Home`) and the answer of
an HTML form's DELETE (:func:`deleted_answer`).  Both answer a DOCUMENT, so a
client that asks for JSON or XML gets the same facts as data; the HTML
column (:mod:`kv.http.html`) draws them as a page.
"""

import urllib.parse
from typing import List, Tuple

import web

from kv.http.errors import HTTPProblem
from kv.http.negotiation import endpoint
from kv.http.representations import DOCUMENT

#: Buckets the home page shows; the rest are one "more buckets" link away (/buckets).
HOME_BUCKETS = 100


def _may_admin(access) -> bool:
    try:
        access.require_admin()
        return True
    except HTTPProblem:
        return False


class Home:
    """``/``: what the service holds.  The document is ``{"status": "ok" or
    "degraded", "partitions": [{"name", "engine", "up", "reason"}], "buckets":
    [names], "more_buckets": "/buckets?cursor=..." or null}``: the buckets
    holding a live key that the caller may list in (as ``GET /buckets``),
    the first HOME_BUCKETS of them.  With authentication on, ``partitions``
    is left out unless the caller has ``admin`` (as ``/health`` then tells
    only the status); anyone may open the page, which then shows what the
    caller may list (nothing for an anonymous caller without rules)."""

    PARAMETERS = {"GET": ()}

    @staticmethod
    def guard(access, method):
        pass

    @endpoint(DOCUMENT)
    def GET(self, *_):
        store = web.ctx.store
        access = web.ctx.access
        report = store.health()
        page = store.buckets(b"", None, HOME_BUCKETS,
                             lambda bucket: access.may_some("list", bucket.decode(), b""))
        sealed = access.seal(page.next)
        document = {"status": "degraded" if any(reason for _, _, reason in report) else "ok"}
        if not access.enabled or _may_admin(access):
            document["partitions"] = [{"name": name, "engine": engine, "up": not reason,
                                       "reason": reason} for name, engine, reason in report]
        document["buckets"] = [bucket.decode("ascii") for bucket in page.items]
        document["more_buckets"] = ("/buckets?" + urllib.parse.urlencode({"cursor": sealed})
                                    if sealed else None)
        headers: List[Tuple[str, str]] = []
        if page.unavailable:
            headers.append(("X-Partitions-Unavailable", ", ".join(page.unavailable)))
        web.ctx.kv_page = "home"
        return {DOCUMENT: document}, 200, headers


def deleted_answer(bucket: bytes, key: bytes):
    """The payload of an HTML form's DELETE: ``{"deleted": key, "bucket":
    bucket}`` (a DOCUMENT; the HTML page says the key is deleted and links
    to the listing)."""
    web.ctx.kv_page = "deleted"
    return {DOCUMENT: {"deleted": key.decode("utf-8"), "bucket": bucket.decode("ascii")}}
