"""This module provides :class:`Application`, web.py's ``web.application``
with the per-request work this service needs and nothing else.

Stock web.py runs, for every request: a cleanup of every thread-local
dict, ``load`` (about twenty ``web.ctx`` fields, a read of
``os.environ["REAL_SCRIPT_NAME"]``, a pass over ctx re-decoding bytes),
a chain of three processors (its own load and unload hooks around ours),
a second match of the path against the URL map, ``_delegate`` (which
handles sub-applications, redirect strings and class names), and a
generator chain around the body for the server to iterate.  Measured
with py-spy under wrk (issue 15), that machinery took about a quarter of a
worker's Python time on a GET.

:class:`Application` keeps web.py's model (the URL map of ``(pattern,
class)`` pairs, handler classes with one method per HTTP method,
``web.ctx``, ``web.HTTPError`` answers, one processor around the handler)
and does each step once: the path is matched once, by the
:class:`~kv.http.monitoring.RouteTable` that also names the route for the
metrics; ``web.ctx`` gets only the fields the handlers read; the answer is
a one-item list (granian sends it in one write without iterating).
"""

import logging
import os

import web

log = logging.getLogger("kv.http")


class Application(web.application):
    """A web.py application that dispatches through ``routes`` and runs one
    ``processor`` around the handler.

    Per request ``web.ctx`` holds: ``env`` (and ``environ``), ``method``,
    ``path`` (PATH_INFO decoded as UTF-8 where it is), ``query`` (``?``
    and the query string, or empty), ``homepath`` (SCRIPT_NAME, or
    ``$REAL_SCRIPT_NAME`` read at start), ``ip``, ``status`` (``200 OK``)
    and ``headers`` (empty list), then ``kv_route`` (the handler class),
    ``kv_template`` (its route template) and ``kv_args`` (the pattern's
    groups, passed to the method as web.py does).  A handler or processor
    that raises anything but ``web.HTTPError`` is logged with its traceback
    and answered as web.py's 500 (``web.internalerror``).

    :param tuple urls: web.py's URL map ``(pattern, class, ...)``.
    :param routes: a :class:`~kv.http.monitoring.RouteTable` of the same map.
    :param processor: ``processor(handler) -> body`` (str or bytes), as for
        ``web.application.add_processor``.
    """

    def __init__(self, urls, routes, processor):
        super().__init__(urls, {}, autoreload=False)
        self.routes = routes
        self.processor = processor
        self._homepath = os.environ.get("REAL_SCRIPT_NAME")

    def load(self, env):
        """Set the request's ``web.ctx`` fields (see the class docstring)."""
        ctx = web.ctx
        ctx.clear()
        ctx.status = "200 OK"
        ctx.headers = []
        ctx.environ = ctx.env = env
        ctx.method = env.get("REQUEST_METHOD")
        path = env.get("PATH_INFO") or ""
        try:
            path = path.encode("latin-1").decode("utf-8")
        except UnicodeError:       # not UTF-8 (or already decoded): as the server gave it
            pass
        ctx.path = path
        query = env.get("QUERY_STRING")
        ctx.query = "?" + query if query else ""
        ctx.homepath = self._homepath if self._homepath is not None else env.get("SCRIPT_NAME", "")
        ctx.ip = env.get("REMOTE_ADDR")

    def handle(self):
        """Call the matched class's method for the request's method (GET
        for a HEAD it lacks); 405 (``web.nomethod``) when it has none."""
        ctx = web.ctx
        route, method = ctx.kv_route, ctx.method
        if method == "HEAD" and not hasattr(route, "HEAD"):
            method = "GET"
        if not hasattr(route, method):
            raise web.nomethod(route)
        return getattr(route(), method)(*ctx.kv_args)

    def handle_with_processors(self):
        """Match the path, then run the processor around :meth:`handle`."""
        ctx = web.ctx
        ctx.kv_route, ctx.kv_template, ctx.kv_args = self.routes.resolve(ctx.path)
        return self.processor(_logged(self.handle))

    def wsgifunc(self, *middleware):
        """The WSGI callable: answers a one-item list of bytes."""
        def wsgi(env, start_response):
            ctx = web.ctx
            self.load(env)
            try:
                if ctx.method.upper() != ctx.method:      # as web.py: upper case only
                    raise web.nomethod()
                body = _logged(self.handle_with_processors)()
            except web.HTTPError as e:
                body = e.data
            if isinstance(body, str):
                body = body.encode("utf-8")
            start_response(ctx.status, ctx.headers)
            ctx.clear()           # an idle thread keeps nothing of the request
            return [body or b""]
        for m in middleware:
            wsgi = m(wsgi)
        return wsgi


def _logged(call):
    """``call`` with web.py's handling of an unexpected exception: logged
    with its traceback, then answered as ``web.internalerror()`` (500)."""
    def run():
        try:
            return call()
        except (web.HTTPError, KeyboardInterrupt, SystemExit):
            raise
        except Exception:
            log.exception("unhandled error in %s %s", web.ctx.get("method"), web.ctx.get("path"))
            raise web.internalerror()
    return run
