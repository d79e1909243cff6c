"""This module provides the access log: one line per answered request, in
logfmt (``key=value`` pairs, a value in double quotes when it holds a space,
a quote or ``=``), written by a background thread.

    time=2025-01-31T12:00:00.123Z method=GET route=/keys/{key} status=200 bytes=57 duration_ms=0.412 principal=user:alice remote=10.0.0.7

``route`` is the route template, never the key or bucket (a key can be
personal data); ``principal`` is there when authentication is on (``-``
for an anonymous request, ``app:notes+user:alice`` for a session).

Off the hot path: a request only puts one tuple on a ``queue.SimpleQueue``;
a ``logging.handlers.QueueListener`` thread turns it into the line and
hands it to the handler (stderr, or a file through ``WatchedFileHandler``,
which reopens the file after logrotate moves it).  Lines of the last
moments are flushed at exit; a ``kill -9`` loses those still queued.
"""

import atexit
import json
import logging
import logging.handlers
import os
import queue
import sys
import threading
import time
from typing import Dict, Optional

__all__ = ["AccessLog", "open_access_log", "OFF", "STDERR"]

OFF = "off"
STDERR = "-"
_UNSAFE = frozenset(' "=\\')


def _value(text: str) -> str:
    """A logfmt value: as is, or a JSON string (quoted, escaped) when it is
    empty or holds a space, a quote, ``=``, a backslash or a control character."""
    if text and not _UNSAFE.intersection(text) and text.isprintable():
        return text
    return json.dumps(text)


def format_line(entry: tuple) -> str:
    """The logfmt line of one queued entry (see :meth:`AccessLog.record`)."""
    when, method, route, status, size, seconds, principal, remote = entry
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(when)) + ".%03dZ" % (when % 1 * 1000)
    line = "time=%s method=%s route=%s status=%s bytes=%d duration_ms=%.3f" % (
        stamp, _value(method), _value(route), status, size, seconds * 1000.0)
    if principal is not None:
        line += " principal=" + _value(principal)
    if remote:
        line += " remote=" + _value(remote)
    return line


class _Listener(logging.handlers.QueueListener):
    """Turns each queued tuple into a LogRecord holding its line."""

    def prepare(self, entry):
        return logging.makeLogRecord({"name": "kv.access", "levelno": logging.INFO,
                                      "levelname": "INFO", "msg": format_line(entry),
                                      "created": entry[0]})


class AccessLog:
    """The access log of this process, writing to ``destination``.

    :param str destination: ``-`` (standard error) or a file path (appended
        to; several worker processes may share it: each line is one
        ``write`` on a file opened with O_APPEND).
    """

    def __init__(self, destination: str):
        self.destination = destination
        if destination == STDERR:
            handler = logging.StreamHandler(sys.stderr)
        else:
            os.makedirs(os.path.dirname(os.path.abspath(destination)), exist_ok=True)
            handler = logging.handlers.WatchedFileHandler(destination, encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(message)s"))
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._put = self._queue.put
        self._listener = _Listener(self._queue, handler)
        self._listener.start()
        self._pid = os.getpid()
        atexit.register(self.close)

    def record(self, method: str, route: str, status: str, size: int, seconds: float,
               principal: Optional[str], remote: Optional[str]) -> None:
        """Queue one line (cheap: one tuple, one put; the thread writes it).

        :param str status: the status code, three digits.
        :param int size: the body's length in bytes (0 for HEAD, 204, 304).
        :param float seconds: the request's duration.
        :param str principal: the caller (None when authentication is off).
        :param str remote: the client's address, or None.
        """
        self._put((time.time(), method, route, status, size, seconds, principal, remote))

    def close(self) -> None:
        """Write what is queued and stop the thread (at exit)."""
        if self._listener is not None and self._pid == os.getpid():
            listener, self._listener = self._listener, None
            listener.stop()
            for handler in listener.handlers:
                handler.close()


_opened: Dict[str, AccessLog] = {}
_lock = threading.Lock()


def open_access_log(destination: str) -> Optional[AccessLog]:
    """The :class:`AccessLog` of ``destination`` in this process (one per
    destination, however many applications the process builds), or None
    for ``off``."""
    if destination == OFF:
        return None
    with _lock:
        log = _opened.get(destination)
        if log is None or log._pid != os.getpid():
            log = _opened[destination] = AccessLog(destination)
        return log
