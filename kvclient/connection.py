"""This module provides what a :class:`kvclient.Store` needs to reach the
service before any request: the service URL (:func:`service_url`, which
takes ``localhost:8080`` as ``http://localhost:8080``) and the
``Authorization`` header of its credentials (:func:`authorization`).
"""

import base64
import re
import urllib.parse
from typing import Optional

import requests.auth

__all__ = ["service_url", "authorization"]

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def service_url(text: str) -> str:
    """The base URL of the service from what a person typed: ``http://`` is
    assumed when there is no scheme (``localhost:8080``, ``kv.example:80/base``);
    a trailing ``/`` is dropped.

    :returns: ``scheme://host[:port][/path]`` (str).
    :raises ValueError: (naming the URL and the problem) when it is empty, its
        scheme is not http or https, it has no host, its port is not a number
        from 1 to 65535, or it carries a query, a fragment or user:password
        (credentials go in ``token=``/``user=``, where they are not logged).
    """
    text = (text or "").strip()
    if not text:
        raise ValueError("the service URL is empty")
    url = text if _SCHEME.match(text) else "http://" + text
    parts = urllib.parse.urlsplit(url)
    problem = None
    if parts.scheme.lower() not in ("http", "https"):
        problem = "the scheme must be http or https, not %r" % parts.scheme
    elif not parts.hostname:
        problem = "it has no host name"
    elif parts.username is not None or parts.password is not None:
        problem = "give credentials with a token or a user, not in the URL"
    elif parts.query or parts.fragment or url.endswith(("?", "#")):
        problem = "it has a query or a fragment"
    else:
        try:
            port = parts.port
        except ValueError:
            port = 0
        if port == 0:
            problem = "its port is not a number from 1 to 65535"
    if problem:
        raise ValueError("unusable service URL %r: %s (e.g. http://127.0.0.1:8080)"
                         % (text, problem))
    return url.rstrip("/")


class _Authorization(requests.auth.AuthBase):
    """Sets one ``Authorization`` header on every request (and keeps requests
    from looking in ~/.netrc, or encoding a Basic password as Latin-1)."""

    def __init__(self, value: str):
        self.value = value

    def __call__(self, request):
        request.headers["Authorization"] = self.value
        return request


def authorization(token: Optional[str], user: Optional[str],
                  password: Optional[str]) -> Optional[requests.auth.AuthBase]:
    """The requests ``auth`` that sends these credentials: ``Bearer token``,
    or HTTP Basic of ``user`` and ``password`` in UTF-8 (RFC 7617 section 2.1);
    None for no credentials.

    :raises ValueError: when both a token and a user are given, or a password without a user.
    """
    if token is not None and user is not None:
        raise ValueError("give a token or a user and password, not both")
    if user is None and password is not None:
        raise ValueError("a password needs a user")
    if token is not None:
        return _Authorization("Bearer " + token)
    if user is not None:
        pair = ("%s:%s" % (user, password or "")).encode("utf-8")
        return _Authorization("Basic " + base64.b64encode(pair).decode("ascii"))
    return None
