"""kv: the command line of the key-value service (this module provides it).

    kv [--url URL] [--json] [--token T | --user U] COMMAND ...

Commands: get, set, create, delete, ls, load, dump, restore (in one bucket:
``--bucket``, default the bucket "default"); buckets, across; user, app,
token, rule, whoami, check (administration); ``kv COMMAND --help`` tells
more.  Output is for humans unless ``--json`` is given.
"""

EPILOG = """\
credentials: --token (default $KV_TOKEN) sends a bearer token; --user (default
$KV_USER) sends HTTP Basic with the password from $KV_PASSWORD, else asked on
the terminal.  Explicit options win over the environment, and $KV_TOKEN over
$KV_USER.  The URL defaults to $KV_URL.

exit codes: 0 ok (kv check: allowed), 1 not found (kv check: denied),
2 usage or invalid input, 3 precondition failed or conflict, 4 unavailable
(or a server error), 5 unauthorized (401: no valid credentials),
6 forbidden (403: no rule allows it)."""

_DOC = """
This module parses the arguments, resolves the credentials, runs the command
and turns the client's errors into exit codes; the single-key and
cross-bucket commands are in :mod:`kvclient.commands`, load, dump and
restore in :mod:`kvclient.bulk`, the administration commands in
:mod:`kvclient.admin`.
"""
__doc__ += "\n" + EPILOG + "\n" + _DOC

import argparse
import getpass
import os
import sys

from kvclient import admin
from kvclient.bulk import cmd_dump, cmd_load, cmd_restore
from kvclient.commands import (EXIT_FORBIDDEN, EXIT_NOT_FOUND, EXIT_PRECONDITION,
                               EXIT_UNAUTHORIZED, EXIT_UNAVAILABLE, EXIT_USAGE, cmd_across,
                               cmd_buckets, cmd_create, cmd_delete, cmd_get, cmd_ls, cmd_set,
                               open_store, print_json)
from kvclient.errors import (Conflict, Forbidden, KVError, NotFound, PreconditionFailed,
                             ServerError, Unauthorized, Unavailable)

AGGREGATES = ("count", "sum", "min", "max", "avg")


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
    main = argparse.ArgumentParser(prog="kv", description=__doc__.split("\n\n")[0],
                                   epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    common = argparse.ArgumentParser(add_help=False)
    # The common options go before or after the command; only the main parser
    # has defaults, so a subcommand that is not given one does not clobber it.
    for parser_, defaults in ((main, True), (common, False)):
        parser_.add_argument("--url", default=os.environ.get("KV_URL", "http://127.0.0.1:8080")
                             if defaults else argparse.SUPPRESS,
                             help="the service (default $KV_URL or http://127.0.0.1:8080)")
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
                             help='the bucket of get, set, create, delete, ls, load, dump and '
                                  'restore (default: "default", the /keys routes)')
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
    p.add_argument("--prefix")
    p.add_argument("--delimiter", help="roll keys up to this delimiter into prefixes")
    p.add_argument("--values", action="store_true", help="print values too")
    p.add_argument("--long", action="store_true", help="print version and modified time")
    p.set_defaults(run=cmd_ls)
    for name, run, help_text in (
            ("load", cmd_load, "load a TSV (first column = key) or JSON-lines file"),
            ("restore", cmd_restore, "load a kv dump (JSON lines; - for stdin)")):
        p = sub.add_parser(name, parents=[keyed], help=help_text, description=help_text +
                           ", 1000 keys per POST /batch over parallel connections. Resumable: "
                           "an interrupted load continues where it stopped.")
        p.add_argument("file")
        p.add_argument("--connections", type=int, default=4, help="parallel connections (4)")
        p.add_argument("--verify", action="store_true",
                       help="then read every key back and check the listing")
        p.add_argument("--state", help="resume file (default .kv-load-FILE.state here)")
        if name == "load":
            p.add_argument("--format", choices=["tsv", "jsonl"], help="default: by extension")
        p.set_defaults(run=run)
    p = sub.add_parser("dump", parents=[keyed],
                      help="every key, value and expiry as JSON lines")
    p.add_argument("-o", "--output", help="file (default stdout)")
    p.set_defaults(run=cmd_dump)
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


def main(argv=None) -> int:
    """Run ``kv`` with ``argv`` (default sys.argv[1:]); returns the exit code."""
    args = parser().parse_args(argv)
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
    except OSError as e:
        print("kv: %s" % e, file=sys.stderr)
        return EXIT_USAGE
    finally:
        store.close()


if __name__ == "__main__":
    sys.exit(main())
