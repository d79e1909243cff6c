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
"""

import dataclasses
from typing import List, Optional, Tuple

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
    tombstone; None when there is none)."""
    value: Optional[str]
    modified_us: Optional[int] = None


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
