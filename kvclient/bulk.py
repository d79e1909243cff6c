"""This module provides the bulk loads of ``kv``: load (a TSV or JSON-lines
file, 1000 keys per POST /batch over parallel connections) and restore (a
``kv dump`` loaded back, expiry included), both resumable and stopped
cleanly by Ctrl-C (:mod:`kvclient.pipeline`); the input formats are in
:mod:`kvclient.rows`, dump in :mod:`kvclient.ranges`.
"""

import os
import sys
import threading
import time

import tqdm

from kvclient.commands import EXIT_INTERRUPTED, EXIT_OK, EXIT_UNAVAILABLE, open_store, print_json
from kvclient.errors import KVError, NotFound
from kvclient.pipeline import Interrupted, ResumeState, identity, run_chunks
from kvclient.rows import jsonl_rows, read_tsv, ttl_of

BATCH = 1000


class Loader:
    """Sends rows (key, value, expires) in batches of 1000 over N connections,
    resumably.  A row's TTL is computed when its batch is sent (:func:`ttl_of`);
    rows expired by then are not sent, and their keys are kept in ``expired``."""

    def __init__(self, args):
        self.args = args
        self.local = threading.local()
        self.expired = []

    def store(self):
        if not hasattr(self.local, "store"):
            self.local.store = open_store(self.args)
        return self.local.store

    def live(self, chunk):
        """[(key, value, ttl or None)] of the rows of ``chunk`` not expired now."""
        now, rows = time.time(), []
        for key, value, expires in chunk:
            ttl = ttl_of(expires, now)
            if ttl == 0:
                self.expired.append(key)
            else:
                rows.append((key, value, ttl))
        return rows

    def put(self, chunk):
        rows = self.live(chunk)
        ops = []
        for key, value, ttl in rows:
            op = {"op": "put", "key": key, "value": value}
            if ttl:
                op["ttl"] = ttl
            ops.append(op)
        try:
            results = self.store().batch(ops) if ops else []
        except NotFound:          # a server without POST /batch: one PUT per row
            return self.put_each(rows)
        return [(key, r["status"], (r.get("error") or {}).get("message"))
                for (key, _, _), r in zip(rows, results) if r["status"] not in (200, 201)]

    def put_each(self, rows):
        failures = []
        for key, value, ttl in rows:
            try:
                self.store().put(key, value, ttl=ttl)
            except KVError as e:
                failures.append((key, e.status, e.message))
        return failures

    def check(self, chunk):
        results = self.store().batch([{"op": "get", "key": key} for key, _, _ in chunk])
        now = time.time()
        return [(key, r["status"], "differs") for (key, value, expires), r in zip(chunk, results)
                if (r["status"] != 200 or r["record"].value != value)
                and not (r["status"] == 404 and ttl_of(expires, now) == 0)]


def _state_path(args) -> str:
    return args.state or ".kv-load-%s.state" % os.path.basename(args.file)


def _transient(failures) -> bool:
    """True when a batch's failures hold one the service may not repeat (no
    answer, or a 5xx such as a partition down): its batch is sent again."""
    return any(not status or status >= 500 for _, status, _ in failures)


def _file_rows(args) -> list:
    fmt = args.format or ("jsonl" if args.file.endswith((".jsonl", ".json")) else "tsv")
    if fmt == "tsv":
        return [(k, v, None) for k, v in read_tsv(args.file, numbers=not args.text)]
    return jsonl_rows(args.file)


def cmd_load(store, args, rows=None) -> int:
    """Send ``rows`` [(key, value bytes, expires or None)] (default: those of
    ``args.file``) in batches; resumable through a :class:`ResumeState`
    (not for stdin), which records exactly the batches acknowledged.
    Ctrl-C stops after the requests in flight (exit 130, the resume file kept)."""
    if rows is None:
        rows = _file_rows(args)
    chunks = [rows[i:i + BATCH] for i in range(0, len(rows), BATCH)]
    loader = Loader(args)
    label = getattr(args, "command", None) or "load"
    state, done = None, set()
    if getattr(args, "file", None) and args.file != "-":
        state = ResumeState(_state_path(args), identity(args.file), BATCH)
        done = state.load()
        if done:
            sent = sum(len(chunks[i]) for i in done if i < len(chunks))
            print("%s: resuming: %d of %d rows were acknowledged before; sending the other %d"
                  % (label, sent, len(rows), len(rows) - sent), file=sys.stderr)
    resend = set()

    def on_done(index, failures):
        if _transient(failures):
            resend.add(index)
        elif state is not None:
            state.add(index)
    try:
        failures = run_chunks(label, chunks, loader.put, args.connections, done, on_done)
    except Interrupted as e:
        sent = sum(len(chunks[i]) for i in e.done)
        resume = ("; run the same command again to send the other %d (resume file %s)"
                  % (len(rows) - sent, state.path) if state else "")
        print("%s: interrupted: %d of %d rows acknowledged%s" % (label, sent, len(rows), resume),
              file=sys.stderr)
        return EXIT_INTERRUPTED
    except KVError:
        if state is not None:
            print("%s: stopped; run the same command again to send what was not acknowledged "
                  "(resume file %s)" % (label, state.path), file=sys.stderr)
        raise
    if state is not None:
        if resend:
            print("%s: %d batches had failures that may pass on a retry; run the same command "
                  "again to send them again (resume file %s)" % (label, len(resend), state.path),
                  file=sys.stderr)
        else:
            state.remove()     # every batch was sent: a rerun starts over (failed rows too)
    if args.verify:
        try:
            failures += run_chunks("verify", chunks, loader.check, args.connections)
            failures += _check_listing(store, rows, args)
        except Interrupted:
            print("verify: interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED
    for key, status, message in failures[:10]:
        print("failed: %r -> %s %s" % (key, status, message or ""), file=sys.stderr)
    return _summary(args, rows, failures, loader.expired)


def _summary(args, rows, failures, expired) -> int:
    """Print what a load or restore did; the exit code."""
    if expired:
        print("skipped %d keys that had expired before they were sent, e.g. %r"
              % (len(expired), sorted(expired)[:3]), file=sys.stderr)
    if args.json:
        print_json({"rows": len(rows), "failed": len(failures), "expired": len(expired)})
    else:
        print("%s: %d rows%s, %d failed%s" % (
            "OK" if not failures else "FAILED", len(rows),
            " loaded and verified" if args.verify else " loaded", len(failures),
            ", %d expired (not sent)" % len(expired) if expired else ""))
    return EXIT_OK if not failures else EXIT_UNAVAILABLE


def _check_listing(store, rows, args):
    """Walk the listing: every row's key once, in byte order; the problems
    found as failures [(key, status, message)]."""
    started, seen = time.monotonic(), []
    with tqdm.tqdm(total=len(rows), unit="keys", desc="list", file=sys.stderr,
                   disable=None) as bar:
        for page in store.pages():
            seen += [item["key"] for item in page["items"]]
            bar.update(len(page["items"]))
    seconds = max(time.monotonic() - started, 1e-9)
    print("list: %d keys in %.1f s = %.0f keys/s" % (len(seen), seconds, len(seen) / seconds),
          file=sys.stderr)
    problems = []
    if len(seen) != len(set(seen)):
        problems.append(("(listing)", "-", "%d keys repeated" % (len(seen) - len(set(seen)))))
    if seen != sorted(seen, key=lambda k: k.encode("utf-8")):
        problems.append(("(listing)", "-", "not in byte order"))
    now = time.time()                     # rows expired by the end of the walk may be absent
    missing = {k for k, _, expires in rows if ttl_of(expires, now) != 0} - set(seen)
    if missing:
        problems.append(("(listing)", "-", "%d keys missing, e.g. %r" % (len(missing),
                                                                          sorted(missing)[:3])))
    return problems


def cmd_restore(store, args) -> int:
    """Load a ``kv dump``: each key with its value and, when it has an expiry,
    the TTL left (rounded up) when it is sent; keys already expired then are
    skipped and counted."""
    return cmd_load(store, args, jsonl_rows(args.file))
