"""One database connection per thread per partition (diskcache's pattern),
so that no pool checkout, checkin or event runs on a request's path.

A thread keeps the connection it opened for its next call: a request
thread of a worker reuses its own, and with coalescing (coalescing.py)
only the thread that leads a batch touches one.  This took SQLAlchemy's
QueuePool (28 us of CPU per checkout and checkin, measured in one thread)
off every query: in paired runs (bench/paired.py) the service's CPU per
GET fell from 515 to 460 us, per PUT from 823 to 761 us (issue 15).
"""

import os
import threading
import time
import weakref
from typing import Callable


class ConnectionsExhausted(Exception):
    """Every connection this process may open to the partition is held by
    another thread, and none was given up within the wait (a "busy"
    partition, not a down one)."""


class _Held:
    """A thread's connection: ``conn``, when it was last given back
    (``idle_since``, monotonic seconds), whether a call is using it, and
    the finalizer that closes it when the thread ends."""

    __slots__ = ("conn", "idle_since", "in_use", "finalizer", "__weakref__")

    def __init__(self, conn):
        self.conn = conn
        self.idle_since = time.monotonic()
        self.in_use = False
        self.finalizer = None


def _close(conn, permits, pid) -> None:
    """Close ``conn`` and give its permit back (in the process that opened
    it only: a forked child shares the socket, and closing it there would
    end the parent's session)."""
    if os.getpid() != pid:
        return
    try:
        conn.close()
    except Exception:            # already closed, or the server is gone
        pass
    permits.release()


class ThreadConnections:
    """At most ``limit`` connections in this process, one per thread that
    asked for one, each kept by its thread until the thread ends, the
    connection breaks or :meth:`close`.

    :param connect: ``connect()`` -> a new DB-API connection.
    :param int limit: the most connections open at once (the partition's
        ``pool_size``): a thread that would open one more waits up to
        ``wait_seconds`` for another thread's to close, then
        :class:`ConnectionsExhausted`.
    :param float wait_seconds: that wait (connect_timeout_seconds).
    :param float ping_after_seconds: a connection idle this long is pinged
        before use (a server restart or an idle timeout may have broken it
        unseen); a broken one is replaced, unless the ping itself took
        ``give_up_seconds`` or more (a hanging server): then its error is
        raised, so a request waits one timeout only.
    :param tuple errors: the driver's exception classes (a failed ping).
    """

    def __init__(self, connect: Callable, limit: int, wait_seconds: float,
                 ping_after_seconds: float, give_up_seconds: float, errors: tuple):
        self._connect = connect
        self._limit = limit
        self._wait = wait_seconds
        self._ping_after = ping_after_seconds
        self._give_up = give_up_seconds
        self._errors = errors
        self._lock = threading.Lock()
        self._reset()

    def _reset(self) -> None:
        self._pid = os.getpid()
        self._local = threading.local()
        self._permits = threading.BoundedSemaphore(self._limit)
        self._all: "weakref.WeakSet[_Held]" = weakref.WeakSet()

    def acquire(self):
        """This thread's connection (opened on first use, pinged after an
        idle while); a call nested in one that holds it gets a connection
        of its own, closed at :meth:`release`.

        :raises ConnectionsExhausted: as the class says.
        :raises Exception: the driver's, when it cannot connect.
        """
        if self._pid != os.getpid():           # forked: the parent's connections are not ours
            with self._lock:
                if self._pid != os.getpid():
                    self._reset()
        held = getattr(self._local, "held", None)
        if held is not None and held.finalizer.alive:
            if held.in_use:
                return self._connect()         # nested: its own, not kept
            if time.monotonic() - held.idle_since < self._ping_after:
                held.in_use = True
                return held.conn
            started = time.monotonic()
            try:
                held.conn.ping()
                held.in_use = True
                return held.conn
            except self._errors:
                held.finalizer()
                if time.monotonic() - started >= self._give_up:
                    raise
        if not self._permits.acquire(timeout=self._wait):
            raise ConnectionsExhausted("all %d connections of this process are in use"
                                       % self._limit)
        try:
            conn = self._connect()
        except BaseException:
            self._permits.release()
            raise
        held = self._local.held = _Held(conn)
        held.finalizer = weakref.finalize(held, _close, conn, self._permits, self._pid)
        held.in_use = True
        self._all.add(held)
        return conn

    def release(self, conn, broken: bool) -> None:
        """Give back a connection of :meth:`acquire`; a ``broken`` one is
        closed (the next call opens a new one)."""
        held = getattr(self._local, "held", None)
        if held is None or held.conn is not conn:      # a nested call's own
            try:
                conn.close()
            except Exception:
                pass
            return
        held.in_use = False
        if broken:
            held.finalizer()
            self._local.held = None
        else:
            held.idle_since = time.monotonic()

    def close(self) -> None:
        """Close every connection of this process (each thread opens a new
        one at its next call)."""
        if self._pid == os.getpid():
            for held in list(self._all):
                held.finalizer()
