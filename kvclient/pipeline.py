"""This module provides :func:`run_chunks`, which sends the batches of a
bulk command over parallel connections and stops cleanly on Ctrl-C, and
:class:`ResumeState`, the resume file that records exactly which batches
the service acknowledged.

How a run goes: N worker threads (one connection each) take the next
batch index from a shared queue, send it, and report the answer to the
main thread, which updates the progress bar and the resume file as each
answer arrives.  A worker takes a new batch only while no stop was asked,
so at most N requests are ever in flight.

Ctrl-C (SIGINT): the first one asks the workers to stop; each finishes the
request it has in flight (its answer is then known and recorded), takes no
other, and :func:`run_chunks` raises :class:`Interrupted` once all have
stopped, with the progress bar closed.  A second Ctrl-C gives up waiting
(KeyboardInterrupt): the requests still in flight are then not recorded,
and a rerun sends their batches again.  An error in a worker (the service
unreachable, a lost answer) stops the run the same way and is raised.
"""

import json
import os
import queue
import signal
import sys
import threading
import time
from typing import Callable, Iterable, List, Optional, Sequence, Set

import tqdm

__all__ = ["Interrupted", "ResumeState", "identity", "run_chunks"]


class Interrupted(Exception):
    """A run stopped by Ctrl-C after its in-flight requests returned.

    :ivar set done: the indexes of the batches whose answers arrived.
    """

    def __init__(self, done: Set[int]):
        super().__init__("interrupted")
        self.done = done


class _StopOnInterrupt:
    """While active (in the main thread), the first SIGINT sets ``stop``
    instead of raising; the next one raises KeyboardInterrupt as usual."""

    def __init__(self, stop: threading.Event):
        self.stop, self.previous, self.asked = stop, None, False

    def _handler(self, signum, frame):
        if self.asked:
            raise KeyboardInterrupt
        self.asked = True
        self.stop.set()

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc):
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)


def run_chunks(label: str, chunks: Sequence[Sequence], work: Callable[[Sequence], List[tuple]],
               connections: int, done: Iterable[int] = (),
               on_done: Optional[Callable[[int, List[tuple]], None]] = None,
               unit: str = "rows") -> List[tuple]:
    """Run ``work(chunk)`` for every chunk whose index is not in ``done``, on
    ``connections`` threads, with a progress bar on stderr (on a terminal
    only); ``on_done(index, failures)`` is called in the calling thread as
    each one returns.  Prints ``unit``s per second when all are done.

    :param chunks: the batches (sequences of rows).
    :param work: sends one batch; returns its failures [(key, status, message)].
    :returns: the failures of every batch run.
    :raises Interrupted: after a Ctrl-C, once the requests in flight returned.
    :raises: the first exception a ``work`` call raised (the others stopped as after Ctrl-C).
    """
    done = set(done)
    todo = [i for i in range(len(chunks)) if i not in done]
    pending: "queue.SimpleQueue[int]" = queue.SimpleQueue()
    for index in todo:
        pending.put(index)
    answers: "queue.SimpleQueue[tuple]" = queue.SimpleQueue()
    stop = threading.Event()

    def worker():
        try:
            while not stop.is_set():
                try:
                    index = pending.get_nowait()
                except queue.Empty:
                    return
                try:
                    answers.put((index, work(chunks[index]), None))
                except BaseException as e:      # reported to the main thread, which raises it
                    stop.set()
                    answers.put((index, None, e))
                    return
        finally:
            answers.put(None)                   # this worker has stopped

    failures, error = [], None
    started = time.monotonic()
    threads = [threading.Thread(target=worker, name="kv-%s-%d" % (label, n), daemon=True)
               for n in range(max(1, min(connections, len(todo))))]
    with tqdm.tqdm(total=sum(len(c) for c in chunks),
                   initial=sum(len(chunks[i]) for i in done if i < len(chunks)),
                   unit=unit, desc=label, file=sys.stderr, disable=None) as bar, \
            _StopOnInterrupt(stop) as interrupt:
        for thread in threads:
            thread.start()
        running = len(threads)
        while running:
            answer = answers.get()
            if answer is None:
                running -= 1
                continue
            index, result, exception = answer
            if exception is not None:
                error = error or exception
                continue
            failures += result
            done.add(index)
            bar.update(len(chunks[index]))
            if on_done:
                on_done(index, result)
    if error is not None:
        raise error
    if interrupt.asked:
        raise Interrupted(done)
    seconds = max(time.monotonic() - started, 1e-9)
    rows = sum(len(chunks[i]) for i in todo)
    print("%s: %d %s in %.1f s = %.0f %s/s, %d failed" % (
        label, rows, unit, seconds, rows / seconds, unit, len(failures)), file=sys.stderr)
    return failures


def identity(path: str) -> str:
    """What a resume file names its input by: ``ABSPATH SIZE MTIME_NS`` (a
    file rewritten since, even at the same size, is another input)."""
    status = os.stat(path)
    return "%s %d %d" % (os.path.abspath(path), status.st_size, status.st_mtime_ns)


class ResumeState:
    """The resume file of a load: which batches of which input file the
    service acknowledged, rewritten (atomically: a temporary file, then a
    rename) after each answer.

    Its JSON: ``{"file": IDENTITY, "batch": 1000, "done": [[start, end],
    ...]}``, ``done`` the acknowledged batch indexes as half-open ranges;
    IDENTITY is :func:`identity` of the input.  A resume file for another
    input (the path, size, modification time or batch size differ, or the
    form of an earlier version of kv) is ignored, and said so on stderr.
    """

    def __init__(self, path: str, identity: str, batch: int):
        self.path, self.identity, self.batch = path, identity, batch
        self.done: Set[int] = set()

    def load(self) -> Set[int]:
        """The batches recorded as done for this input (an empty set if none)."""
        try:
            with open(self.path) as f:
                saved = json.load(f)
        except FileNotFoundError:
            return set()
        except ValueError:
            raise SystemExit("kv: the resume file %s is damaged; remove it to start over"
                             % self.path)
        if not isinstance(saved, dict) or saved.get("file") != self.identity \
                or saved.get("batch") != self.batch or "done" not in saved:
            print("load: the resume file %s is for another input (or an older kv): "
                  "starting over" % self.path, file=sys.stderr)
            return set()
        self.done = {i for start, end in saved["done"] for i in range(start, end)}
        return set(self.done)

    def add(self, index: int) -> None:
        """Record batch ``index`` as acknowledged (and write the file)."""
        self.done.add(index)
        self.save()

    def discard(self, indexes: Iterable[int]) -> None:
        """Forget these batches (their rows must be sent again) and write the file."""
        self.done.difference_update(indexes)
        self.save()

    def save(self) -> None:
        """Write the file (atomically)."""
        ranges = []
        for i in sorted(self.done):
            if ranges and ranges[-1][1] == i:
                ranges[-1][1] = i + 1
            else:
                ranges.append([i, i + 1])
        with open(self.path + ".tmp", "w") as f:
            json.dump({"file": self.identity, "batch": self.batch, "done": ranges}, f)
        os.replace(self.path + ".tmp", self.path)

    def remove(self) -> None:
        """Delete the file (the whole input was sent)."""
        for path in (self.path, self.path + ".tmp"):
            if os.path.exists(path):
                os.remove(path)
