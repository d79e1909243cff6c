"""This module provides the history checker of test_faults.py.

Each key is written by one client thread only, so its history is sequential:
every operation was sent after the previous one had its answer (or gave up
waiting for it).  An operation's outcome is

- OK (a 2xx answer): the write is committed (API.md);
- FAILED (a 4xx answer): nothing was written (API.md);
- UNKNOWN (a 5xx answer, a timeout, a connection error): it may or may not
  have been applied, and it may even be applied after the client gave up and
  sent its next operation (a timed-out request can still be running).

After the faults and a converged sync, a key's final state (its value, or
ABSENT) must be the effect of its last acknowledged write L, or of an UNKNOWN
write after L.  An UNKNOWN write *before* L may also explain it, but only if
the copy that won was stamped (``modified``) after L was sent: then that
write committed late, concurrently with L, and could win by last-writer-wins.
A winning copy stamped before L was sent means L was lost.  Anything else is
"lost" when L is a put (or there is no L and the value was never written) and
"resurrected" when L is a delete.  Every value is unique to one write, so the
final value names the write it came from.

The shared keys are the exception: every client thread contends on them with
compare-and-swaps (:class:`Cas`), judged by :func:`duplicate_winners` and
:func:`classify_shared` (see their docstrings).
"""

import dataclasses
from typing import Dict, List, Optional, Tuple

OK, FAILED, UNKNOWN = "ok", "failed", "unknown"
ABSENT = None


def outcome_of(status: Optional[int]) -> str:
    """OK for 2xx, FAILED for 4xx, UNKNOWN for 5xx and no answer (None)."""
    if status is not None and 200 <= status < 300:
        return OK
    if status is not None and 400 <= status < 500:
        return FAILED
    return UNKNOWN


@dataclasses.dataclass
class Write:
    """One write of a key as the client saw it.

    :param str kind: ``"put"`` (any PUT, conditional or not) or ``"delete"``.
    :param str value: the value a put writes (unique per write); None for a delete.
    :param str outcome: OK, FAILED or UNKNOWN.
    :param int started_us: the client's wall clock when it sent the request
        (microseconds since the epoch; the servers share the machine's clock).
    :param status: the HTTP status, None when there was no answer.
    :param str label: what the client sent, for messages (``"put"``,
        ``"if-match"``, ``"if-none-match"``, ``"delete"``).
    """
    kind: str
    value: Optional[str]
    outcome: str
    started_us: int
    status: Optional[int] = None
    label: str = ""

    @property
    def effect(self) -> Optional[str]:
        return self.value if self.kind == "put" else ABSENT

    def __str__(self):
        return "%s %s -> %s" % (self.label or self.kind, self.value or "",
                                self.status if self.status is not None else "no answer")


@dataclasses.dataclass
class Final:
    """A key's state after sync: ``value`` (ABSENT for 404) and the
    ``modified_us`` of the copy that holds it (the live row, or the
    tombstone; None when there is none), and the live row's ``version``
    (None when the key is absent)."""
    value: Optional[str]
    modified_us: Optional[int] = None
    version: Optional[int] = None


def classify(writes: List[Write], final: Final) -> str:
    """Judge one key: ``"ok"``, ``"late"`` (explained by an UNKNOWN write
    before the last acknowledged one that committed after it was sent),
    ``"lost"`` or ``"resurrected"`` (see the module docstring).

    :param writes: the key's writes in the order the client sent them.
    """
    acked = [i for i, w in enumerate(writes) if w.outcome == OK]
    if not acked:
        allowed = {ABSENT} | {w.effect for w in writes if w.outcome == UNKNOWN}
        return "ok" if final.value in allowed else "lost"
    last = acked[-1]
    latest = writes[last]
    allowed = {latest.effect} | {w.effect for w in writes[last + 1:] if w.outcome == UNKNOWN}
    if final.value in allowed:
        return "ok"
    earlier = {w.effect for w in writes[:last] if w.outcome == UNKNOWN}
    if final.value in earlier and final.modified_us is not None \
            and final.modified_us >= latest.started_us:
        return "late"
    return "resurrected" if latest.kind == "delete" else "lost"


def expected(writes: List[Write]) -> Tuple[bool, Optional[str]]:
    """What a read should see now: ``(True, state)`` when no UNKNOWN write
    followed the last acknowledged one (ABSENT before any write), else
    ``(False, None)``.  Only for the informational count of stale reads."""
    for write in reversed(writes):
        if write.outcome == UNKNOWN:
            return False, None
        if write.outcome == OK:
            return True, write.effect
    return True, ABSENT


def describe(key: str, writes: List[Write], final: Final, tail: int = 8) -> str:
    """A few lines for a failure message: the last writes and the final state."""
    lines = ["%s: final %s (modified_us %s)" % (
        key, "absent" if final.value is ABSENT else repr(final.value), final.modified_us)]
    shown = writes[-tail:]
    if len(writes) > len(shown):
        lines.append("    ... %d earlier writes" % (len(writes) - len(shown)))
    lines.extend("    %d %s" % (w.started_us, w) for w in shown)
    return "\n".join(lines)


# -- the shared keys: compare-and-swap races ------------------------------------------

ABSENT_TAG = "*absent*"     # the condition of an If-None-Match: * put (create only)


@dataclasses.dataclass
class Cas:
    """One compare-and-swap on a shared key: a GET, then a PUT conditioned on
    what it returned.

    :param str key: the shared key.
    :param str condition: the ETag the PUT was conditioned on (``If-Match``,
        exactly as the GET returned it), or ABSENT_TAG when the GET answered
        404 and the PUT was ``If-None-Match: *``.
    :param str value: the value the PUT writes (unique per request).
    :param str outcome: OK, FAILED or UNKNOWN (:func:`outcome_of`).
    :param int started_us: the client's wall clock when the PUT was sent.
    :param status: the PUT's HTTP status, None when there was no answer.
    :param stamp: ``(modified_us, version)`` of the record a 2xx answer
        returned (the server's order of the key's writes), else None.
    :param partition: the PUT answer's ``X-Partition``.
    :param read_partition: the GET answer's ``X-Partition`` (where the ETag was read).
    """
    key: str
    condition: str
    value: str
    outcome: str
    started_us: int
    status: Optional[int] = None
    stamp: Optional[Tuple[int, int]] = None
    partition: Optional[str] = None
    read_partition: Optional[str] = None

    def __str__(self):
        return "%d %s on %s (read on %s) -> %s %s%s" % (
            self.started_us, self.value,
            "If-None-Match: *" if self.condition == ABSENT_TAG else "If-Match: " + self.condition,
            self.read_partition, self.status if self.status is not None else "no answer",
            "on %s" % self.partition if self.partition else "",
            " record (modified_us, version) = %s" % (self.stamp,) if self.stamp else "")


def duplicate_winners(cases: List[Cas]) -> Dict[Tuple[str, str], List[Cas]]:
    """The (key, condition) pairs that more than one CAS won (a 2xx), with
    their winners; the count of duplicate winners is the sum of
    ``len(winners) - 1``.  Must be empty.

    Why it is sound (it never reports a violation that did not happen):
    only 2xx answers are counted, and a 2xx means the write committed
    (API.md).  A winner conditioned on ETag E found E on the current copy and
    replaced it atomically; the new record has a new ETag (version + 1,
    modified_us later) and API.md says an old ETag never matches again, so a
    second write conditioned on E can only win by deciding on a copy that is
    not the current one (a stale replica) or by a check that is not atomic
    with the write: both break "exactly one succeeds".  The same holds for
    ABSENT_TAG because the shared keys are never deleted and have no TTL:
    once created they never become absent again, so at most one create-only
    put of a key may succeed.  5xx answers and timeouts are indeterminate
    (the write may or may not have happened, maybe after the client gave
    up): they are left out, which can only hide a duplicate, never invent
    one.  Each request is sent once (no client retries), so a single
    request cannot be counted twice.  The ETag is grouped with its key
    because version-modified_us tags of two keys may coincide.
    """
    winners: Dict[Tuple[str, str], List[Cas]] = {}
    for cas in cases:
        if cas.outcome == OK:
            winners.setdefault((cas.key, cas.condition), []).append(cas)
    return {pair: won for pair, won in winners.items() if len(won) > 1}


def classify_shared(cases: List[Cas], final: Final) -> str:
    """Judge a shared key's final state against its CAS history (all
    threads): ``"ok"``, ``"lost"`` (absent though a CAS was acknowledged),
    ``"unwritten"`` (a value no CAS may have written: never sent, or sent by
    a 4xx one) or ``"stale"`` (older by the server's (modified_us, version)
    than the record some acknowledged CAS returned).

    Why it is sound: the shared keys are written by these conditional puts
    only (no unconditional put, no delete, no TTL), and every value is
    unique, so the final value names the one request that wrote it; a 4xx
    wrote nothing, while a 5xx or a timeout may have committed, so its value
    is allowed.  The server stamps every write after the current copy with
    a greater (modified_us, version) (version + 1, modified_us at least one
    microsecond later) and every replica and sync pass keeps the greatest by
    that order (last-writer-wins), so after a converged sync the surviving
    record is at least as new as every committed write: an acknowledged CAS
    whose record is newer than the final one was overwritten by an older one,
    i.e. lost.  Indeterminate writes are not in that maximum; if they
    committed they could only have raised the final stamp, so leaving them
    out cannot cause a false verdict.  The order is the server's own stamps,
    not the client's clock, so it does not depend on when the client sent
    or heard anything.
    """
    acked = [c for c in cases if c.outcome == OK]
    if final.value is ABSENT:
        return "lost" if acked else "ok"
    if final.value not in {c.value for c in cases if c.outcome in (OK, UNKNOWN)}:
        return "unwritten"
    if acked and (final.modified_us, final.version) < max(c.stamp for c in acked):
        return "stale"
    return "ok"


def describe_shared(key: str, cases: List[Cas], final: Final, tail: int = 8) -> str:
    """A few lines for a failure message: the key's last acknowledged CASes,
    the CAS that wrote the final value, and the final state."""
    lines = ["%s: final %s (modified_us %s, version %s)" % (
        key, "absent" if final.value is ABSENT else repr(final.value),
        final.modified_us, final.version)]
    acked = sorted((c for c in cases if c.outcome == OK), key=lambda c: c.stamp)
    lines.append("    %d CAS, %d acknowledged; the last acknowledged:" % (len(cases), len(acked)))
    lines.extend("    " + str(c) for c in acked[-tail:])
    lines.extend("    wrote the final value: " + str(c) for c in cases if c.value == final.value)
    return "\n".join(lines)
