"""This module is the data layer's facade: the names the HTTP layer, sync.py
and the tools use, from the kv package (see the README's "Code map").

Command line: ``python datastore.py schema`` applies ``database_definition.sql``
to every configured partition (idempotent).
"""

import argparse
import logging
import sys

from kv.cluster.datastore import DEFAULT_BUCKET, Datastore, open_store
from kv.cluster.listing import Listing, decode_cursor, encode_cursor
from kv.configuration import ConfigurationError, load_config
from kv.errors import (DatastoreError, InvalidKey, InvalidRequest, KeyExists, KeyNotFound,
                       PartitionUnavailable, PreconditionFailed, ValueTooLarge)
from kv.placement import placement
from kv.records import Condition, Record, check_key, now_us, winner_key

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


def main(argv=None) -> int:
    """``python datastore.py schema``: apply the schema to every partition."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["schema"],
                        help="schema: apply database_definition.sql to every partition")
    args, store = command_store(parser, argv, logging.INFO)
    if store is None:
        return 2
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
