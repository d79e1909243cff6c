"""kv: the command line of the key-value service (this module provides it).

    kv [--url URL] [--json] COMMAND ...     (URL also from $KV_URL)

Commands: get, set, create, delete, ls, load, dump, restore; ``kv COMMAND
--help`` tells more.  Output is for humans unless ``--json`` is given.
Exit codes: 0 ok, 1 not found, 2 usage or invalid input, 3 precondition
failed or conflict, 4 unavailable (or a server error).
"""

import argparse
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

import kvclient

EXIT_OK, EXIT_NOT_FOUND, EXIT_USAGE, EXIT_PRECONDITION, EXIT_UNAVAILABLE = 0, 1, 2, 3, 4
BATCH = 1000


def _exit_code(error: kvclient.KVError) -> int:
    if isinstance(error, kvclient.NotFound):
        return EXIT_NOT_FOUND
    if isinstance(error, (kvclient.PreconditionFailed, kvclient.Conflict)):
        return EXIT_PRECONDITION
    if isinstance(error, (kvclient.Unavailable, kvclient.ServerError)):
        return EXIT_UNAVAILABLE
    return EXIT_USAGE


def _record_json(record: kvclient.Record) -> dict:
    try:
        value, encoding = record.value.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        value, encoding = base64.b64encode(record.value).decode("ascii"), "base64"
    return {"key": record.key, "value": value, "encoding": encoding, "version": record.version,
            "etag": record.etag, "created": record.created.isoformat(),
            "modified": record.modified.isoformat(),
            "expires": record.expires.isoformat() if record.expires else None}


def _print_json(doc) -> None:
    print(json.dumps(doc, ensure_ascii=False))


def _value_of(args) -> bytes:
    if args.file is not None and args.value is not None:
        raise SystemExit("kv: give the value as an argument or with --file, not both")
    if args.file is not None:
        with open(args.file, "rb") as f:
            return f.read()
    if args.value is None or args.value == "-":
        return sys.stdin.buffer.read()
    return args.value.encode("utf-8")


# -- single-key commands ------------------------------------------------------------

def cmd_get(store, args) -> int:
    if args.json:
        _print_json(_record_json(store.get_record(args.key)))
    else:
        sys.stdout.buffer.write(store.get(args.key))
        sys.stdout.buffer.flush()
    return EXIT_OK


def cmd_set(store, args) -> int:
    record = store.put(args.key, _value_of(args), ttl=args.ttl, if_match=args.if_match)
    return _report(args, record, "stored")


def cmd_create(store, args) -> int:
    record = store.create(args.key, _value_of(args), ttl=args.ttl)
    return _report(args, record, "created")


def _report(args, record, verb) -> int:
    if args.json:
        _print_json(_record_json(record))
    else:
        print("%s %s (version %d, etag %s)" % (verb, record.key, record.version, record.etag))
    return EXIT_OK


def cmd_delete(store, args) -> int:
    store.delete(args.key, if_match=args.if_match)
    if not args.json:
        print("deleted %s" % args.key)
    else:
        _print_json({"deleted": args.key})
    return EXIT_OK


def cmd_ls(store, args) -> int:
    for page in store.pages(args.prefix, args.delimiter, values=args.values):
        entries = [("key", item) for item in page["items"]] + \
                  [("prefix", p) for p in page["prefixes"]]
        entries.sort(key=lambda e: (e[1]["key"] if e[0] == "key" else e[1]).encode("utf-8"))
        for kind, entry in entries:
            if args.json:
                _print_json(entry if kind == "key" else {"prefix": entry})
            elif kind == "prefix":
                print(entry)
            elif args.long or args.values:
                fields = [entry["key"]]
                if args.long:
                    fields += ["v%d" % entry["version"], entry["modified"]]
                if args.values:
                    fields.append(entry["value"] if entry.get("encoding") == "utf-8"
                                  else "base64:" + entry["value"])
                print("\t".join(fields))
            else:
                print(entry["key"])
    return EXIT_OK


# -- bulk commands ----------------------------------------------------------------------

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
            expires = kvclient.parse_time(doc["expires"]).timestamp() if doc.get("expires") else None
            yield doc["key"], kvclient.decode_value(doc), expires
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


class _Loader:
    """Sends rows (key, value, expires) in batches of 1000 over N connections,
    resumably.  A row's TTL is computed when its batch is sent (:func:`ttl_of`);
    rows expired by then are not sent, and their keys are kept in ``expired``."""

    def __init__(self, args):
        self.args = args
        self.local = threading.local()
        self.expired = []

    def store(self):
        if not hasattr(self.local, "store"):
            self.local.store = kvclient.connect(self.args.url, timeout=self.args.timeout)
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
        except kvclient.NotFound:          # a server without POST /batch: one PUT per row
            return self.put_each(rows)
        return [(key, r["status"], (r.get("error") or {}).get("message"))
                for (key, _, _), r in zip(rows, results) if r["status"] not in (200, 201)]

    def put_each(self, rows):
        failures = []
        for key, value, ttl in rows:
            try:
                self.store().put(key, value, ttl=ttl)
            except kvclient.KVError as e:
                failures.append((key, e.status, e.message))
        return failures

    def check(self, chunk):
        results = self.store().batch([{"op": "get", "key": key} for key, _, _ in chunk])
        now = time.time()
        return [(key, r["status"], "differs") for (key, value, expires), r in zip(chunk, results)
                if (r["status"] != 200 or kvclient.decode_value(r["record"]) != value)
                and not (r["status"] == 404 and ttl_of(expires, now) == 0)]


def _state_path(args) -> str:
    return args.state or ".kv-load-%s.state" % os.path.basename(args.file)


def _run(label, chunks, work, connections, skip=0, on_done=None):
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
    loader = _Loader(args)
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
    failures = _run("load", chunks, loader.put, args.connections, skip,
                    save if state_path else None)
    if state_path and os.path.exists(state_path):
        os.remove(state_path)      # every batch was sent: a rerun starts over (failed rows too)
    if args.verify:
        failures += _run("verify", chunks, loader.check, args.connections)
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
        _print_json({"rows": len(rows), "failed": len(failures), "expired": len(expired)})
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


# -- argument parsing ----------------------------------------------------------------------

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
    store = kvclient.connect(args.url, timeout=args.timeout)
    try:
        return args.run(store, args)
    except kvclient.KVError as e:
        if args.json:
            _print_json({"error": {"status": e.status, "code": e.code, "message": e.message}})
        print("kv: %s" % e, file=sys.stderr)
        return _exit_code(e)
    except OSError as e:
        print("kv: %s" % e, file=sys.stderr)
        return EXIT_USAGE
    finally:
        store.close()


if __name__ == "__main__":
    sys.exit(main())
