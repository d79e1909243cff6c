"""This module provides GET /openapi.json (API.md "Resources"): the OpenAPI
3.1 document of the HTTP API, kept in one file beside this module
(``openapi.json``; test/test_openapi.py checks it against the routes and
runs schemathesis against a live service).

The file is read and compacted once per process; every answer sends the
same bytes with a strong ``ETag`` (a digest of them), and
``If-None-Match`` gives 304.  The document is JSON only, so it is answered
whenever JSON is acceptable at all (a browser's ``Accept: text/html, ...,
*/*;q=0.8`` gets it), and ``?format=`` or an ``Accept`` that rules JSON
out gets 406.  It needs no credentials (its guard allows everyone), as
API.md "Authentication" says.
"""

import functools
import hashlib
import json
import os
from typing import Tuple

import mimeparse
import orjson
import web

from kv.errors import InvalidRequest
from kv.http.bodies import etag_list
from kv.http.errors import HTTPProblem
from kv.http.negotiation import render_problem
from kv.http.request import query
from kv.records import weak_match

#: The document's file: the one place the contract is written as OpenAPI.
DOCUMENT_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "openapi.json")
MEDIA_TYPE = "application/json"


def load_document(path: str = DOCUMENT_PATH) -> dict:
    """The OpenAPI document as a dict.

    :raises OSError: when the file cannot be read; ValueError when it is not JSON.
    """
    with open(path, encoding="utf-8") as f:
        return json.load(f)


@functools.lru_cache(maxsize=1)
def _served() -> Tuple[bytes, str]:
    """(compact UTF-8 JSON bytes, strong ETag) of the document, built once."""
    body = orjson.dumps(load_document())
    return body, '"%s"' % hashlib.sha256(body).hexdigest()[:32]


def json_acceptable() -> bool:
    """Whether this request may be answered with JSON: ``?format=json``, or
    no ``?format=`` and an ``Accept`` that gives application/json a quality
    above 0 (RFC 9110 section 12.5.1; none at all accepts anything).  The
    processor has refused a malformed Accept or format already."""
    fmt = query().get("format")
    if fmt is not None:
        return fmt == "json"
    accept = web.ctx.env.get("HTTP_ACCEPT", "").strip()
    try:
        return not accept or mimeparse.quality(MEDIA_TYPE, accept.lower()) > 0
    except (ValueError, mimeparse.MimeTypeParseException):
        return False


class OpenAPIDocument:
    """/openapi.json: GET the OpenAPI 3.1 document (application/json)."""

    PARAMETERS = {"GET": ()}

    @staticmethod
    def guard(access, method):
        pass

    def GET(self, *_):
        if not json_acceptable():
            return render_problem(HTTPProblem(
                406, "not_acceptable", "the OpenAPI document is JSON only; ask for %s" % MEDIA_TYPE))
        body, etag = _served()
        if_none_match = web.ctx.env.get("HTTP_IF_NONE_MATCH")
        try:
            tags = etag_list(if_none_match) if if_none_match is not None else ()
        except InvalidRequest as e:
            return render_problem(e)
        web.ctx.headers.extend([("Content-Type", MEDIA_TYPE), ("ETag", etag), ("Vary", "Accept")])
        if tags == "*" or weak_match(etag, tags):
            web.ctx.status = "304 Not Modified"      # the processor sends no body
            return b""
        web.ctx.status = "200 OK"
        return body
