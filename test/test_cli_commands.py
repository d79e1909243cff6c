"""The ``kv`` commands a new user reached for, and how ``kv`` behaves on a
terminal and in a pipe, against a real running service (gunicorn, three
MariaDB partitions; ``kv health`` on a degraded one too): --url without a
scheme, get's newline on a terminal, ``kv dump | head``, times in --json,
``client.batch()``'s bytes, --version, ls --limit, dump --prefix and its
progress bar, rm --prefix and health."""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import unittest

import requests

import dbservers
import kvclient
import test_server
from client_service import Service
from kvclient.connection import service_url
from test_cli_load import read_all, terminal

KV = os.path.join(os.path.dirname(sys.executable), "kv")


def kv(*args, url=None, stdin=b""):
    """Run the installed ``kv``; (exit status, stdout, stderr)."""
    env = dict(os.environ, KV_URL=url or Service.start().url)
    done = subprocess.run([KV] + list(args), input=stdin, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, env=env, timeout=300)
    return done.returncode, done.stdout, done.stderr


def on_terminal(*args, stdin_too=False, answer=b""):
    """Run ``kv`` with stdout and stderr (and stdin, if asked, where
    ``answer`` is typed) on a pseudo-terminal; (exit status, what it showed)."""
    master, slave = terminal()
    process = subprocess.Popen([KV] + list(args), stdout=slave, stderr=slave,
                               stdin=slave if stdin_too else subprocess.DEVNULL,
                               env=dict(os.environ, KV_URL=Service.start().url))
    os.close(slave)
    shown = []
    reader = threading.Thread(target=read_all, args=(master, shown))
    reader.start()
    if answer:
        os.write(master, answer)
    process.wait(300)
    reader.join(10)
    os.close(master)
    return process.returncode, b"".join(shown)


class CommandsTest(unittest.TestCase):
    def setUp(self):
        Service.wipe()
        self.url = Service.start().url
        self.store = kvclient.connect(self.url)
        self.addCleanup(self.store.close)
        self.dir = tempfile.mkdtemp(prefix="kv-commands-")
        self.addCleanup(shutil.rmtree, self.dir, True)

    def test_url_without_a_scheme_is_http_and_an_unusable_one_is_a_clear_error(self):
        bare = self.url[len("http://"):]
        self.assertEqual(kv("--url", bare, "set", "k", "v")[0], 0)
        self.assertEqual(kv("get", "k", url=bare)[:2], (0, b"v"))
        self.assertEqual(kvclient.connect(bare + "/").url, self.url)
        self.assertEqual(kvclient.connect(bare).get("k"), b"v")
        for url, problem in (("ftp://host", b"the scheme must be http or https"),
                             ("localhost:http", b"its port is not a number"),
                             ("http://", b"it has no host name"),
                             ("http://u:p@host", b"not in the URL"), ("", b"empty")):
            code, out, err = kv("--url", url, "get", "k")
            self.assertEqual((code, out), (2, b""), url)
            self.assertIn(problem, err, url)
            self.assertNotIn(b"Traceback", err)
            self.assertEqual(len(err.splitlines()), 1, err)
        with self.assertRaises(ValueError):
            service_url("https://host:0")

    def test_get_adds_a_newline_on_a_terminal_only(self):
        self.store.put("plain", b"no newline")
        self.store.put("line", b"one line\n")
        self.assertEqual(on_terminal("get", "plain"), (0, b"no newline\r\n"))
        self.assertEqual(on_terminal("get", "line"), (0, b"one line\r\n"))
        self.assertEqual(kv("get", "plain")[:2], (0, b"no newline"))       # piped: exact
        self.assertEqual(kv("get", "line")[:2], (0, b"one line\n"))

    def test_dump_into_head_ends_quietly(self):
        for start in range(0, 5000, 1000):                    # 1 MB of dump: more than a pipe holds
            self.store.batch([{"op": "put", "key": "k%05d" % i, "value": "v" * 200}
                              for i in range(start, start + 1000)])
        shell = subprocess.run(
            ["bash", "-c", '"$0" dump | head -n 1; echo "status ${PIPESTATUS[0]}" >&2', KV],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=120,
            env=dict(os.environ, KV_URL=self.url))
        self.assertEqual(json.loads(shell.stdout)["key"], "k00000")
        self.assertEqual(shell.stderr, b"status 141\n")          # as cat or seq: 128 + SIGPIPE
        code, out, err = kv("ls", "--limit", "2")
        self.assertEqual((code, out), (0, b"k00000\nk00001\n"))

    def test_json_times_are_written_as_the_api_writes_them(self):
        self.store.put("t", b"v", ttl=600)
        code, out, _ = kv("get", "t", "--json")
        record = json.loads(out)
        api = requests.get(self.url + "/keys/t", headers={"Accept": "application/json"}).json()
        for name in ("created", "modified", "expires"):
            self.assertEqual(record[name], api[name], name)
            self.assertRegex(record[name], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")
        self.assertIsNone(json.loads(kv("set", "u", "v", "--json")[1])["expires"])

    def test_batch_returns_bytes_as_get_does(self):
        results = self.store.batch([{"op": "put", "key": "bin", "value": b"\x00\xff"},
                                    {"op": "put", "key": "text", "value": "h\u00e9llo"},
                                    {"op": "get", "key": "bin"}, {"op": "get", "key": "text"},
                                    {"op": "get", "key": "absent"}, {"op": "delete", "key": "text"}])
        self.assertEqual([r["status"] for r in results], [201, 201, 200, 200, 404, 204])
        self.assertEqual(results[2]["record"].value, self.store.get("bin"))
        self.assertEqual(results[2]["record"].value, b"\x00\xff")
        self.assertEqual(results[3]["record"].value, "h\u00e9llo".encode())
        self.assertIsInstance(results[3]["record"].value, bytes)
        self.assertEqual((results[0]["record"].key, results[0]["record"].version), ("bin", 1))
        self.assertEqual(results[4]["error"]["code"], "key_not_found")
        self.assertNotIn("record", results[5])

    def test_version_ls_limit_and_dump_prefix(self):
        code, out, _ = kv("--version")
        self.assertEqual(code, 0)
        self.assertRegex(out.decode(), r"^kv \d+\.\d+\.\d+ \(HTTP API version 2\)\n$")
        for key in ("a/1", "a/2", "a/3", "b/1", "c"):
            self.store.put(key, key.upper())
        self.assertEqual(kv("ls", "--limit", "3")[1], b"a/1\na/2\na/3\n")
        self.assertEqual(kv("ls", "--limit", "2", "--delimiter", "/")[1], b"a/\nb/\n")
        self.assertEqual(kv("ls", "--limit", "9", "--prefix", "a/")[1], b"a/1\na/2\na/3\n")
        self.assertEqual(kv("ls", "--limit", "0")[0], 2)
        code, out, err = kv("dump", "--prefix", "a/")
        self.assertEqual(code, 0, err)
        self.assertEqual([json.loads(line)["key"] for line in out.splitlines()], ["a/1", "a/2", "a/3"])
        self.assertIn(b"dump: 3 keys", err)
        self.assertNotIn(b"\r", err)                        # no bar in a pipe
        path = os.path.join(self.dir, "d.jsonl")
        code, shown = on_terminal("dump", "-o", path)
        self.assertEqual(code, 0, shown)
        self.assertRegex(shown.decode(), r"\rdump: 5 keys \[[^\]]*keys/s\]\r\ndump: 5 keys\r\n$")
        with open(path) as f:
            self.assertEqual(len(f.readlines()), 5)

    def test_rm_prefix_lists_asks_and_deletes(self):
        keys = ["logs/%04d" % i for i in range(2500)] + ["logsX", "keep/1", "keep/2"]
        for start in range(0, len(keys), 1000):
            self.store.batch([{"op": "put", "key": k, "value": "v"} for k in keys[start:start + 1000]])
        code, out, err = kv("rm", "--prefix", "")
        self.assertEqual(code, 2)
        self.assertIn(b"--all", err)
        code, out, err = kv("rm", "--prefix", "logs/")             # no terminal, no --yes
        self.assertEqual((code, out), (2, b""))
        self.assertIn(b"would delete 2500 keys", err)
        self.assertEqual(len(self.store.keys()), 2503)
        code, shown = on_terminal("rm", "--prefix", "logs/", stdin_too=True, answer=b"n\n")
        self.assertEqual(code, 0)
        self.assertIn(b"  logs/0000\r\n", shown)
        self.assertIn(b"... and 2490 more", shown)
        self.assertIn(b"delete these 2500 keys, the keys under 'logs/' in bucket default? [y/N]",
                      shown)
        self.assertIn(b"nothing deleted", shown)
        self.assertEqual(len(self.store.keys()), 2503)
        code, shown = on_terminal("rm", "--prefix", "logs/", stdin_too=True, answer=b"y\n")
        self.assertEqual(code, 0, shown)
        self.assertIn(b"deleted 2500 keys\r\n", shown)
        self.assertEqual(self.store.keys(), ["keep/1", "keep/2", "logsX"])
        code, out, _ = kv("rm", "--prefix", "keep/", "--yes", "--json")
        self.assertEqual((code, json.loads(out)), (0, {"deleted": 2, "missing": 0, "failed": 0}))
        self.assertEqual(kv("rm", "--prefix", "nothing/", "--yes")[:2],
                         (0, b"no keys to delete: the keys under 'nothing/' in bucket default "
                             b"holds none\n"))
        self.assertEqual(kv("rm", "--all", "--yes")[:2], (0, b"deleted 1 keys\n"))
        self.assertEqual(self.store.keys(), [])

    def test_health_lists_the_partitions(self):
        code, out, _ = kv("health")
        self.assertEqual(code, 0)
        lines = out.decode().splitlines()
        self.assertEqual(lines[-1], "status: ok")
        self.assertEqual(lines[:-1], ["partition-%d\tmysql\tup" % i for i in (1, 2, 3)])


class DegradedHealthTest(unittest.TestCase):
    def test_health_exits_4_and_names_the_partition_down(self):
        folder = tempfile.mkdtemp(prefix="kv-degraded-")
        self.addCleanup(shutil.rmtree, folder, True)
        servers = dbservers.shared(2)
        dead = dbservers.free_port()                    # nothing listens there
        config = dbservers.write_config(
            os.path.join(folder, "c.cfg"), servers, replicas=2,
            extra="[partition-3]\nengine = mysql\nhost = 127.0.0.1\nport = %d\nuser = kv\n"
                  "password = x\ndatabase = kv\n" % dead)
        with open(config) as f:
            text = f.read().replace("partitions = 2", "partitions = 3")
        with open(config, "w") as f:
            f.write(text)
        port = dbservers.free_port()
        server = test_server.ServedProcess(test_server.ServerTest.command + ["127.0.0.1:%d" % port],
                                           config, port)
        self.addCleanup(server.stop)
        code, out, err = kv("health", url=server.url)
        self.assertEqual(code, 4, err)
        lines = out.decode().splitlines()
        self.assertEqual(lines[-1], "status: degraded")
        self.assertEqual(lines[:2], ["partition-1\tmysql\tup", "partition-2\tmysql\tup"])
        self.assertTrue(lines[2].startswith("partition-3\tmysql\tDOWN: "), lines)
        code, out, _ = kv("health", "--json", url=server.url)
        self.assertEqual((code, json.loads(out)["status"]), (4, "degraded"))
