"""This module provides GET /openapi.json (API.md "Resources"): the OpenAPI
3.1 document of the HTTP API, kept in one file beside this module
(``openapi.json``; test/test_openapi.py checks it against the routes and
runs schemathesis against a live service).

The file is read and compacted once per process; every answer sends the
same bytes with a strong ``ETag`` (a digest of them), and
``If-None-Match`` gives 304.  The document is JSON only: ``Accept`` or
``?format=`` asking for anything else is 406.  It needs no credentials
(its guard allows everyone), as API.md "Authentication" says.
"""

import functools
import hashlib
import json
import os
from typing import Tuple

import orjson
import web

from kv.http.bodies import etag_list
from kv.http.errors import HTTPProblem
from kv.http.negotiation import endpoint, negotiated_media
from kv.http.representations import DOCUMENT, EMPTY
from kv.records import weak_match

#: The document's file: the one place the contract is written as OpenAPI.
DOCUMENT_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "openapi.json")


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


class OpenAPIDocument:
    """/openapi.json: GET the OpenAPI 3.1 document (application/json)."""

    PARAMETERS = {"GET": ()}

    @staticmethod
    def guard(access, method):
        pass

    @endpoint(DOCUMENT)
    def GET(self, *_):
        if negotiated_media() != "application/json":
            raise HTTPProblem(406, "not_acceptable",
                              "the OpenAPI document is JSON only; ask for application/json")
        body, etag = _served()
        headers = [("ETag", etag)]
        if_none_match = web.ctx.env.get("HTTP_IF_NONE_MATCH")
        if if_none_match is not None:
            tags = etag_list(if_none_match)
            if tags == "*" or weak_match(etag, tags):
                return {EMPTY: True}, 304, headers
        # orjson.Fragment: the JSON renderer writes the cached bytes as they are.
        return {DOCUMENT: orjson.Fragment(body)}, 200, headers
