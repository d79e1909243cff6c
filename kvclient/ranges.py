"""This module provides the ``kv`` commands over every key under a prefix:
dump (each key, value and expiry as a JSON line) and rm --prefix (delete
them, after a confirmation).
"""

import json
import sys
import threading

import tqdm

from kvclient.commands import (EXIT_INTERRUPTED, EXIT_OK, EXIT_UNAVAILABLE, EXIT_USAGE,
                               open_store, print_json)
from kvclient.pipeline import Interrupted, run_chunks

BATCH = 1000
SHOWN = 20          # kv rm lists this many keys in full; more are cut to the first half


def _bar_wanted(args) -> bool:
    """A progress bar on stderr only when stderr is a terminal and the
    output does not go to that terminal too."""
    return sys.stderr.isatty() and (bool(args.output) or not sys.stdout.isatty())


def cmd_dump(store, args) -> int:
    """Write every live key (under ``--prefix``, if given) as a JSON line:
    ``{"key", "value", "encoding"}`` and ``"expires"`` (RFC 3339 UTC) when
    the key has one: everything a client can set, so that ``kv restore`` of
    the dump gives the same keys back.  A progress bar (keys, keys/s) goes
    to stderr when it is a terminal, unless the dump itself goes there."""
    out = open(args.output, "w", encoding="utf-8") if args.output else sys.stdout
    count, without_expiry = 0, 0
    try:
        with tqdm.tqdm(unit="keys", desc="dump", file=sys.stderr, disable=not _bar_wanted(args),
                       bar_format="{desc}: {n_fmt} keys [{elapsed}, {rate_fmt}]") as bar:
            for page in store.pages(args.prefix, values=True):
                for item in page["items"]:
                    doc = {"key": item["key"], "value": item["value"], "encoding": item["encoding"]}
                    if item.get("expires"):
                        doc["expires"] = item["expires"]
                    without_expiry += "expires" not in item
                    out.write(json.dumps(doc, ensure_ascii=False) + "\n")
                    count += 1
                bar.update(len(page["items"]))
    finally:
        if args.output:
            out.close()
    if without_expiry:
        print("dump: warning: the server's listing does not say when keys expire, so %d keys "
              "will not expire once restored" % without_expiry, file=sys.stderr)
    print("dump: %d keys" % count, file=sys.stderr)
    return EXIT_OK


class _Deleter:
    """Deletes a batch of keys with POST /batch, one store per thread."""

    def __init__(self, args):
        self.args, self.local = args, threading.local()
        self.missing = 0
        self.lock = threading.Lock()

    def delete(self, keys):
        """Delete ``keys``; returns the failures [(key, status, message)] (a
        key already gone is no failure: it is counted in ``missing``)."""
        if not hasattr(self.local, "store"):
            self.local.store = open_store(self.args)
        results = self.local.store.batch([{"op": "delete", "key": key} for key in keys])
        with self.lock:
            self.missing += sum(r["status"] == 404 for r in results)
        return [(key, r["status"], (r.get("error") or {}).get("message"))
                for key, r in zip(keys, results) if r["status"] not in (204, 404)]


def _confirm(question: str) -> bool:
    """Ask ``question`` on the terminal; True for y or yes."""
    sys.stderr.write(question)
    sys.stderr.flush()
    answer = sys.stdin.readline()
    return answer.strip().lower() in ("y", "yes")


def cmd_rm(store, args) -> int:
    """Delete every key under ``--prefix`` (``--all``: every key of the
    bucket).  Lists them (on stderr) and asks on a terminal; without a
    terminal, ``--yes`` is needed.  Keys written after the listing are kept."""
    if args.all == bool(args.prefix):
        print("kv rm: give --prefix P (a non-empty prefix) or --all (every key of the bucket)",
              file=sys.stderr)
        return EXIT_USAGE
    where = "bucket %s" % (store.bucket or "default")
    what = "every key of %s" % where if args.all else "the keys under %r in %s" % (args.prefix,
                                                                                 where)
    keys = store.keys(args.prefix or None)
    if not keys:
        if args.json:
            print_json({"deleted": 0, "missing": 0, "failed": 0})
        else:
            print("no keys to delete: %s holds none" % what)
        return EXIT_OK
    if not args.yes:
        if not sys.stdin.isatty():
            print("kv rm: would delete %d keys (%s); give --yes to delete without asking"
                  % (len(keys), what), file=sys.stderr)
            return EXIT_USAGE
        shown = keys if len(keys) <= SHOWN else keys[:SHOWN // 2]
        for key in shown:
            print("  " + key, file=sys.stderr)
        if len(shown) < len(keys):
            print("  ... and %d more (kv ls --prefix lists them)" % (len(keys) - len(shown)),
                  file=sys.stderr)
        if not _confirm("delete these %d keys, %s? [y/N] " % (len(keys), what)):
            print("nothing deleted", file=sys.stderr)
            return EXIT_OK
    deleter = _Deleter(args)
    chunks = [keys[i:i + BATCH] for i in range(0, len(keys), BATCH)]
    try:
        failures = run_chunks("rm", chunks, deleter.delete, args.connections, unit="keys")
    except Interrupted as e:
        print("rm: interrupted: %d of %d keys deleted or gone" % (
            sum(len(chunks[i]) for i in e.done), len(keys)), file=sys.stderr)
        return EXIT_INTERRUPTED
    deleted = len(keys) - deleter.missing - len(failures)
    for key, status, message in failures[:10]:
        print("failed: %r -> %s %s" % (key, status, message or ""), file=sys.stderr)
    if args.json:
        print_json({"deleted": deleted, "missing": deleter.missing, "failed": len(failures)})
    else:
        print("deleted %d keys%s%s" % (
            deleted, ", %d were already gone" % deleter.missing if deleter.missing else "",
            ", %d FAILED" % len(failures) if failures else ""))
    return EXIT_OK if not failures else EXIT_UNAVAILABLE
