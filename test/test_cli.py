"""The ``kv`` command line (kvclient.cli) against a real running service
(gunicorn, three MariaDB partitions), including a dump and restore of the
whole npm data set."""

import filecmp
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import unittest
from unittest import mock

import dbservers
import kvclient
from client_service import Service
from kvclient import bulk, pipeline

DATA = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                    "shared", "data", "npm-packages.tsv")
KV = os.path.join(os.path.dirname(sys.executable), "kv")


class LoadFallbackTest(unittest.TestCase):
    def test_load_puts_one_key_at_a_time_where_the_server_has_no_batch(self):
        Service.wipe()
        args = type("Args", (), {"url": Service.start().url, "timeout": 10})()
        loader = bulk.Loader(args)
        with mock.patch.object(kvclient.Store, "batch",
                               side_effect=kvclient.NotFound(404, "not_found", "no /batch")):
            failures = loader.put([("a", b"1", None), ("b", b"2", time.time() + 60),
                                   ("", b"x", None), ("old", b"3", time.time() - 1)])
        self.assertEqual([(k, s) for k, s, _ in failures], [("", 400)])
        self.assertEqual(loader.expired, ["old"])
        store = kvclient.connect(args.url)
        self.assertEqual(store.keys(), ["a", "b"])
        self.assertIsNotNone(store.get_record("b").expires)



def kv(*args, stdin=b"", url=None):
    """Run the installed ``kv`` console script."""
    env = dict(os.environ, KV_URL=url or Service.start().url)
    done = subprocess.run([KV] + list(args), input=stdin, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, env=env, timeout=600)
    return done.returncode, done.stdout, done.stderr


class CommandLineTest(unittest.TestCase):
    def setUp(self):
        Service.wipe()
        self.dir = tempfile.mkdtemp(prefix="kv-cli-")
        self.addCleanup(shutil.rmtree, self.dir, True)

    def test_commands_and_exit_codes(self):
        self.assertEqual(kv("set", "a/b", "hello")[0], 0)
        self.assertEqual(kv("get", "a/b")[:2], (0, b"hello"))
        self.assertEqual(kv("set", "piped", stdin=b"\x00\xffbinary")[0], 0)
        self.assertEqual(kv("get", "piped")[1], b"\x00\xffbinary")
        path = os.path.join(self.dir, "value.bin")
        with open(path, "wb") as f:
            f.write(b"from a file")
        self.assertEqual(kv("set", "filed", "--file", path, "--ttl", "60")[0], 0)
        code, out, _ = kv("get", "filed", "--json")
        record = json.loads(out)
        self.assertEqual((code, record["value"], record["version"]), (0, "from a file", 1))
        self.assertIsNotNone(record["expires"])
        self.assertEqual(kv("get", "missing")[0], 1)
        self.assertEqual(kv("create", "a/b", "again")[0], 3)
        self.assertEqual(kv("set", "a/b", "x", "--if-match", '"stale"')[0], 3)
        self.assertEqual(kv("set", "a/b", "x", "--if-match", record["etag"])[0], 3)
        etag = json.loads(kv("get", "a/b", "--json")[1])["etag"]
        self.assertEqual(kv("set", "a/b", "swapped", "--if-match", etag)[0], 0)
        self.assertEqual(kv("get", "")[0], 2)
        self.assertEqual(kv("frobnicate")[0], 2)
        self.assertEqual(kv("get", "k", url="http://127.0.0.1:%d" % dbservers.free_port())[0], 4)
        code, out, _ = kv("ls", "--long")
        self.assertEqual([line.split("\t")[0] for line in out.decode().splitlines()],
                         ["a/b", "filed", "piped"])
        code, out, _ = kv("ls", "--delimiter", "/", "--json")
        self.assertEqual([json.loads(line) for line in out.decode().splitlines()][0], {"prefix": "a/"})
        self.assertEqual(kv("ls", "--prefix", "a/", "--values")[1], b"a/b\tswapped\n")
        self.assertEqual(kv("delete", "a/b")[0], 0)
        self.assertEqual(kv("delete", "a/b")[0], 1)
        for command in ("get", "set", "create", "delete", "ls", "load", "dump", "restore"):
            code, out, _ = kv(command, "--help")
            self.assertEqual(code, 0, command)
            self.assertIn(b"usage: kv " + command.encode(), out)

    def test_load_resumes_where_it_stopped(self):
        path = os.path.join(self.dir, "rows.tsv")
        with open(path, "w") as f:
            f.write("name\tversion\n" + "".join("pkg%04d\t1.0.%d\n" % (i, i) for i in range(2500)))
        state = os.path.join(self.dir, "state")
        with open(state, "w") as f:      # as left by a load interrupted after two batches
            json.dump({"file": pipeline.identity(path), "batch": 1000, "done": [[0, 2]]}, f)
        code, out, err = kv("load", path, "--state", state)
        self.assertEqual(code, 0, err)
        self.assertIn(b"resuming: 2000 of 2500 rows were acknowledged before; sending the other 500",
                      err)
        keys = kvclient.connect(Service.start().url).keys()
        self.assertEqual(keys, ["pkg%04d" % i for i in range(2000, 2500)])
        self.assertFalse(os.path.exists(state))
        code, out, err = kv("load", path, "--verify", "--json")
        self.assertEqual((code, json.loads(out)), (0, {"rows": 2500, "failed": 0, "expired": 0}),
                         err)
        self.assertEqual(json.loads(kv("get", "pkg0007", "--json")[1])["value"], '{"version": "1.0.7"}')

    def test_dump_and_restore_keep_values_encodings_and_expiry(self):
        store = kvclient.connect(Service.start().url)
        self.addCleanup(store.close)
        store.put("text", "héllo")
        store.put("binary", b"\x00\xff", ttl=3600)
        store.put("soon", b"s", ttl=100)
        first, second = os.path.join(self.dir, "first.jsonl"), os.path.join(self.dir, "second.jsonl")
        self.assertEqual(kv("dump", "-o", first)[0], 0)
        with open(first, "a") as f:           # a key that expired after the dump was taken
            f.write('{"key": "gone", "value": "x", "encoding": "utf-8", '
                    '"expires": "2020-01-01T00:00:00.000000Z"}\n')
        Service.wipe()
        code, out, err = kv("restore", first, "--state", os.path.join(self.dir, "s"), "--json")
        self.assertEqual((code, json.loads(out)), (0, {"rows": 4, "failed": 0, "expired": 1}), err)
        self.assertIn(b"skipped 1 keys that had expired before they were sent", err)
        self.assertEqual(kv("dump", "-o", second)[0], 0)

        def lines(path):
            with open(path, encoding="utf-8") as f:
                return {doc["key"]: doc for doc in map(json.loads, f)}
        before, after = lines(first), lines(second)
        self.assertEqual(sorted(k for k, doc in before.items() if "expires" in doc),
                         ["binary", "gone", "soon"])
        del before["gone"]
        self.assertEqual(sorted(after), ["binary", "soon", "text"])
        for key, doc in before.items():
            self.assertEqual({k: after[key][k] for k in ("value", "encoding")},
                             {k: doc[k] for k in ("value", "encoding")}, key)
            self.assertEqual("expires" in after[key], "expires" in doc, key)
            if "expires" in doc:                         # the TTL left, rounded up
                late = (kvclient.parse_time(after[key]["expires"])
                        - kvclient.parse_time(doc["expires"])).total_seconds()
                self.assertTrue(0 <= late < 2, (key, late))
        self.assertEqual(before["binary"]["encoding"], "base64")

    def test_dump_and_restore_of_the_whole_npm_data_set_is_byte_for_byte(self):
        code, out, err = kv("load", DATA, "--verify", "--connections", "4")
        self.assertEqual(code, 0, err[-2000:])
        self.assertIn(b"OK: 226974 rows loaded and verified, 0 failed", out)
        sys.stderr.write("\n  " + "\n  ".join(line for line in err.decode().splitlines()
                                              if "rows/s" in line or "keys/s" in line))
        first, second = os.path.join(self.dir, "first.jsonl"), os.path.join(self.dir, "second.jsonl")
        self.assertEqual(kv("dump", "-o", first)[0], 0)
        Service.wipe()                                   # an empty cluster
        self.assertEqual(kv("ls")[1], b"")
        code, out, err = kv("restore", first, "--state", os.path.join(self.dir, "s"))
        self.assertEqual(code, 0, err[-2000:])
        self.assertEqual(kv("dump", "-o", second)[0], 0)
        self.assertTrue(filecmp.cmp(first, second, shallow=False))
        with open(first, encoding="utf-8") as f:
            self.assertEqual(sum(1 for _ in f), 226974)
