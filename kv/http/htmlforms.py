"""This module provides what the HTML pages' forms send (API.md "HTML pages").
HTML can only ``GET`` and ``POST``, so the record page's edit and delete
forms ``POST`` an ``application/x-www-form-urlencoded`` body to the record's
own URL with ``_method`` (``PUT`` or ``DELETE``), ``_etag`` (the ETag the page
showed, applied as ``If-Match``), ``value`` and ``ttl`` for a PUT, and
``_csrf`` when authentication is on.  :func:`read_form` parses and checks such
a body; :func:`csrf_token` makes the token a page puts into its forms.

CSRF (cross-site request forgery): a browser sends its Basic credentials
with any form post, including one that another site's page makes it send.
The token is an HMAC-SHA256 (RFC 2104) of the caller's credential (its
token id, else its user name) under a key derived from the service's
secret in the ``_auth`` bucket (the one that seals listing cursors), so
another site cannot know it and every web node computes the same one.
"""

import hashlib
import hmac
import urllib.parse
from typing import NamedTuple, Optional

from kv.errors import InvalidRequest, ValueTooLarge
from kv.http.bodies import parse_ttl, structured_limit
from kv.http.errors import HTTPProblem
from kv.http.request import read_body, request_media_type
from kv.records import Condition

FORM_TYPE = "application/x-www-form-urlencoded"
#: The methods a form may ask for with ``_method``.
FORM_METHODS = ("PUT", "DELETE")
#: What a record URL allows (a form POST is a PUT or DELETE, not a method of its own).
RECORD_ALLOW = "GET, HEAD, PUT, DELETE"
_FIELDS = {"_method", "_etag", "_csrf", "_eol", "value", "ttl"}
_CSRF_CONTEXT = b"kv html form csrf v1"


class FormRequest(NamedTuple):
    """A parsed form post: ``method`` PUT or DELETE, ``condition`` (If-Match
    of ``_etag``, or none when it is empty), ``value`` (UTF-8 bytes; None for
    DELETE) and ``ttl`` (seconds or None)."""
    method: str
    condition: Condition
    value: Optional[bytes]
    ttl: Optional[int]


def method_not_allowed() -> HTTPProblem:
    """The 405 of a POST to a record URL that is not a form's PUT or DELETE;
    ``Allow`` does not list POST (API.md "HTML pages")."""
    return HTTPProblem(405, "method_not_allowed",
                       "POST is not allowed here (an HTML form posts _method=PUT or "
                       "_method=DELETE as application/x-www-form-urlencoded)",
                       [("Allow", RECORD_ALLOW)])


def csrf_token(access) -> Optional[str]:
    """The CSRF token of the current caller, for the ``_csrf`` field of a
    form; None when authentication is off (no token is needed then).

    :param access: the request's :class:`kv.http.access.Access`.
    :returns: 64 hex characters, the same on every node and for every
        request with the same credential.
    :raises PartitionUnavailable: when the secret in ``_auth`` cannot be read.
    """
    if not access.enabled:
        return None
    if access.token is not None:
        binding = "token:" + access.token.id
    elif access.caller.user is not None:
        binding = "user:" + access.caller.user
    else:
        binding = "anyone"
    key = hmac.new(access.directory.cursor_key(), _CSRF_CONTEXT, hashlib.sha256).digest()
    return hmac.new(key, binding.encode("utf-8"), hashlib.sha256).hexdigest()


def read_form(settings, access) -> FormRequest:
    """Parse and check the form post of the current request (to a record URL).

    Checks, in order: the body is form-encoded (else 405), not over the
    limit (413), well-formed with only the fields ``_method``, ``_etag``,
    ``_csrf``, ``_eol``, ``value``, ``ttl`` (400), ``_method`` is PUT or DELETE
    (else 405), ``_csrf`` is the caller's token when authentication is on
    (else 403), a PUT has a ``value`` (400) of at most ``max_value_bytes``
    (413) and a valid ``ttl`` (400).  ``_eol=lf`` turns the CRLF line breaks
    that browsers send for a textarea (HTML "constructing the entry list")
    back into LF; the record page sets it when the shown value had no CR.

    :param settings: the store's Settings (``max_value_bytes``).
    :param access: the request's :class:`kv.http.access.Access`.
    :returns: a :class:`FormRequest`.
    :raises HTTPProblem: 405 or 403 as above.
    :raises InvalidRequest, ValueTooLarge: 400 or 413 as above.
    """
    if request_media_type() != FORM_TYPE:
        raise method_not_allowed()
    body = read_body(structured_limit(settings.max_value_bytes))
    try:
        pairs = urllib.parse.parse_qsl(body.decode("ascii"), keep_blank_values=True,
                                       errors="strict", max_num_fields=len(_FIELDS))
    except (UnicodeDecodeError, ValueError):
        raise InvalidRequest("the form body is not valid UTF-8 form encoding") from None
    fields = dict(pairs)
    unknown = sorted(set(fields) - _FIELDS)
    if unknown or len(fields) != len(pairs):
        raise InvalidRequest("unknown or repeated form field %r" % (unknown or ["?"])[0][:60])
    method = fields.get("_method", "")
    if method not in FORM_METHODS:
        raise method_not_allowed()
    expected = csrf_token(access)
    if expected is not None and not hmac.compare_digest(
            fields.get("_csrf", "").encode("utf-8"), expected.encode("ascii")):
        raise HTTPProblem(403, "forbidden", "the form's _csrf token is missing or is not the one "
                          "for your credentials; reload the page and submit the form again")
    etag = fields.get("_etag", "")
    condition = Condition(if_match=(etag,)) if etag else Condition()
    if method == "DELETE":
        return FormRequest(method, condition, None, None)
    if "value" not in fields:
        raise InvalidRequest("the form has no value field")
    text = fields["value"]
    if fields.get("_eol") == "lf":
        text = text.replace("\r\n", "\n")
    try:
        value = text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidRequest("the value is not valid UTF-8") from None
    if len(value) > settings.max_value_bytes:
        raise ValueTooLarge(len(value), settings.max_value_bytes)
    ttl = parse_ttl(fields["ttl"]) if fields.get("ttl") else None
    return FormRequest(method, condition, value, ttl)
