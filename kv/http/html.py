"""This module provides the ``text/html`` column of the table of
representations (API.md "HTML pages"): one renderer per payload kind, each
filling a web.py template of ``kv/http/templates/`` (``web.template``, which
escapes every ``$value``; only other templates' output is inserted raw).

Unlike the other columns, a page needs the request besides the payload: the
URL of the record or listing it shows (its links and forms), the query of a
listing (prefix, delimiter, limit), the caller (the CSRF token of the forms,
the "signed in as" line) and, for a DOCUMENT, which page the handler answers
(``web.ctx.kv_page``: ``home`` or ``deleted``; else a generic page).  The
renderers read these from ``web.ctx`` while mimerender renders the answer.

Links are absolute paths below the application's root (``web.ctx.homepath``);
keys are percent-encoded, with ``/`` kept as it is unless a segment is ``.``
or ``..`` (which browsers would remove from a path).
"""

import os
import urllib.parse
from typing import List, NamedTuple, Optional, Tuple

import web

from kv.http.errors import STATUS_TEXT
from kv.http.htmlforms import csrf_token
from kv.http.request import path_parts, query

#: The delimiter of a listing page when the query gives none (API.md "HTML pages").
PAGE_DELIMITER = "/"
HTML_MEDIA = "text/html"
TEMPLATES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "templates")


class Link(NamedTuple):
    """A link in a generic document page: its text and href."""
    text: str
    href: str


def link(path: str) -> str:
    """``path`` (absolute, already percent-encoded) below the application's root."""
    return web.ctx.get("homepath", "") + path


def listing_path(bucket: Optional[bytes]) -> str:
    """The path of a bucket's listing: ``/keys`` for None (the default bucket
    as ``/keys`` addresses it), else ``/buckets/{bucket}/keys``."""
    if bucket is None:
        return "/keys"
    return "/buckets/%s/keys" % urllib.parse.quote(bucket, safe=":@+~")


def record_path(bucket: Optional[bytes], key: bytes) -> str:
    """The path of one record (``key`` percent-encoded, see the module docstring)."""
    dots = any(segment in (b".", b"..") for segment in key.split(b"/"))
    return listing_path(bucket) + "/" + urllib.parse.quote(key, safe="" if dots else "/")


def listing_link(bucket: Optional[bytes], prefix: str = "", delimiter: str = PAGE_DELIMITER,
                 **args) -> str:
    """The link of a listing page: ``prefix`` and, when not the page's
    default, ``delimiter``; other query arguments (``cursor``, ``limit``)
    when not None."""
    fields = [("prefix", prefix)] if prefix else []
    if delimiter != PAGE_DELIMITER:
        fields.append(("delimiter", delimiter))
    fields += [(name, value) for name, value in args.items() if value is not None]
    return link(listing_path(bucket)) + ("?" + urllib.parse.urlencode(fields) if fields else "")


def listing_delimiter() -> str:
    """The ``delimiter`` of the current listing: the query's, else ``/`` for
    an HTML page and none for every other format (API.md "HTML pages")."""
    from kv.http.negotiation import negotiated_media      # negotiation imports this module's column
    default = PAGE_DELIMITER if negotiated_media() == HTML_MEDIA else ""
    return query().get("delimiter", default)


def who() -> Tuple[str, Optional[str]]:
    """(who the caller is, the sign-in link or None), for the page header.
    The sign-in link is ``/auth/whoami``, which asks an anonymous browser
    for credentials (401 with a Basic challenge)."""
    if not web.ctx.get("kv_auth"):
        return "authentication off", None
    access = web.ctx.get("access")
    caller = access.caller if access is not None and access.enabled else None
    if caller is None or not caller.authenticated:     # anonymous, or refused before
        return "not signed in", link("/auth/whoami")
    names = ["user:" + caller.user] if caller.user else []
    names += ["app:" + caller.app] if caller.app else []
    return "signed in as " + " + ".join(names), None


def _bucket_link(name: str) -> str:
    return link(listing_path(name.encode("ascii")))


class _Templates(web.template.Render):
    """web.py's template loader, except that a template does not set the
    Content-Type header itself (web.py sets ``text/html`` without charset for
    a ``.html`` file); the endpoint sets the HTML format's."""

    def _load_template(self, name):
        template = super()._load_template(name)
        template.content_type = None
        return template


_render = _Templates(TEMPLATES, cache=True, base="base", globals={
    "link": link, "who": who, "bucket_link": _bucket_link, "Link": Link,
    "isinstance": isinstance, "dict": dict, "list": list})


def _page(template: str, page) -> bytes:
    return str(getattr(_render, template)(page)).encode("utf-8")


def _rep():
    """kv.http.representations, imported on first use (it imports this module
    for its table)."""
    from kv.http import representations
    return representations


def _request_bucket() -> Optional[bytes]:
    """The bucket of a /keys... or /buckets/{bucket}/keys... path (None: /keys)."""
    return path_parts()[0]


def _folder_crumbs(bucket: Optional[bytes], text: str, delimiter: str) -> List[Tuple[str, str]]:
    """(label, link) of the bucket's root and of each folder of ``text`` up
    to its last ``delimiter``."""
    crumbs = [((bucket or b"default").decode("ascii"), listing_link(bucket, "", delimiter))]
    if delimiter:
        parts = text.split(delimiter)[:-1]
        for i, part in enumerate(parts):
            crumbs.append((part, listing_link(
                bucket, delimiter.join(parts[:i + 1]) + delimiter, delimiter)))
    return crumbs


# -- the renderers (one per payload kind) ---------------------------------------

class _RecordPage(NamedTuple):
    key: str
    url: str
    crumbs: list
    text: Optional[str]
    size: int
    download: str
    version: int
    created: str
    modified: str
    expires: Optional[str]
    etag: str
    csrf: Optional[str]
    lf: bool


def record_page(record) -> bytes:
    """A record: its value as text (escaped), or, when the value is not
    UTF-8, its size and a ``?format=raw`` download link; its metadata; the
    edit form (POST ``_method=PUT``) and the delete button (``_method=DELETE``),
    both with the shown ETag as ``_etag`` and the caller's ``_csrf``."""
    rep = _rep()
    bucket = _request_bucket()
    key = record.key.decode("utf-8")
    url = link(record_path(bucket, record.key))
    text, encoding = rep.text_of(record.value)
    text = text if encoding == "utf-8" else None
    return _page("record", _RecordPage(
        key, url, _folder_crumbs(bucket, key, "/"), text, len(record.value),
        url + "?format=raw", record.version, rep.timestamp(record.created_us),
        rep.timestamp(record.modified_us), rep.timestamp(record.expires_us), record.etag,
        csrf_token(web.ctx.access), b"\r" not in record.value))


class _ListingPage(NamedTuple):
    title: str
    crumbs: list
    base: str
    prefix: str
    delimiter: str
    folders: list
    keys: list
    next: Optional[str]
    unavailable: str


def listing_page(listing) -> bytes:
    """A listing: the prefixes as folder links, the keys as record links
    (each shown without the prefix the page is in), a next-page link, a
    search-by-prefix form (GET) and a new-key form (POST to the listing)."""
    rep = _rep()
    bucket = _request_bucket()
    q = query()
    prefix, delimiter = q.get("prefix", ""), q.get("delimiter", PAGE_DELIMITER)
    limit = q.get("limit")
    shown_from = (len(prefix.rpartition(delimiter)[0] + delimiter)
                  if delimiter and delimiter in prefix else 0)
    folders = [(p.decode("utf-8")[shown_from:],
                listing_link(bucket, p.decode("utf-8"), delimiter, limit=limit))
               for p in listing.prefixes]
    keys = [(r.key.decode("utf-8")[shown_from:] or r.key.decode("utf-8"),
             link(record_path(bucket, r.key)), r.version, rep.timestamp(r.modified_us),
             rep.timestamp(r.expires_us)) for r in listing.items]
    name = (bucket or b"default").decode("ascii")
    crumbs = []
    if prefix:
        crumbs = _folder_crumbs(bucket, prefix, delimiter)
        last = prefix[shown_from:]
        crumbs = crumbs[:-1] + [(crumbs[-1][0], None)] if not last else crumbs + [(last, None)]
    next_link = (listing_link(bucket, prefix, delimiter, limit=limit, cursor=listing.next)
                 if listing.next else None)
    return _page("listing", _ListingPage(
        name + (": " + prefix if prefix else ""), crumbs, link(listing_path(bucket)), prefix,
        delimiter, folders, keys, next_link,
        ", ".join(listing.unavailable)))


class _ErrorPage(NamedTuple):
    status: int
    reason: str
    code: str
    message: str
    again: Optional[str]
    again_label: str


def error_page(error) -> bytes:
    """An error: status, reason, message and code; after a failed form post
    to a record or listing (a 412 of a stale ETag), a link to that page."""
    status, code, message = error
    again = None
    path = web.ctx.get("path", "")
    if web.ctx.get("method") == "POST" and (path == "/keys" or path.startswith("/keys/")
                                            or path.startswith("/buckets/")):
        try:
            bucket, key = path_parts()
            again = link(record_path(bucket, key) if key else listing_path(bucket))
        except Exception:                  # a path that holds no valid bucket: no link
            again = None
    return _page("error", _ErrorPage(status, STATUS_TEXT.get(status, ""), code, message, again,
                                     "the record" if again and "/keys/" in again else "the page"))


class _HealthPage(NamedTuple):
    ok: bool
    partitions: list


def health_page(report) -> bytes:
    """Partition health: each partition's name, engine and up or down (with the reason)."""
    return _page("health", _HealthPage(all(not reason for _, _, reason in report), report))


class _DocumentPage(NamedTuple):
    title: str
    document: object
    next: Optional[str]


class _Deleted(NamedTuple):
    key: str
    bucket: str
    listing: str


def _linked(document):
    """The document with ``bucket`` members made links to the bucket's listing."""
    if isinstance(document, dict):
        return {name: Link(value, _bucket_link(value))
                if name == "bucket" and isinstance(value, str) and ":*" not in value
                else _linked(value) for name, value in document.items()}
    if isinstance(document, list):
        return [_linked(item) for item in document]
    return document


def document_page(document) -> bytes:
    """A JSON document (``/buckets``, ``/auth/...``, cross-bucket reads): the
    home page when ``web.ctx.kv_page`` is ``home``, the deletion page of a
    form's DELETE when it is ``deleted``, else the document as nested lists,
    bucket names as links to their listing and ``next`` as a next-page link."""
    kind = web.ctx.get("kv_page")
    if kind == "home":
        return _page("home", document)
    if kind == "deleted":
        bucket = _request_bucket()
        folder = document["deleted"].rpartition(PAGE_DELIMITER)[0]
        return _page("deleted", _Deleted(document["deleted"], document["bucket"], listing_link(
            bucket, folder + PAGE_DELIMITER if folder else "")))
    body = dict(document)
    next_link = None
    if isinstance(body.get("next"), str):
        args = dict(query(), cursor=body.pop("next"))
        next_link = link(urllib.parse.quote(web.ctx.path)) + "?" + urllib.parse.urlencode(args)
    elif "next" in body and body["next"] is None:
        body.pop("next")
    title = web.ctx.get("path", "/") or "/"
    return _page("document", _DocumentPage(title, _linked(body), next_link))
