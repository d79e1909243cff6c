"""This module provides the access log: one line per answered request, in
logfmt (``key=value`` pairs, a value as a JSON string when it holds a
space, a quote, ``=`` or a control character), written by a background
thread.

    time=2025-01-31T12:00:00.123Z method=GET route=/keys/{key} status=200 bytes=57 duration_ms=0.412 principal=user:alice remote=10.0.0.7

``route`` is the route template, never the key or bucket (a key can be
personal data); ``principal`` is there when authentication is on (``-``
for an anonymous request, ``app:notes+user:alice`` for a session).

Off the hot path: a request only puts one tuple on a ``queue.SimpleQueue``
(about 1 us); the thread wakes at most every BATCH_SECONDS (0.1 s), formats
what has queued up and writes it in
writes of at most 4 KiB (PIPE_BUF: lines of several worker processes
sharing a pipe or an O_APPEND file never interleave within a line), so a
busy server makes one system call per many requests, where
``logging.handlers.QueueListener`` would make one per line.  A file is
reopened when logrotate has moved it (its inode changed).  Lines still
queued are written at exit; a ``kill -9`` loses them.
"""

import atexit
import json
import os
import queue
import sys
import threading
import time
from typing import Dict, Optional

__all__ = ["AccessLog", "open_access_log", "format_line", "OFF", "STDERR"]

OFF = "off"
STDERR = "-"
PIPE_BUF = 4096
#: How long the thread lets lines gather before it writes them (seconds):
#: a line is written at most this late, and a busy worker wakes the thread
#: ten times a second rather than once per request.
BATCH_SECONDS = 0.1
_UNSAFE = frozenset(' "=\\')
_second = [-1, ""]                 # the last whole second formatted, and its text


def _value(text: str) -> str:
    """A logfmt value: as is, or a JSON string (quoted, escaped) when it is
    empty or holds a space, a quote, ``=``, a backslash or a control character."""
    if text and text.isprintable() and not _UNSAFE.intersection(text):
        return text
    return json.dumps(text)


def format_line(entry: tuple) -> str:
    """The logfmt line of one queued entry (see :meth:`AccessLog.record`), without newline."""
    when, method, route, status, size, seconds, principal, remote = entry
    whole = int(when)
    if whole != _second[0]:
        _second[:] = [whole, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))]
    line = "time=%s.%03dZ method=%s route=%s status=%s bytes=%d duration_ms=%.3f" % (
        _second[1], (when - whole) * 1000, _value(method), _value(route), status, size,
        seconds * 1000.0)
    if principal is not None:
        line += " principal=" + _value(principal)
    if remote:
        line += " remote=" + _value(remote)
    return line


class AccessLog:
    """The access log of this process, writing to ``destination``.

    :param str destination: ``-`` (standard error) or a file path (appended
        to; created with its directory; several worker processes may share it).
    :raises OSError: when the file cannot be opened.
    """

    def __init__(self, destination: str):
        self.destination = destination
        self._inode = None
        self._file = sys.stderr if destination == STDERR else self._open()
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._put = self._queue.put
        self._pid = os.getpid()
        self._thread = threading.Thread(target=self._run, name="kv-access-log", daemon=True)
        self._thread.start()
        atexit.register(self.close)

    def _open(self):
        os.makedirs(os.path.dirname(os.path.abspath(self.destination)), exist_ok=True)
        f = open(self.destination, "a", encoding="utf-8", errors="backslashreplace")
        self._inode = os.fstat(f.fileno()).st_ino
        return f

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

    def _run(self) -> None:
        get, get_nowait = self._queue.get, self._queue.get_nowait
        running = True
        while running:
            entries = [get()]                    # idle: wait for the first line
            time.sleep(BATCH_SECONDS)            # busy: wake once per batch, not per line
            try:
                while len(entries) < 100000:
                    entries.append(get_nowait())
            except queue.Empty:
                pass
            if None in entries:                  # close(): write what came before, stop
                entries, running = entries[:entries.index(None)], False
            self._write([format_line(e) + "\n" for e in entries])

    def _write(self, lines) -> None:
        try:
            if self._inode is not None:
                try:
                    moved = os.stat(self.destination).st_ino != self._inode
                except FileNotFoundError:
                    moved = True
                if moved:                        # logrotate moved it: a new file
                    self._file.close()
                    self._file = self._open()
            chunk, size = [], 0
            for line in lines:
                if size + len(line) > PIPE_BUF and chunk:
                    self._file.write("".join(chunk))
                    self._file.flush()
                    chunk, size = [], 0
                chunk.append(line)
                size += len(line)
            if chunk:
                self._file.write("".join(chunk))
                self._file.flush()
        except (OSError, ValueError):            # a full disk must not stop the thread
            pass

    def close(self) -> None:
        """Write what is queued and stop the thread (at exit)."""
        if self._thread is not None and self._pid == os.getpid():
            thread, self._thread = self._thread, None
            self._put(None)
            thread.join(5)


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
