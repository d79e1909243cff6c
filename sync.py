"""``python sync.py``: one pass of replication, rebalancing and purging over
every partition, run from cron (the pass itself: kv.sync).

    python sync.py [--full] [--dry-run] [--verify] [--partition NAME]

Exit codes: 0 done (or another sync holds the lock), 1 a partition was
skipped or the lease was lost (a later pass catches up), 2 --verify found
divergent keys, or a usage or configuration error.
"""

import argparse
import logging
import sys

from datastore import command_store
from kv.sync import (EXPIRY_GRACE_SECONDS, LOCK, TOPOLOGY, WATERMARK, LeaseLost,  # noqa: F401
                     Summary, Sync, run, verify)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="One pass of replication, rebalancing and "
                                                 "purging over every partition.")
    parser.add_argument("--full", action="store_true",
                        help="anti-entropy over all rows, not only those changed since the "
                             "watermarks (for a new or restored partition)")
    parser.add_argument("--dry-run", action="store_true",
                        help="report what would change; change nothing")
    parser.add_argument("--verify", action="store_true",
                        help="compare every replica of every key; exit 2 if any diverge")
    parser.add_argument("--partition", metavar="NAME", help="only rows held by this partition")
    args, store = command_store(parser, argv, logging.ERROR)
    if store is None:
        return 2
    if args.partition and args.partition not in store.partitions:
        print("unknown partition %r (known: %s)" % (args.partition, ", ".join(store.names)),
              file=sys.stderr)
        return 2
    try:
        return run(store, args.full, args.dry_run, args.verify, args.partition)
    finally:
        store.close()


if __name__ == "__main__":
    sys.exit(main())
