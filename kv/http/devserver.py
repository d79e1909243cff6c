"""This module provides the development server of ``python controller.py``
(``make run``): web.py's own server, cheroot, made as strict as the
production servers about the request framing, with one clear line when
the port cannot be bound.

cheroot keeps the last of two ``Content-Length`` headers; RFC 9112 section
6.3 says a request with different ones (or with ``Transfer-Encoding`` as
well) must be refused: behind a proxy that kept the first, the two would
disagree on where the next request starts (request smuggling).  granian
and gunicorn answer such a request 400; so does this server now.
"""

import logging

import web
from cheroot import server as cheroot_server

log = logging.getLogger("kv.devserver")


class _FramingSpy:
    """A request's input stream, noting the values of its framing headers
    while cheroot's header reader reads them line by line."""

    def __init__(self, rfile):
        self.rfile = rfile
        self.lengths = set()
        self.chunked = False

    def readline(self, *args):
        line = self.rfile.readline(*args)
        name, colon, value = line.partition(b":")
        if colon:
            name = name.strip().lower()
            if name == b"content-length":
                self.lengths.update(v.strip() for v in value.split(b","))
            elif name == b"transfer-encoding":
                self.chunked = True
        return line


class _StrictHeaderReader(cheroot_server.HeaderReader):
    """cheroot's header reader, refusing a request whose ``Content-Length``
    headers (or comma-separated values) differ, or that has both
    ``Content-Length`` and ``Transfer-Encoding`` (RFC 9112 section 6.3).

    :raises ValueError: cheroot answers it 400 with the message.
    """

    def __call__(self, rfile, hdict=None):
        spy = _FramingSpy(rfile)
        headers = super().__call__(spy, hdict)
        if len(spy.lengths) > 1:
            raise ValueError("Content-Length is given more than once with different values")
        if spy.lengths and spy.chunked:
            raise ValueError("Content-Length and Transfer-Encoding cannot both be given")
        return headers


class _StrictRequest(cheroot_server.HTTPRequest):
    header_reader = _StrictHeaderReader()


class _StrictConnection(cheroot_server.HTTPConnection):
    RequestHandlerClass = _StrictRequest


def serve(wsgi_app, host: str, port: int) -> int:
    """Serve ``wsgi_app`` on (host, port) until interrupted.

    :param str host: the address to bind ("0.0.0.0" for every interface).
    :param int port: the TCP port.
    :returns: the process exit status: 0 after Ctrl-C, 1 when the port
        cannot be bound (one log line says why, no traceback).
    """
    server = web.httpserver.WSGIServer((host, port), wsgi_app)
    server.ConnectionClass = _StrictConnection
    try:
        server.prepare()                   # binds: a busy port fails here
    except OSError as e:
        log.error("cannot listen on %s:%d: %s", host, port, e.strerror or e)
        return 1
    log.info("serving on http://%s:%d/", host, port)
    try:
        server.serve()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0
