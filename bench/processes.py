"""The CPU time of processes, for the CPU columns of ``make bench``."""

import os
import time


def cpu_seconds(pids) -> float:
    """utime + stime of the processes and their threads, in seconds
    (/proc/PID/stat, fields 14 and 15); a process that is gone counts 0.

    :param pids: iterable of process ids.
    """
    total = 0.0
    for pid in pids:
        try:
            with open("/proc/%d/stat" % pid) as f:
                fields = f.read().rpartition(")")[2].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except OSError:
            pass
    return total


def wait_idle(groups, most=20.0, idle=0.1) -> None:
    """Wait until the processes of ``groups`` (name -> function returning
    pids) are idle (under ``idle`` CPU seconds in half a second), at most
    ``most`` seconds: wrk leaves up to 32 requests in flight when it stops
    (32 batches of 1,000 keys take the servers 2 to 5 s), and MariaDB
    flushes for a while after a load; either would fall on the next run."""
    deadline = time.monotonic() + most
    while time.monotonic() < deadline:
        before = sum(cpu_seconds(pids()) for pids in groups.values())
        time.sleep(0.5)
        if sum(cpu_seconds(pids()) for pids in groups.values()) - before < idle:
            return
