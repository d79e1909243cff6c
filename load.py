"""Load a TSV data set into a running service, then verify it.

Every row of the file (default ../shared/data/npm-packages.tsv) becomes one
key: the first column is the key, and the value is the JSON object of the
other columns (whole numbers as JSON integers).  Rows are sent with
``POST /batch`` (1000 ops a request) over several keep-alive connections,
with a progress bar.  Then every key is read back and compared byte for byte,
and the listing is walked to check that it returns every key exactly once.
Prints rows per second for each phase; exits 1 if anything differs.

    python load.py --url http://127.0.0.1:8080 ../shared/data/npm-packages.tsv
"""

import argparse
import concurrent.futures
import csv
import json
import sys
import threading
import time

import requests
import tqdm

BATCH = 1000


def read_rows(path):
    """(key, value bytes) pairs of a TSV file with a header line."""
    csv.field_size_limit(1 << 24)
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader)
        for row in reader:
            fields = {name: int(v) if v.isdigit() else v for name, v in zip(header[1:], row[1:])}
            yield row[0], json.dumps(fields, ensure_ascii=False, sort_keys=True).encode("utf-8")


class Client:
    """One keep-alive session per thread."""

    def __init__(self, url, timeout):
        self.url, self.timeout = url.rstrip("/"), timeout
        self.local = threading.local()

    def session(self):
        if not hasattr(self.local, "session"):
            self.local.session = requests.Session()
        return self.local.session

    def batch(self, ops):
        response = self.session().post(self.url + "/batch", data=json.dumps({"ops": ops}),
                                       headers={"Content-Type": "application/json"},
                                       timeout=self.timeout)
        response.raise_for_status()
        return response.json()["results"]


def run_batches(client, chunks, work, total, label, connections):
    """Run work(client, chunk) for every chunk on `connections` threads; returns failures."""
    failures = []
    started = time.monotonic()
    with tqdm.tqdm(total=total, unit="rows", desc=label, file=sys.stderr) as bar, \
            concurrent.futures.ThreadPoolExecutor(connections) as pool:
        for chunk, failed in zip(chunks, pool.map(lambda c: work(client, c), chunks)):
            failures += failed
            bar.update(len(chunk))
    seconds = time.monotonic() - started
    print("%s: %d rows in %.1f s = %.0f rows/s, %d failed"
          % (label, total, seconds, total / seconds, len(failures)))
    return failures


def put_chunk(client, chunk):
    results = client.batch([{"op": "put", "key": k, "value": v.decode("utf-8")} for k, v in chunk])
    return [(k, r["status"]) for (k, _), r in zip(chunk, results) if r["status"] not in (200, 201)]


def check_chunk(client, chunk):
    results = client.batch([{"op": "get", "key": k} for k, _ in chunk])
    bad = []
    for (key, value), result in zip(chunk, results):
        record = result.get("record") or {}
        if result["status"] != 200 or record.get("encoding") != "utf-8" \
                or record.get("value").encode("utf-8") != value:
            bad.append((key, result["status"]))
    return bad


def walk_listing(client, expected_keys):
    """Walk GET /keys pages; returns a list of problems."""
    started, seen, cursor = time.monotonic(), [], None
    session = client.session()
    with tqdm.tqdm(total=len(expected_keys), unit="keys", desc="list", file=sys.stderr) as bar:
        while True:
            params = {"limit": 1000}
            if cursor:
                params["cursor"] = cursor
            page = session.get(client.url + "/keys", params=params, timeout=client.timeout)
            page.raise_for_status()
            page = page.json()
            seen += [item["key"] for item in page["items"]]
            bar.update(len(page["items"]))
            cursor = page["next"]
            if not cursor:
                break
    seconds = time.monotonic() - started
    print("list: %d keys in %.1f s = %.0f keys/s" % (len(seen), seconds, len(seen) / seconds))
    problems = []
    if len(seen) != len(set(seen)):
        problems.append("listing repeated %d keys" % (len(seen) - len(set(seen))))
    if seen != sorted(seen, key=lambda k: k.encode("utf-8")):
        problems.append("listing is not in byte order")
    missing = expected_keys - set(seen)
    if missing:
        problems.append("listing missed %d keys, e.g. %r" % (len(missing), sorted(missing)[:3]))
    return problems


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("file", nargs="?", default="../shared/data/npm-packages.tsv")
    parser.add_argument("--url", default="http://127.0.0.1:8080")
    parser.add_argument("--connections", type=int, default=4, help="parallel connections (4)")
    parser.add_argument("--timeout", type=float, default=60, help="seconds per request (60)")
    parser.add_argument("--no-verify", action="store_true", help="load only")
    args = parser.parse_args(argv)
    rows = list(read_rows(args.file))
    chunks = [rows[i:i + BATCH] for i in range(0, len(rows), BATCH)]
    client = Client(args.url, args.timeout)
    try:
        failed = run_batches(client, chunks, put_chunk, len(rows), "load", args.connections)
        if args.no_verify:
            return 1 if failed else 0
        failed += run_batches(client, chunks, check_chunk, len(rows), "verify", args.connections)
        problems = walk_listing(client, {k for k, _ in rows})
    except requests.RequestException as e:
        print("error: %s" % e, file=sys.stderr)
        return 1
    for key, status in failed[:10]:
        print("failed: %r -> %s" % (key, status), file=sys.stderr)
    for problem in problems:
        print("problem: " + problem, file=sys.stderr)
    ok = not failed and not problems
    print("%s: %d rows loaded, read back identical, listed exactly once"
          % ("OK" if ok else "FAILED", len(rows)) if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
