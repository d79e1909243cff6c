"""kv: the command line of the key-value service (this module provides it).

    kv [--url URL] [--json] COMMAND ...     (URL also from $KV_URL)

Commands: get, set, create, delete, ls, load, dump, restore; ``kv COMMAND
--help`` tells more.  Output is for humans unless ``--json`` is given.
Exit codes: 0 ok, 1 not found, 2 usage or invalid input, 3 precondition
failed or conflict, 4 unavailable (or a server error).

This module parses the arguments, runs the command and turns the client's
errors into exit codes; the single-key commands are in
:mod:`kvclient.commands`, load, dump and restore in :mod:`kvclient.bulk`.
"""

import argparse
import os
import sys

from kvclient.bulk import cmd_dump, cmd_load, cmd_restore
from kvclient.commands import (EXIT_NOT_FOUND, EXIT_PRECONDITION, EXIT_UNAVAILABLE, EXIT_USAGE,
                               cmd_create, cmd_delete, cmd_get, cmd_ls, cmd_set, print_json)
from kvclient.errors import Conflict, KVError, NotFound, PreconditionFailed, ServerError, Unavailable
from kvclient.store import connect


def _exit_code(error: KVError) -> int:
    if isinstance(error, NotFound):
        return EXIT_NOT_FOUND
    if isinstance(error, (PreconditionFailed, Conflict)):
        return EXIT_PRECONDITION
    if isinstance(error, (Unavailable, ServerError)):
        return EXIT_UNAVAILABLE
    return EXIT_USAGE


def parser() -> argparse.ArgumentParser:
    main = argparse.ArgumentParser(prog="kv", description=__doc__.split("\n\n")[0])
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
    sub = main.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("get", parents=[common], help="print a value (or its record with --json)")
    p.add_argument("key")
    p.set_defaults(run=cmd_get)
    for name, run, help_text in (("set", cmd_set, "create or replace a key"),
                                 ("create", cmd_create, "create a key; fails if it exists")):
        p = sub.add_parser(name, parents=[common], help=help_text,
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
    p = sub.add_parser("delete", parents=[common], help="delete a key")
    p.add_argument("key")
    p.add_argument("--if-match", help="delete only if the key's ETag is this")
    p.set_defaults(run=cmd_delete)
    p = sub.add_parser("ls", parents=[common], help="list keys")
    p.add_argument("--prefix")
    p.add_argument("--delimiter", help="roll keys up to this delimiter into prefixes")
    p.add_argument("--values", action="store_true", help="print values too")
    p.add_argument("--long", action="store_true", help="print version and modified time")
    p.set_defaults(run=cmd_ls)
    for name, run, help_text in (
            ("load", cmd_load, "load a TSV (first column = key) or JSON-lines file"),
            ("restore", cmd_restore, "load a kv dump (JSON lines; - for stdin)")):
        p = sub.add_parser(name, parents=[common], help=help_text, description=help_text +
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
    p = sub.add_parser("dump", parents=[common],
                      help="every key, value and expiry as JSON lines")
    p.add_argument("-o", "--output", help="file (default stdout)")
    p.set_defaults(run=cmd_dump)
    return main


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    store = connect(args.url, timeout=args.timeout)
    try:
        return args.run(store, args)
    except KVError as e:
        if args.json:
            print_json({"error": {"status": e.status, "code": e.code, "message": e.message}})
        print("kv: %s" % e, file=sys.stderr)
        return _exit_code(e)
    except OSError as e:
        print("kv: %s" % e, file=sys.stderr)
        return EXIT_USAGE
    finally:
        store.close()


if __name__ == "__main__":
    sys.exit(main())
