"""Transactions folded into few round trips.

With a driver that sends several statements in one packet (MySQL's
multi-statement protocol), BEGIN travels with a transaction's first statement
and its writes travel with COMMIT, so a read-check-write transaction costs two
round trips, not four.  :class:`Retry` marks a transaction that lost a race
and may run again.
"""

from typing import Callable, List, Optional, Sequence, Tuple


class Retry(Exception):
    """A transaction lost a race (duplicate insert, deadlock) and may be retried."""


class Transaction:
    """The cursor of one transaction, with ``write`` for statements whose
    result is not read.

    With ``literal`` (an engine whose driver takes several statements in one
    round trip; ``literal(value) -> bytes`` quotes a parameter) and
    ``packet`` (``packet(statements bytes) -> [(rows or None, row count)]``,
    one per statement), BEGIN travels with the first statement and the
    writes, quoted here, with COMMIT: a read-check-write transaction costs
    two round trips, not four.  Writes are sent early when they pass
    ``FOLD_BYTES``.
    """

    FOLD_BYTES = 4 << 20

    def __init__(self, cursor, begin: Sequence[str], literal: Optional[Callable[[object], bytes]],
                 packet: Optional[Callable[[bytes], List[tuple]]] = None):
        self.cursor, self._literal, self._packet = cursor, literal, packet
        self._begin: Optional[Sequence[str]] = begin
        self._writes: List[bytes] = []
        self._bytes = 0
        self._over = False
        if literal is None:
            for statement in begin:
                cursor.execute(statement)
            self._begin = None

    def execute(self, sql: str, params=()) -> None:
        if self._begin is not None:
            self.cursor.execute("; ".join(list(self._begin) + [sql]), params)
            for _ in self._begin:
                self.cursor.nextset()
            self._begin = None
        else:
            self.cursor.execute(sql, params)

    def fetchone(self):
        return self.cursor.fetchone()

    def fetchall(self):
        return self.cursor.fetchall()

    @property
    def rowcount(self) -> int:
        return self.cursor.rowcount

    def write(self, sql: str, params: Sequence) -> None:
        if self._literal is None:
            self.cursor.execute(sql, params)
            return
        statement = self._quoted(sql, params)
        if self._writes and self._bytes + len(statement) > self.FOLD_BYTES:
            self._send([])
        self._writes.append(statement)
        self._bytes += len(statement)

    def final(self, statements: Sequence[Tuple[str, Sequence]]) -> List[tuple]:
        """Send ``statements`` and COMMIT in one round trip (folding engines
        only); the transaction is then over.

        :returns: per statement, (rows or None, affected or returned row count).
        """
        results = self._send([self._quoted(sql, params) for sql, params in statements]
                             + [b"COMMIT"])
        self._over = True
        return results[:len(statements)]

    def _quoted(self, sql: str, params: Sequence) -> bytes:
        return sql.encode("ascii") % tuple(map(self._literal, params))

    def _send(self, tail: List[bytes]) -> List[tuple]:
        """Send the pending BEGIN and writes, then ``tail``, in one packet;
        returns (rows or None, row count) of each statement of ``tail``."""
        head = [s.encode("ascii") for s in self._begin] if self._begin is not None else []
        skip = len(head) + len(self._writes)
        results = self._packet(b"; ".join(head + self._writes + tail))
        self._begin, self._writes, self._bytes = None, [], 0
        return results[skip:]

    def commit(self, conn) -> None:
        if self._over:
            return
        if self._writes:
            self._send([b"COMMIT"])
        elif self._begin is None:
            conn.commit()
