"""This module is the data layer's facade: the names the HTTP layer, sync.py
and the tools use, from the kv package (see the README's "Code map").

Command line: ``python datastore.py schema`` applies ``database_definition.sql``
to every configured partition (idempotent); ``python datastore.py
bootstrap-admin NAME`` creates the first administrator (API.md
"Authentication") and prints its token.
"""

import argparse
import logging
import sys

from kv.cluster.datastore import Datastore, open_store
from kv.cluster.listing import Listing, decode_cursor, encode_cursor
from kv.configuration import ConfigurationError, load_config
from kv.errors import (DatastoreError, InvalidKey, InvalidRequest, KeyExists, KeyNotFound,
                       PartitionUnavailable, PreconditionFailed, ValueTooLarge)
from kv.auth.directory import Directory
from kv.auth.rule_syntax import check_user_name
from kv.placement import placement
from kv.records import DEFAULT_BUCKET, Condition, Record, check_key, now_us, winner_key

__all__ = [
    "Datastore", "Listing", "open_store", "placement", "check_key", "encode_cursor",
    "decode_cursor", "DEFAULT_BUCKET",
    "Condition", "Record", "DatastoreError", "InvalidKey", "InvalidRequest",
    "KeyExists", "KeyNotFound", "PartitionUnavailable", "PreconditionFailed",
    "ValueTooLarge", "ConfigurationError", "load_config", "now_us", "winner_key",
]


def command_store(parser: argparse.ArgumentParser, argv, log_level: int):
    """Parse a command line that takes ``--config``, set up logging at
    ``log_level``, and open the store (datastore.py and sync.py).

    :returns: (parsed arguments, the Datastore or None after a configuration
        error was printed; the command then exits with status 2).
    """
    parser.add_argument("--config", help="configuration file (default: $KV_CONFIG or "
                                         "configuration.cfg beside this file)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s %(message)s")
    return args, open_store(args.config)


def bootstrap_admin(store, name: str, again: bool) -> int:
    """Create the user ``name`` (no password: it signs in with the token;
    an existing user keeps its password and is enabled again), the rule
    that gives it ``admin`` on everything, and one token of it, printed as
    the only line of standard output.

    :returns: the exit status: 0, or 1 when an admin exists (without
        ``again``), 2 for a bad name.
    :raises PartitionUnavailable: when ``_auth`` cannot be written.
    """
    directory = Directory(store, store.settings.auth)
    try:
        check_user_name(name)
    except InvalidRequest as e:
        print("bootstrap-admin: %s" % e, file=sys.stderr)
        return 2
    if directory.admin_exists() and not again:
        print("bootstrap-admin: an admin exists already; --again makes another",
              file=sys.stderr)
        return 1
    user = directory.user(name)
    if user is None:
        directory.put_user(name, None)
    elif user.get("disabled"):               # its token would be refused: enable it again
        directory.put_user(name, None, disabled=False, keep_password=True)
        print("bootstrap-admin: user %s was disabled and is enabled again" % name,
              file=sys.stderr)
    directory.add_rule({"effect": "allow", "principal": "user:" + name, "verbs": ["admin"],
                        "bucket": "*", "keys": "#"})
    secret, token = directory.create_token(name, None, None)
    print(secret)
    print("bootstrap-admin: user %s is an admin; its token (id %s) is shown this once%s"
          % (name, token["id"], "" if store.settings.auth.enabled else
             "; authentication is off until [auth] enabled = true"), file=sys.stderr)
    return 0


def main(argv=None) -> int:
    """``python datastore.py schema`` or ``bootstrap-admin NAME [--again]``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["schema", "bootstrap-admin"],
                        help="schema: apply database_definition.sql to every partition; "
                             "bootstrap-admin NAME: create the first admin, print its token")
    parser.add_argument("name", nargs="?", help="bootstrap-admin: the admin's user name")
    parser.add_argument("--again", action="store_true",
                        help="bootstrap-admin: even when an admin exists")
    args, store = command_store(parser, argv, logging.INFO)
    if store is None:
        return 2
    if args.command == "bootstrap-admin":
        if not args.name:
            parser.error("bootstrap-admin needs the admin's user NAME")
        try:
            return bootstrap_admin(store, args.name, args.again)
        finally:
            store.close()
    failed = 0
    for name in store.names:
        partition = store.partitions[name]
        try:
            partition.apply_schema()
            print("%s (%s): schema applied" % (name, partition.describe()))
        except PartitionUnavailable as e:
            failed += 1
            print("%s (%s): FAILED: %s" % (name, partition.describe(), e), file=sys.stderr)
    store.close()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
