"""The CPU time of processes, for the CPU columns of ``make bench``."""

import os


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
