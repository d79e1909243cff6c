"""kv: the command line of the key-value service (this module provides it).

    kv [--url URL] [--json] [--token T | --user U] COMMAND ...

Commands: get, set, create, delete, ls, watch, load, dump, restore, rm (in
one bucket: ``--bucket``, default the bucket "default"); buckets, across,
health; user, app, token, rule, whoami, check (administration);
``kv COMMAND --help`` tells more.  Output is for humans unless ``--json``
is given.
"""

EPILOG = """\
credentials: --token (default $KV_TOKEN) sends a bearer token; --user (default
$KV_USER) sends HTTP Basic with the password from $KV_PASSWORD, else asked on
the terminal.  Explicit options win over the environment, and $KV_TOKEN over
$KV_USER.  The URL defaults to $KV_URL; without a scheme, http:// is assumed
(--url localhost:8080).

exit codes: 0 ok (kv check: allowed), 1 not found (kv check: denied),
2 usage or invalid input, 3 precondition failed or conflict, 4 unavailable
(or a server error; kv health: degraded), 5 unauthorized (401: no valid
credentials), 6 forbidden (403: no rule allows it), 7 the change feed cursor
expired (kv watch: 410), 130 interrupted (Ctrl-C), 141 the reader of the
output went away (kv dump | head)."""

_DOC = """
This module parses the arguments, resolves the credentials, runs the command
and turns the client's errors into exit codes; the single-key,
watch, cross-bucket and health commands are in :mod:`kvclient.commands`, load and
restore in :mod:`kvclient.bulk`, dump and rm in :mod:`kvclient.ranges`, the
administration commands in :mod:`kvclient.admin`.  Ctrl-C ends any command
with one line and exit 130; a closed stdout (``kv dump | head``) ends it
silently with exit 141.
"""
__doc__ += "\n" + EPILOG + "\n" + _DOC

import argparse
import getpass
import importlib.metadata
import os
import sys

from kvclient import admin
from kvclient.bulk import cmd_load, cmd_restore
from kvclient.commands import (EXIT_BROKEN_PIPE, EXIT_FORBIDDEN, EXIT_INTERRUPTED, EXIT_NOT_FOUND,
                               EXIT_PRECONDITION, EXIT_UNAUTHORIZED, EXIT_UNAVAILABLE, EXIT_USAGE,
                               WATCH_FORMAT, cmd_across, cmd_buckets, cmd_create, cmd_delete,
                               cmd_get, cmd_health, cmd_ls, cmd_set, cmd_watch, open_store,
                               print_json)
from kvclient.connection import service_url
from kvclient.ranges import cmd_dump, cmd_rm
from kvclient.rows import TSV_HELP
from kvclient.errors import (Conflict, Forbidden, KVError, NotFound, PreconditionFailed,
                             ServerError, Unauthorized, Unavailable)

AGGREGATES = ("count", "sum", "min", "max", "avg")
API_VERSION = 2                 # the version of API.md this client speaks


def version() -> str:
    """``kv VERSION (HTTP API version 2)``, VERSION that of the installed package."""
    try:
        installed = importlib.metadata.version("kv-service")
    except importlib.metadata.PackageNotFoundError:
        installed = "(not installed)"
    return "kv %s (HTTP API version %d)" % (installed, API_VERSION)


def _positive(text: str) -> int:
    """An argparse type: a whole number from 1 up."""
    try:
        number = int(text)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError("%r is not a whole number from 1 up" % text)
    return number


def _wait_seconds(text: str) -> int:
    """An argparse type: a long poll's wait, 1 to 30 seconds (API.md)."""
    number = _positive(text)
    if number > 30:
        raise argparse.ArgumentTypeError("%r is more than 30 seconds" % text)
    return number


def _exit_code(error: KVError) -> int:
    if isinstance(error, Unauthorized):
        return EXIT_UNAUTHORIZED
    if isinstance(error, Forbidden):
        return EXIT_FORBIDDEN
    if isinstance(error, NotFound):
        return EXIT_NOT_FOUND
    if isinstance(error, (PreconditionFailed, Conflict)):
        return EXIT_PRECONDITION
    if isinstance(error, (Unavailable, ServerError)):
        return EXIT_UNAVAILABLE
    return EXIT_USAGE


def parser() -> argparse.ArgumentParser:
    """The ``kv`` argument parser."""
    main = argparse.ArgumentParser(prog="kv", description=__doc__.split("\n\n")[0].replace(
                                       " (this module provides it)", ""),
                                   epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    main.add_argument("--version", action="version", version=version())
    common = argparse.ArgumentParser(add_help=False)
    # The common options go before or after the command; only the main parser
    # has defaults, so a subcommand that is not given one does not clobber it.
    for parser_, defaults in ((main, True), (common, False)):
        parser_.add_argument("--url", default=os.environ.get("KV_URL", "http://127.0.0.1:8080")
                             if defaults else argparse.SUPPRESS,
                             help="the service, e.g. http://kv.example:8080 or localhost:8080 "
                                  "(default $KV_URL or http://127.0.0.1:8080)")
        parser_.add_argument("--json", action="store_true",
                             default=False if defaults else argparse.SUPPRESS,
                             help="output JSON for scripts")
        parser_.add_argument("--timeout", type=float, default=30 if defaults else argparse.SUPPRESS,
                             help="seconds per request (30)")
        parser_.add_argument("--token", default=None if defaults else argparse.SUPPRESS,
                             help="a bearer token (default $KV_TOKEN)")
        parser_.add_argument("--user", default=None if defaults else argparse.SUPPRESS,
                             help="a user name for HTTP Basic (default $KV_USER); the password "
                                  "from $KV_PASSWORD, else asked")
    # --bucket is for the key commands (before or after the command).
    keyed = argparse.ArgumentParser(add_help=False, parents=[common])
    for parser_, defaults in ((main, True), (keyed, False)):
        parser_.add_argument("--bucket", default=None if defaults else argparse.SUPPRESS,
                             help='the bucket of get, set, create, delete, ls, watch, load, '
                                  'dump, restore and rm (default: "default", the /keys routes)')
    sub = main.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("get", parents=[keyed], help="print a value (or its record with --json)")
    p.add_argument("key")
    p.set_defaults(run=cmd_get)
    for name, run, help_text in (("set", cmd_set, "create or replace a key"),
                                 ("create", cmd_create, "create a key; fails if it exists")):
        p = sub.add_parser(name, parents=[keyed], help=help_text,
                           description=help_text + ". The value comes from VALUE, --file or stdin.")
        p.add_argument("key")
        p.add_argument("value", nargs="?", help="the value (default: stdin; - for stdin)")
        p.add_argument("--file", help="read the value from this file")
        p.add_argument("--ttl", type=int, help="seconds until the key expires")
        if name == "set":
            p.add_argument("--if-match", help="write only if the key's ETag is this (or *)")
        else:
            p.set_defaults(if_match=None)
        p.set_defaults(run=run)
    p = sub.add_parser("delete", parents=[keyed], help="delete a key")
    p.add_argument("key")
    p.add_argument("--if-match", help="delete only if the key's ETag is this")
    p.set_defaults(run=cmd_delete)
    p = sub.add_parser("ls", parents=[keyed], help="list keys")
    p.add_argument("--prefix", help="only keys starting with this")
    p.add_argument("--delimiter", help="roll keys up to this delimiter into prefixes")
    p.add_argument("--limit", type=_positive, metavar="N",
                   help="print at most N lines (keys and prefixes); default: all")
    p.add_argument("--values", action="store_true", help="print values too")
    p.add_argument("--long", action="store_true", help="print version and modified time")
    p.set_defaults(run=cmd_ls)
    p = sub.add_parser("watch", parents=[keyed], help="print each change as it happens",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Print each change of the bucket (under --prefix) as it "
                       "happens, until Ctrl-C\n(the change feed, long polls of GET /changes).",
                       epilog=WATCH_FORMAT)
    p.add_argument("--prefix", help="only keys starting with this")
    p.add_argument("--values", action="store_true", help="print values too")
    p.add_argument("--cursor-file", metavar="FILE",
                   help="resume from the cursor in FILE and keep it there (see below)")
    p.add_argument("--since", choices=["now", "0"], default="now",
                   help="without a kept cursor: now (only new changes, the default) or 0 "
                        "(everything still retained first)")
    p.add_argument("--restart", action="store_true",
                   help="on an expired cursor (410), start again from now instead of exit 7")
    p.add_argument("--wait", type=_wait_seconds, default=30, metavar="N",
                   help="seconds each long poll may wait, 1 to 30 (30)")
    p.set_defaults(run=cmd_watch)
    for name, run, help_text in (
            ("load", cmd_load, "load a TSV (first column = key) or JSON-lines file"),
            ("restore", cmd_restore, "load a kv dump (JSON lines; - for stdin)")):
        p = sub.add_parser(name, parents=[keyed], help=help_text,
                           formatter_class=argparse.RawDescriptionHelpFormatter,
                           description=help_text + ",\n1000 keys per POST /batch over parallel "
                           "connections.\n\nResumable: the resume file records exactly the "
                           "batches the service\nacknowledged, and a rerun of the same command "
                           "sends only the others.\nCtrl-C stops once the requests in flight "
                           "have returned (exit 130).",
                           epilog=TSV_HELP if name == "load" else None)
        p.add_argument("file")
        p.add_argument("--connections", type=_positive, default=4, help="parallel connections (4)")
        p.add_argument("--verify", action="store_true",
                       help="then read every key back and check the listing")
        p.add_argument("--state", help="resume file (default .kv-load-FILE.state here)")
        if name == "load":
            p.add_argument("--format", choices=["tsv", "jsonl"], help="default: by extension")
            p.add_argument("--text", action="store_true",
                           help="keep every TSV field as text (no JSON numbers)")
        p.set_defaults(run=run)
    p = sub.add_parser("dump", parents=[keyed],
                       help="every key, value and expiry as JSON lines",
                       description="Write every key (under --prefix) with its value and expiry "
                       "as JSON lines, for kv restore.  A progress bar goes to stderr when it "
                       "is a terminal.")
    p.add_argument("-o", "--output", help="file (default stdout)")
    p.add_argument("--prefix", help="only keys starting with this")
    p.set_defaults(run=cmd_dump)
    p = sub.add_parser("rm", parents=[keyed], help="delete every key under a prefix",
                       description="Delete every key starting with --prefix (or, with --all, "
                       "every key of the bucket).  On a terminal it lists them and asks; "
                       "elsewhere it needs --yes.  One key: kv delete KEY.")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--prefix", help="delete the keys starting with this (not empty)")
    which.add_argument("--all", action="store_true", help="delete every key of the bucket")
    p.add_argument("--yes", "-y", action="store_true", help="do not ask")
    p.add_argument("--connections", type=_positive, default=4, help="parallel connections (4)")
    p.set_defaults(run=cmd_rm)
    p = sub.add_parser("health", parents=[common], help="the partitions and their status",
                       description="Print each partition and whether it is up; exit 4 when the "
                       "service is degraded (a partition down).")
    p.set_defaults(run=cmd_health)
    p = sub.add_parser("buckets", parents=[common], help="list the buckets you may list in")
    p.add_argument("--prefix", help="only buckets starting with this")
    p.set_defaults(run=cmd_buckets)
    p = sub.add_parser("across", parents=[common],
                       help="read one key in every bucket of an app (or aggregate it)")
    p.add_argument("app")
    p.add_argument("key")
    p.add_argument("--aggregate", choices=AGGREGATES,
                   help="print this aggregate of the JSON-number values instead")
    p.set_defaults(run=cmd_across)
    admin.add_parsers(sub, common)
    return main


def credentials(args, environ=os.environ, ask=getpass.getpass) -> None:
    """Resolve ``args.token``, ``args.user`` and ``args.password`` from the
    options, then the environment (KV_TOKEN, KV_USER, KV_PASSWORD), then by
    asking for the password.

    :raises SystemExit: (exit 2) when both --token and --user are given.
    """
    if args.token is not None and args.user is not None:
        raise SystemExit("kv: give --token or --user, not both")
    if args.token is None and args.user is None:
        args.token = environ.get("KV_TOKEN") or None
        if args.token is None:
            args.user = environ.get("KV_USER") or None
    args.password = None
    if args.user is not None:
        args.password = environ.get("KV_PASSWORD")
        if args.password is None:
            args.password = ask("password for %s: " % args.user)


def _quiet_stdout() -> None:
    """Point stdout at /dev/null, so that the interpreter's last flush of a
    pipe whose reader went away says nothing."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def main(argv=None) -> int:
    """Run ``kv`` with ``argv`` (default sys.argv[1:]); returns the exit code."""
    try:
        return _run(parser().parse_args(argv))
    except KeyboardInterrupt:
        print("\nkv: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        _quiet_stdout()
        return EXIT_BROKEN_PIPE


def _run(args) -> int:
    try:
        args.url = service_url(args.url)
    except ValueError as e:
        print("kv: %s" % e, file=sys.stderr)
        return EXIT_USAGE
    credentials(args)
    store = open_store(args)
    try:
        return args.run(store, args)
    except KVError as e:
        if args.json:
            print_json({"error": {"status": e.status, "code": e.code, "message": e.message}})
        print("kv: %s" % e, file=sys.stderr)
        if isinstance(e, Unauthorized):
            print("kv: give credentials with --token (or $KV_TOKEN) or --user (or $KV_USER)",
                  file=sys.stderr)
        return _exit_code(e)
    except BrokenPipeError:
        raise
    except OSError as e:
        print("kv: %s" % e, file=sys.stderr)
        return EXIT_USAGE
    finally:
        store.close()


if __name__ == "__main__":
    sys.exit(main())
