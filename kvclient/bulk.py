"""This module provides the bulk commands of ``kv``: load (a TSV or JSON-lines
file, 1000 keys per POST /batch over parallel connections, resumable), dump
(every key as a JSON line) and restore (a dump loaded back, expiry included).
"""

import base64
import concurrent.futures
import csv
import json
import math
import os
import sys
import threading
import time

import tqdm

from kvclient.commands import EXIT_OK, EXIT_UNAVAILABLE, open_store, print_json
from kvclient.errors import KVError, NotFound
from kvclient.records import decode_value, parse_time

BATCH = 1000


def read_tsv(path):
    """(key, value bytes) of a TSV file with a header line: the first column is
    the key, the value is the JSON object of the other columns (whole numbers
    as JSON integers)."""
    csv.field_size_limit(1 << 24)
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader)
        for row in reader:
            fields = {name: int(v) if v.isdigit() else v for name, v in zip(header[1:], row[1:])}
            yield row[0], json.dumps(fields, ensure_ascii=False, sort_keys=True).encode("utf-8")


def read_jsonl(stream):
    """(key, value bytes, expires) of ``kv dump`` lines; ``expires`` is the
    expiry in seconds since the epoch (a float), or None for no expiry."""
    for number, line in enumerate(stream, 1):
        if not line.strip():
            continue
        try:
            doc = json.loads(line)
            expires = parse_time(doc["expires"]).timestamp() if doc.get("expires") else None
            yield doc["key"], decode_value(doc), expires
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise SystemExit("kv: line %d is not a dump record: %s" % (number, e))


def ttl_of(expires, now: float):
    """The TTL to send for a row expiring at ``expires`` (seconds since the
    epoch, or None): the remaining seconds rounded up, so a restored key
    expires no earlier than the dumped one (and less than 1 s later, plus the
    request's latency and the clock difference between this host and the
    servers).  None for no expiry; 0 when the row has expired by ``now``."""
    if expires is None:
        return None
    return max(0, math.ceil(expires - now))


def _jsonl_rows(path):
    """The rows of :func:`read_jsonl` from a file, or stdin for ``-``."""
    if path == "-":
        return list(read_jsonl(sys.stdin))
    with open(path, encoding="utf-8") as f:
        return list(read_jsonl(f))


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
            op = {"op": "put", "key": key, "value": base64.b64encode(value).decode("ascii"),
                  "encoding": "base64"}
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
                if (r["status"] != 200 or decode_value(r["record"]) != value)
                and not (r["status"] == 404 and ttl_of(expires, now) == 0)]


def _state_path(args) -> str:
    return args.state or ".kv-load-%s.state" % os.path.basename(args.file)


def run_chunks(label, chunks, work, connections, skip=0, on_done=None):
    """Run work(chunk) for the chunks from index ``skip`` on, on ``connections``
    threads, with a progress bar; ``on_done(n)`` is told when the first n chunks
    are all done.  Prints rows/s; returns the failures [(key, status, message)]."""
    total = sum(len(c) for c in chunks)
    failures, done, finished = [], set(), skip
    started = time.monotonic()
    with tqdm.tqdm(total=total, initial=sum(len(c) for c in chunks[:skip]), unit="rows",
                   desc=label, file=sys.stderr, disable=None) as bar, \
            concurrent.futures.ThreadPoolExecutor(connections) as pool:
        futures = {pool.submit(work, chunk): i for i, chunk in enumerate(chunks) if i >= skip}
        for future in concurrent.futures.as_completed(futures):
            index = futures[future]
            failures += future.result()
            bar.update(len(chunks[index]))
            done.add(index)
            while finished in done:
                finished += 1
            if on_done:
                on_done(finished)
    seconds = max(time.monotonic() - started, 1e-9)
    rows = sum(len(c) for c in chunks[skip:])
    print("%s: %d rows in %.1f s = %.0f rows/s, %d failed" % (label, rows, seconds, rows / seconds,
                                                            len(failures)), file=sys.stderr)
    return failures


def cmd_load(store, args, rows=None) -> int:
    if rows is None:
        fmt = args.format or ("jsonl" if args.file.endswith((".jsonl", ".json")) else "tsv")
        if fmt == "tsv":
            rows = [(k, v, None) for k, v in read_tsv(args.file)]
        else:
            rows = _jsonl_rows(args.file)
    chunks = [rows[i:i + BATCH] for i in range(0, len(rows), BATCH)]
    loader = Loader(args)
    state_path, skip = None, 0
    if getattr(args, "file", None) and args.file != "-":
        state_path = _state_path(args)
        identity = "%s %d" % (os.path.abspath(args.file), os.path.getsize(args.file))
        if os.path.exists(state_path):
            with open(state_path) as f:
                saved = json.load(f)
            if saved.get("file") == identity:
                skip = saved["batches_done"]
                print("load: resuming after %d rows" % min(skip * BATCH, len(rows)), file=sys.stderr)

        def save(finished):
            with open(state_path + ".tmp", "w") as f:
                json.dump({"file": identity, "batches_done": finished}, f)
            os.replace(state_path + ".tmp", state_path)
    failures = run_chunks("load", chunks, loader.put, args.connections, skip,
                    save if state_path else None)
    if state_path and os.path.exists(state_path):
        os.remove(state_path)      # every batch was sent: a rerun starts over (failed rows too)
    if args.verify:
        failures += run_chunks("verify", chunks, loader.check, args.connections)
        failures += _check_listing(store, rows, args)
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


def cmd_dump(store, args) -> int:
    """Write every live key as a JSON line: ``{"key", "value", "encoding"}``
    and ``"expires"`` (RFC 3339 UTC) when the key has one: everything a client
    can set, so that ``kv restore`` of the dump gives the same keys back."""
    out = open(args.output, "w", encoding="utf-8") if args.output else sys.stdout
    count, without_expiry = 0, 0
    try:
        for page in store.pages(values=True):
            for item in page["items"]:
                doc = {"key": item["key"], "value": item["value"], "encoding": item["encoding"]}
                if item.get("expires"):
                    doc["expires"] = item["expires"]
                without_expiry += "expires" not in item
                out.write(json.dumps(doc, ensure_ascii=False) + "\n")
                count += 1
    finally:
        if args.output:
            out.close()
    if without_expiry:
        print("dump: warning: the server's listing does not say when keys expire, so %d keys "
              "will not expire once restored" % without_expiry, file=sys.stderr)
    print("dump: %d keys" % count, file=sys.stderr)
    return EXIT_OK


def cmd_restore(store, args) -> int:
    """Load a ``kv dump``: each key with its value and, when it has an expiry,
    the TTL left (rounded up) when it is sent; keys already expired then are
    skipped and counted."""
    return cmd_load(store, args, _jsonl_rows(args.file))
