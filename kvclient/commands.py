"""This module provides the single-key commands of ``kv`` (get, set, create,
delete, ls), the exit codes every command returns, and the output helpers
that the bulk commands (:mod:`kvclient.bulk`) share.

A command is ``cmd_NAME(store, args) -> int``: it runs on an open
:class:`kvclient.Store` with the parsed arguments and returns the exit code;
the errors it raises are turned into exit codes by :func:`kvclient.cli.main`.
"""

import base64
import json
import sys

from kvclient.records import Record

EXIT_OK, EXIT_NOT_FOUND, EXIT_USAGE, EXIT_PRECONDITION, EXIT_UNAVAILABLE = 0, 1, 2, 3, 4


def record_json(record: Record) -> dict:
    try:
        value, encoding = record.value.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        value, encoding = base64.b64encode(record.value).decode("ascii"), "base64"
    return {"key": record.key, "value": value, "encoding": encoding, "version": record.version,
            "etag": record.etag, "created": record.created.isoformat(),
            "modified": record.modified.isoformat(),
            "expires": record.expires.isoformat() if record.expires else None}


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
    if args.json:
        print_json(record_json(store.get_record(args.key)))
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
    for page in store.pages(args.prefix, args.delimiter, values=args.values):
        entries = [("key", item) for item in page["items"]] + \
                  [("prefix", p) for p in page["prefixes"]]
        entries.sort(key=lambda e: (e[1]["key"] if e[0] == "key" else e[1]).encode("utf-8"))
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
    return EXIT_OK
