"""The production start command (README "Running in production"):

    python -m kv.serve [--workers N] [--threads N] [--config FILE] [HOST:]PORT [-- GRANIAN OPTION ...]

It reads the configuration (a bad one stops it here, before any worker
starts), creates and empties the metrics directory (``[metrics]
directory``: prometheus_client's multiprocess mode requires an empty
directory before the workers start, kv.metrics), exports it as
``PROMETHEUS_MULTIPROC_DIR``, then replaces itself (exec) with granian:

    granian --interface wsgi --workers N --blocking-threads T
            --respawn-failed-workers --host HOST --port PORT
            --working-dir REPOSITORY --factory controller:create_application

so the process that a supervisor (systemd, README) started is granian's
master.  ``--respawn-failed-workers``: a worker that dies (kill -9, out of
memory) is replaced instead of shutting the whole server down; granian
still exits when a respawned worker dies again within 5.5 s (a crash
loop), and the supervisor restarts it.  A new worker marks the dead ones
of the metrics directory (kv.metrics.mark_dead_workers); their counts stay
in the sums.  Options after ``--`` go to granian as they are.

Exit status (before the exec): 2 for a usage or configuration error, 1
when the metrics directory cannot be prepared.
"""

import argparse
import os
import sys
from typing import List, Optional

from kv.configuration import ConfigurationError, default_path, load_config
from kv.metrics import ENV, prepare_directory

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: One worker per core (README), blocking threads per worker.
DEFAULT_WORKERS = 2
DEFAULT_THREADS = 16


def granian_command(host: str, port: int, workers: int, threads: int,
                    extra: List[str] = ()) -> List[str]:
    """The granian command line that serves the application.

    :param str host: the address to bind (``0.0.0.0``: every interface).
    :param int port: the TCP port.
    :param int workers: worker processes.
    :param int threads: blocking threads per worker (Python threads that run requests).
    :param extra: more granian options, appended.
    :returns: argv, starting with this Python's executable.
    """
    return [sys.executable, "-m", "granian", "--interface", "wsgi",
            "--workers", str(workers), "--blocking-threads", str(threads),
            "--respawn-failed-workers", "--host", host, "--port", str(port),
            "--working-dir", REPOSITORY, "--factory", "controller:create_application"] + list(extra)


def prepare(config_path: Optional[str], environ=os.environ) -> int:
    """Check the configuration and prepare the metrics directory, setting
    ``KV_CONFIG`` and ``PROMETHEUS_MULTIPROC_DIR`` in ``environ`` for the
    workers (the latter removed when ``[metrics] enabled = false``).

    :returns: 0, or the exit status of a failure (its message on stderr).
    """
    path = os.path.abspath(config_path or default_path())
    try:
        settings = load_config(path)
    except ConfigurationError as e:
        print("configuration error: %s" % e, file=sys.stderr)
        return 2
    environ["KV_CONFIG"] = path
    if not settings.metrics.enabled:
        environ.pop(ENV, None)
        return 0
    try:
        environ[ENV] = prepare_directory(settings.metrics.directory)
    except OSError as e:
        print("cannot prepare the metrics directory %s ([metrics] directory): %s"
              % (settings.metrics.directory, e.strerror or e), file=sys.stderr)
        return 1
    return 0


def main(argv=None) -> int:
    """``python -m kv.serve``: prepare, then exec granian (returns only on an error)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    extra: List[str] = []
    if "--" in argv:
        at = argv.index("--")
        argv, extra = argv[:at], argv[at + 1:]
    parser = argparse.ArgumentParser(
        prog="python -m kv.serve",
        description="Serve the key-value service with granian (worker processes respawned "
                    "when they die; metrics summed over all of them).")
    parser.add_argument("listen", metavar="[HOST:]PORT", help="where to listen, e.g. 8080 or "
                        "127.0.0.1:8080 (host 0.0.0.0 when omitted)")
    parser.add_argument("--workers", type=int, default=DEFAULT_WORKERS,
                        help="worker processes (default %(default)s: one per core)")
    parser.add_argument("--threads", type=int, default=DEFAULT_THREADS,
                        help="request threads per worker (default %(default)s; below the "
                             "partitions' pool_size, default 20: each thread keeps a "
                             "connection, and the change feed's poller needs one more)")
    parser.add_argument("--config", help="configuration file (default $KV_CONFIG or "
                                         "configuration.cfg)")
    args = parser.parse_args(argv)
    host, _, port = args.listen.rpartition(":")
    if not port.isdigit() or not 0 < int(port) < 65536 or args.workers < 1 or args.threads < 1:
        parser.print_usage(sys.stderr)
        print("a port from 1 to 65535, and at least one worker and thread, are needed",
              file=sys.stderr)
        return 2
    status = prepare(args.config)
    if status:
        return status
    command = granian_command(host.strip("[]") or "0.0.0.0", int(port), args.workers,
                              args.threads, extra)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(command[0], command)
    return 1                                   # not reached


if __name__ == "__main__":
    sys.exit(main())
