"""Whether a process still runs, for the state named by a process id: the
metrics files of dead granian workers (kv.metrics) and a sync lease whose
holder died on this host (kv.sync.base)."""

import os


def alive(pid: int) -> bool:
    """True when process ``pid`` exists on this host (signal 0, POSIX
    kill(2)); a process of another user counts as alive.

    :param int pid: the process id.
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
