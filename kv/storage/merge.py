"""One k-way merge of the partitions' sorted rows: listing, ``sync --verify``
(and, later, the change feed) read every partition in key order through it.
"""

from typing import Callable, Iterator, List, Optional, Sequence, Tuple

from kv.errors import PartitionUnavailable


class SortedStream:
    """One partition's rows in key order, read lazily in batches.

    :param str name: the partition's name (for errors).
    :param fetch: ``fetch(position, limit)`` -> at most ``limit`` rows after
        ``position`` = (key, inclusive), in key order.
    :param key_of: ``key_of(row)`` -> the row's sort key.
    :param start: the first position, (key, inclusive).
    :param int batch: rows of the first query; each next query reads twice
        as many, up to ``max_batch`` (a range full of rows the reader skips,
        such as tombstones, costs a few queries, not one per wanted row).
    """

    def __init__(self, name: str, fetch: Callable, key_of: Callable, start: Tuple[object, bool],
                 batch: int, max_batch: Optional[int] = None):
        self.name, self.fetch, self.key_of = name, fetch, key_of
        self.position, self.batch, self.max_batch = start, batch, max_batch or batch
        self.rows: list = []
        self.index = 0
        self.exhausted = False

    def peek(self):
        """The next row, or None at the end.

        :raises PartitionUnavailable: when the partition does not answer.
        """
        if self.index >= len(self.rows) and not self.exhausted:
            self.rows = self.fetch(self.position, self.batch)
            self.index = 0
            self.exhausted = len(self.rows) < self.batch
            self.batch = min(self.batch * 2, self.max_batch)
            if self.rows:
                self.position = (self.key_of(self.rows[-1]), False)
        return self.rows[self.index] if self.index < len(self.rows) else None

    def pop(self) -> None:
        self.index += 1

    def seek(self, key) -> None:
        """Skip every row with a key below ``key``."""
        while self.index < len(self.rows) and self.key_of(self.rows[self.index]) < key:
            self.index += 1
        if self.index >= len(self.rows) and not self.exhausted:
            self.position = (key, True)


def merge(streams: Sequence[SortedStream],
          unavailable: Callable[[SortedStream, PartitionUnavailable], None]
          ) -> Iterator[Tuple[object, List[Tuple[SortedStream, object]]]]:
    """Yield (key, [(stream, row), ...]) for every key of the streams in key
    order, each row once (its stream has moved past it when it is yielded).

    The caller may ``seek`` the streams between two keys.  A stream that
    does not answer is dropped after ``unavailable(stream, error)`` (which
    may raise to end the merge).
    """
    live = list(streams)
    while True:
        heads = []
        for stream in list(live):
            try:
                head = stream.peek()
            except PartitionUnavailable as e:
                live.remove(stream)
                unavailable(stream, e)
                continue
            if head is not None:
                heads.append((stream, head))
        if not heads:
            return
        key = min(stream.key_of(head) for stream, head in heads)
        copies = [(stream, head) for stream, head in heads if stream.key_of(head) == key]
        for stream, _ in copies:
            stream.pop()
        yield key, copies
