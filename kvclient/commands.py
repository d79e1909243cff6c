"""This module provides the single-key commands of ``kv`` (get, set, create,
delete, ls), watch, the cross-bucket ones (buckets, across), health, the exit codes every
command returns, :func:`open_store`, and the output helpers that the bulk
and administration commands (:mod:`kvclient.bulk`, :mod:`kvclient.admin`) share.

A command is ``cmd_NAME(store, args) -> int``: it runs on an open
:class:`kvclient.Store` with the parsed arguments and returns the exit code;
the errors it raises are turned into exit codes by :func:`kvclient.cli.main`.
"""

import base64
import json
import logging
import os
import signal
import sys
import tempfile
import threading

from kvclient.errors import CursorExpired
from kvclient.records import Record, format_time
from kvclient.store import PAGE, connect

EXIT_OK, EXIT_NOT_FOUND, EXIT_USAGE, EXIT_PRECONDITION, EXIT_UNAVAILABLE = 0, 1, 2, 3, 4
EXIT_UNAUTHORIZED, EXIT_FORBIDDEN = 5, 6
EXIT_EXPIRED = 7                 # kv watch: the cursor is older than the tombstone window (410)
EXIT_DENIED = 1                  # kv check: the request would be denied
EXIT_INTERRUPTED = 130           # Ctrl-C: 128 + SIGINT, as shells report it
EXIT_BROKEN_PIPE = 141           # the reader of stdout went away: 128 + SIGPIPE, as for cat


def open_store(args):
    """A :class:`kvclient.Store` for the parsed arguments: ``url``, ``timeout``
    and, when present, ``bucket``, ``token``, ``user`` and ``password``."""
    return connect(args.url, timeout=args.timeout, bucket=getattr(args, "bucket", None),
                   token=getattr(args, "token", None), user=getattr(args, "user", None),
                   password=getattr(args, "password", None))


def value_text(value: bytes) -> str:
    """A value for a line of text: as it is when UTF-8, else ``base64:`` and its base64."""
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return "base64:" + base64.b64encode(value).decode("ascii")


def record_json(record: Record) -> dict:
    """A record as ``kv --json`` prints it: API.md's JSON record (times
    written as the API writes them, ``...Z``) with its ``etag``."""
    try:
        value, encoding = record.value.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        value, encoding = base64.b64encode(record.value).decode("ascii"), "base64"
    return {"key": record.key, "value": value, "encoding": encoding, "version": record.version,
            "etag": record.etag,
            "created": format_time(record.created), "modified": format_time(record.modified),
            "expires": format_time(record.expires)}


def print_json(doc) -> None:
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


def cmd_get(store, args) -> int:
    """Print the value as its exact bytes; on a terminal, a newline is added
    after a value that does not end with one (so the prompt starts on its
    own line).  With --json, the record."""
    if args.json:
        print_json(record_json(store.get_record(args.key)))
    else:
        value = store.get(args.key)
        if sys.stdout.isatty() and not value.endswith(b"\n"):
            value += b"\n"
        sys.stdout.buffer.write(value)
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
        print_json(record_json(record))
    else:
        print("%s %s (version %d, etag %s)" % (verb, record.key, record.version, record.etag))
    return EXIT_OK


def cmd_delete(store, args) -> int:
    store.delete(args.key, if_match=args.if_match)
    if not args.json:
        print("deleted %s" % args.key)
    else:
        print_json({"deleted": args.key})
    return EXIT_OK


def cmd_ls(store, args) -> int:
    """Print the keys (and rolled-up prefixes), at most ``--limit`` of them."""
    left = args.limit
    page_size = min(left or PAGE, PAGE)
    for page in store.pages(args.prefix, args.delimiter, values=args.values, limit=page_size):
        entries = [("key", item) for item in page["items"]] + \
                  [("prefix", p) for p in page["prefixes"]]
        entries.sort(key=lambda e: (e[1]["key"] if e[0] == "key" else e[1]).encode("utf-8"))
        if left is not None:
            entries, left = entries[:left], left - len(entries[:left])
        for kind, entry in entries:
            if args.json:
                print_json(entry if kind == "key" else {"prefix": entry})
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
        if left == 0:
            break
    return EXIT_OK


def cmd_health(store, args) -> int:
    """Print each partition and its status, then the service's; exit 4
    (unavailable) when the service is degraded (a partition down)."""
    report = store.health()
    if args.json:
        print_json(report)
    else:
        for partition in report["partitions"]:
            print("%s\t%s\t%s" % (partition.get("name"), partition.get("engine"),
                                  "up" if partition.get("up") else
                                  "DOWN: %s" % (partition.get("reason") or "unreachable")))
        if not report["partitions"]:
            print("(with authentication on, /health tells only the status)")
        print("status: %s" % report["status"])
    return EXIT_OK if report["status"] == "ok" else EXIT_UNAVAILABLE


def cmd_buckets(store, args) -> int:
    """Print the buckets the caller may list in (one per line, or JSON lines)."""
    for bucket in store.buckets(args.prefix or ""):
        if args.json:
            print_json({"bucket": bucket})
        else:
            print(bucket)
    return EXIT_OK


def cmd_across(store, args) -> int:
    """Print one key in every bucket of an app (``bucket<TAB>value`` lines),
    or its aggregate with ``--aggregate``."""
    if args.aggregate:
        answer = store.aggregate(args.app, args.key, args.aggregate)
        if args.json:
            print_json(answer)
        else:
            print("%s %s (%s values, %s not numeric)%s" % (
                answer.get("aggregate"), answer.get("value"), answer.get("count"),
                answer.get("non_numeric", 0),
                "" if answer.get("complete", True) else " INCOMPLETE: a partition was unreachable"))
        return EXIT_OK
    for bucket, record in store.read_across(args.app, args.key):
        if args.json:
            print_json({"bucket": bucket, "record": record_json(record)})
        else:
            print("%s\t%s" % (bucket, value_text(record.value)))
    return EXIT_OK


WATCH_FORMAT = """\
output: one line per change, tab-separated, as it happens:
  KEY <TAB> vVERSION <TAB> set|deleted [<TAB> VALUE]
VALUE (with --values; empty for a deleted key) is the value as it is when it
is UTF-8 without tabs or line breaks, else "base64:" and its base64.  With
--json, each line is instead the API's change object (key, version, modified,
deleted, expires; value and encoding with --values).  A key written several
times quickly may show once, with its newest version; a change may show twice
after a reconnection (at least once).

--cursor-file FILE: the cursor is read from FILE when it exists (it wins over
--since) and replaced (atomically) after every answer, once its lines are
printed, so a new kv watch with the same FILE resumes where this one stopped.
A lost connection or a server restart is retried without end (a line on
stderr when it fails, one when it answers again), from the same cursor, so
the changes made meanwhile are printed once it answers.  Exit 7 when the cursor
is older than the server's tombstone window (410), unless --restart: then it
says so on stderr and starts again from now.  Ctrl-C: exit 130."""


def _watch_line(change, values: bool) -> str:
    """A change as one line of ``kv watch`` (see WATCH_FORMAT)."""
    fields = [change.key, "v%d" % change.version, "deleted" if change.deleted else "set"]
    if values:
        value = change.value or b""
        try:
            text = value.decode("utf-8")
        except UnicodeDecodeError:
            text = None
        if text is None or any(c in text for c in "\t\n\r"):
            text = "base64:" + base64.b64encode(value).decode("ascii")
        fields.append(text)
    return "\t".join(fields)


def _change_json(change, values: bool) -> dict:
    """A change as API.md's change object (``kv watch --json``)."""
    doc = {"key": change.key, "version": change.version,
           "modified": format_time(change.modified), "deleted": change.deleted,
           "expires": format_time(change.expires)}
    if values and change.value is not None:
        try:
            doc["value"], doc["encoding"] = change.value.decode("utf-8"), "utf-8"
        except UnicodeDecodeError:
            doc["value"] = base64.b64encode(change.value).decode("ascii")
            doc["encoding"] = "base64"
    return doc


def read_cursor(path: str):
    """The cursor kept in ``path``, or None when the file is absent or empty."""
    try:
        with open(path, encoding="ascii") as f:
            return f.read().strip() or None
    except FileNotFoundError:
        return None


def write_cursor(path: str, cursor: str) -> None:
    """Replace ``path`` with ``cursor`` atomically: written to a temporary
    file in the same directory, flushed to disk, then renamed over it
    (rename is atomic on POSIX), so a crash leaves the old or the new one.
    SIGINT and SIGTERM wait until the file is in place (on the main thread),
    so Ctrl-C never leaves a temporary file behind."""
    folder = os.path.dirname(os.path.abspath(path))
    main = threading.current_thread() is threading.main_thread()
    held = {signal.SIGINT, signal.SIGTERM}
    if main:
        signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        fd, temporary = tempfile.mkstemp(prefix=".kv-cursor-", dir=folder)
        try:
            with os.fdopen(fd, "w", encoding="ascii") as f:
                f.write(cursor + "\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(temporary, path)
        except BaseException:
            os.unlink(temporary)
            raise
    finally:
        if main:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, held)


def cmd_watch(store, args) -> int:
    """Print each change of the bucket's feed as it happens (WATCH_FORMAT),
    until Ctrl-C; exit 7 on an expired cursor unless --restart."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("kv: watch: %(message)s"))
    logger = logging.getLogger("kvclient.watch")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    kept = read_cursor(args.cursor_file) if args.cursor_file else None
    try:
        watcher = store.watch(prefix=args.prefix or "", since=args.since, values=args.values,
                              wait=args.wait, cursor=kept, restart=args.restart)
        with watcher:
            if args.cursor_file and watcher.cursor not in (kept, "now", "0"):
                write_cursor(args.cursor_file, watcher.cursor)     # the position "now" fixed
                kept = watcher.cursor
            for page in watcher.pages():
                for change in page.changes:
                    if args.json:
                        print_json(_change_json(change, args.values))
                    else:
                        print(_watch_line(change, args.values))
                sys.stdout.flush()
                if args.cursor_file and page.cursor != kept:
                    write_cursor(args.cursor_file, page.cursor)
                    kept = page.cursor
    except CursorExpired as e:
        print("kv: watch: %s (run again with --restart to start from now)" % e.message,
              file=sys.stderr)
        return EXIT_EXPIRED
    finally:
        logger.removeHandler(handler)
    return EXIT_OK
