"""This module provides content negotiation (RFC 9110 section 12.5.1):
mimerender and python-mimeparse wired once to the formats and renderers of
:mod:`kv.http.representations`, and the :func:`endpoint` decorator that
every handler method wears.

``?format=`` overrides Accept and is read from the query string only (the
stock WebPyMimeRender calls ``web.input()``, which reads the whole body).
Whether a payload has a representation in the negotiated type is decided
from the table (:func:`require`): a handler declares the kind it answers
(``@endpoint(LISTING)``) and names no media type.
"""

import functools
import re
from typing import Optional, Tuple

import mimerender
import web

from kv.http.errors import HTTPProblem, problem_of, status_line
from kv.http.representations import (DEFAULT_FORMAT, ERROR, FORMAT_OF_MEDIA, FORMATS,
                                     SUPPORTED_TYPES, UNSERVED_FORMATS, render, renderer,
                                     representable)
from kv.http.request import request_media_type


def _short(fmt) -> str:
    """mimerender's short name of a format (ours, so no built-in one clashes)."""
    return "kv-" + fmt.name


for _fmt in FORMATS:
    try:
        mimerender.register_mime(_short(_fmt), _fmt.media_types)
    except mimerender.MimeRenderException:   # module imported twice
        pass


_stock_best_mime = mimerender._best_mime


@functools.lru_cache(maxsize=1024)
def _memo_best_mime(supported: tuple, accept: str):
    return _stock_best_mime(list(supported), accept)


def _best_mime(supported, accept=None):
    """mimerender's choice of media type, memoized per (supported types,
    Accept value): python-mimeparse takes 50 to 100 us to rank one Accept
    header, and clients send the same few headers again and again."""
    return None if accept is None else _memo_best_mime(tuple(supported), accept)


mimerender._best_mime = _best_mime      # the module function its wrapper calls


class _MimeRender(mimerender.WebPyMimeRender):
    """mimerender for web.py, reading ``?format=`` from ``web.ctx.kv_format``
    (set by :func:`format_override` from the query string) only.
    """

    def _get_request_parameter(self, key, default=None):
        return web.ctx.get("kv_format") or default

    def _get_accept_header(self, default=None):
        header = web.ctx.env.get("HTTP_ACCEPT")
        if header is None:
            return default
        return _accept_ranges(header) or default   # malformed: the default (its 400 says so)

    def _make_response(self, content, headers, status):
        # web.header() re-validates every value; ours are built from ASCII
        # (ETags, dates, percent-encoded keys) and hold no line breaks.
        web.ctx.status = status
        web.ctx.headers.extend(headers)
        return content


_QUALITY = re.compile(r"q=(0(\.[0-9]{0,3})?|1(\.0{0,3})?)")


@functools.lru_cache(maxsize=512)
def _accept_ranges(header: str) -> Optional[str]:
    """``header`` lower-cased (media types and parameters are
    case-insensitive, RFC 9110 section 8.3.1), or None when it is not a
    list of media ranges with valid weights (section 12.5.1)."""
    lowered = header.lower()
    for element in lowered.split(","):
        if not element.strip():                   # empty list elements are allowed
            continue
        media, *params = [part.strip() for part in element.split(";")]
        kind, slash, sub = media.partition("/")
        if not (kind and slash and sub) or any(c in media for c in " \t\""):
            return None
        if any(p.startswith("q=") and not _QUALITY.fullmatch(p) for p in params):
            return None
    return lowered


def check_accept(header: Optional[str]) -> None:
    """Refuse a malformed ``Accept`` header before any work.

    :raises HTTPProblem: 400 ``bad_accept``, in the default format.
    """
    if header is not None and _accept_ranges(header) is None:
        raise HTTPProblem(400, "bad_accept", "the Accept header is not a list of media ranges "
                          "(type/subtype;q=0.5, ...): %r" % header[:200])


def _not_acceptable(accept, supported):
    return "application/json", render(DEFAULT_FORMAT, error=(
        406, "not_acceptable", "no representation matches Accept: %s; supported: %s"
        % (accept[:200], SUPPORTED_TYPES)))


# One renderer per format, given in FORMATS order: mimerender ranks the
# media types in that order, the default last (it wins ties).
_negotiate = _MimeRender(global_default=_short(DEFAULT_FORMAT), global_override_input_key="format",
                         global_not_acceptable_callback=_not_acceptable)(
    **{_short(fmt): functools.partial(render, fmt) for fmt in FORMATS})


def format_override(name: Optional[str]) -> Optional[str]:
    """Validate a ``?format=`` value; the processor stores the result in
    ``web.ctx.kv_format`` before the handler runs.

    :param str name: the query's ``format`` value, or None when absent.
    :returns: mimerender's short name of that format, or None (negotiate by Accept).
    :raises HTTPProblem: 406 for a format API.md defines that no column serves
        yet (html), 400 ``bad_format`` for any other unknown one.
    """
    if name is None:
        return None
    for fmt in FORMATS:
        if fmt.name == name:
            return _short(fmt)
    status = 406 if name in UNSERVED_FORMATS else 400
    raise HTTPProblem(status, "not_acceptable" if status == 406 else "bad_format",
                      "format must be one of %s" % ", ".join(fmt.name for fmt in FORMATS))


def negotiated_media() -> str:
    """The media type negotiated for this answer, e.g. ``text/xml`` (the
    default format's outside an endpoint)."""
    return web.ctx.get("mimerender_mime", DEFAULT_FORMAT.media_types[0])


def require(kind: str, value: Optional[bytes] = None) -> None:
    """Refuse, before any work, an answer the negotiated type cannot carry
    (API.md: a 406 never follows a committed write).

    :param str kind: a payload kind of the table (representations.RECORD, ...).
    :param bytes value: a record's value, when the answer will carry it.
    :raises HTTPProblem: 406 when the table has no cell for ``kind`` in the
        negotiated type, or that cell cannot carry ``value`` (text/plain of
        bytes that are not UTF-8); the message names the types that can.
    """
    media = negotiated_media()
    if representable(kind, media, value):
        return
    if representable(kind, media):
        why = renderer(kind, media).refusal
    else:
        why = "a %s has no %s representation" % (kind, media)
    others = [m for m in FORMAT_OF_MEDIA if representable(kind, m, value)]
    raise HTTPProblem(406, "not_acceptable", "%s; ask for %s" % (why, ", ".join(others)))


def _named(media_types) -> str:
    """The media types joined by "or", each format named once by its first
    type (text/xml is application/xml's format)."""
    names = []
    for media in media_types:
        fmt = FORMAT_OF_MEDIA.get(media)
        name = fmt.media_types[0] if fmt else media
        if name not in names:
            names.append(name)
    return " or ".join(names)


def endpoint(answers: Optional[str] = None, takes: Tuple[str, ...] = ()):
    """Decorate a handler method: check its request and answer types,
    negotiate its representation, map its errors.

    The method returns ``(payload dict, status int, headers list)``, the
    payload of one kind (``{"record": record}``); any exception becomes the
    error payload through :func:`~kv.http.errors.problem_of`.  Before the
    method runs: 415 unless the request's media type is one of ``takes``
    (when given), then 406 unless the table has a cell for ``answers`` (when
    given) in the negotiated type (JAX-RS order: 415 before 406).  A payload
    of another kind that has no cell there is a 406 too.

    :param str answers: the payload kind of a successful answer.
    :param takes: the request media types the method accepts (lower case).
    """
    def decorate(method):
        def run(*args):
            media = negotiated_media()
            try:
                if takes and request_media_type() not in takes:
                    raise HTTPProblem(415, "unsupported_media_type", "%s %s takes %s" % (
                        web.ctx.method, web.ctx.path, _named(takes)))
                if answers:
                    require(answers)
                payload, status, headers = method(*args)
                require(next(iter(payload)))
            except Exception as e:           # every error gets a negotiated body
                status, code, message, headers = problem_of(e)
                payload = {ERROR: (status, code, message)}
            headers = list(headers)
            charset = FORMAT_OF_MEDIA[media].charset
            if charset:
                headers.append(("Content-Type", "%s; charset=%s" % (media, charset)))
            return payload, status_line(status), headers
        return _negotiate(run)
    return decorate


@endpoint()
def render_problem(exc: Exception):
    """Answer ``exc`` as a negotiated error body (for errors raised outside a
    handler: web.py's own 404/405, a bad ``?format=``)."""
    raise exc
