"""``kv load`` against a real running service (gunicorn, three MariaDB
partitions): what a TSV field becomes (the exact text unless it is a JSON
number in canonical form), on crafted files and on the real npm data, and
Ctrl-C in the middle of a load, with an exact resume."""

import fcntl
import json
import os
import pty
import shutil
import signal
import subprocess
import struct
import sys
import tempfile
import termios
import threading
import time
import unittest

import kvclient
from client_service import Service
from kvclient import pipeline, rows

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(os.path.dirname(ROOT), "shared", "data", "npm-packages.tsv")
KV = os.path.join(os.path.dirname(sys.executable), "kv")


def terminal():
    """(master, slave) file descriptors of a new pseudo-terminal of 24 lines
    of 100 columns (a bare pty has 0 columns, where tqdm draws nothing)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    return master, slave


def read_all(fd, into: list) -> None:
    """Append what the terminal ``fd`` shows to ``into`` until its other side closes."""
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:                # EIO: the other side of the terminal closed
            return
        if not chunk:
            return
        into.append(chunk)


def field_text(value) -> str:
    """The text a loaded field came from (the inverse of rows.json_field)."""
    return value if isinstance(value, str) else repr(value)


class FieldRuleTest(unittest.TestCase):
    def test_only_canonical_json_numbers_become_numbers(self):
        numbers = {"0": 0, "7": 7, "-12": -12, "585": 585, "9007199254740991": 2 ** 53 - 1,
                   "1.5": 1.5, "-0.25": -0.25, "0.1": 0.1}
        texts = ["007", "00", "²", "٣", "+7", "-0", "1e3", "1.50", "1.", ".5", "1.0", "-",
                 "9007199254740993", "0x1F", " 7", "7 ", "", "1_000", "Infinity", "NaN",
                 "0.1000000000000000055511151231257827", "1.2.3"]
        for text, number in numbers.items():
            self.assertEqual((rows.json_field(text), type(rows.json_field(text))),
                             (number, type(number)), text)
        for text in texts:
            self.assertEqual(rows.json_field(text), text, text)

    def test_every_field_of_the_npm_data_set_is_rebuilt_exactly(self):
        import csv
        csv.field_size_limit(1 << 24)
        with open(DATA, encoding="utf-8", newline="") as f:
            lines = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
        header, source = lines[0], {line[0]: line[1:] for line in lines[1:]}
        converted = 0
        for key, value in rows.read_tsv(DATA):
            doc = json.loads(value)
            self.assertEqual([field_text(doc[name]) for name in header[1:]], source[key], key)
            converted += sum(not isinstance(doc[name], str) for name in header[1:])
        self.assertEqual(len(source), 226974)
        self.assertGreater(converted, 226000)         # downloads_a_month, a number


class PipelineTest(unittest.TestCase):
    """run_chunks and the resume file without a service."""

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="kv-pipeline-")
        self.addCleanup(shutil.rmtree, self.dir, True)

    def test_an_error_stops_the_run_and_the_resume_file_holds_exactly_what_returned(self):
        source = os.path.join(self.dir, "input")
        with open(source, "w") as f:
            f.write("x")
        state = pipeline.ResumeState(os.path.join(self.dir, "state"), pipeline.identity(source), 2)
        chunks = [[("k%d" % i, b"v", None)] * 2 for i in range(8)]
        sent = []

        def work(chunk):
            if chunk[0][0] == "k5":
                raise kvclient.Unavailable(0, "no_connection", "down")
            sent.append(chunk[0][0])
            return [] if chunk[0][0] != "k1" else [("k1", 400, "bad")]
        with self.assertRaises(kvclient.Unavailable):
            pipeline.run_chunks("t", chunks, work, 1, done={2},
                                on_done=lambda index, failures: state.add(index))
        self.assertEqual(sent, ["k0", "k1", "k3", "k4"])            # none after the error
        again = pipeline.ResumeState(state.path, pipeline.identity(source), 2)
        self.assertEqual(again.load(), {0, 1, 3, 4})
        with open(state.path) as f:
            self.assertEqual(json.load(f)["done"], [[0, 2], [3, 5]])
        os.utime(source, ns=(0, 0))                          # the input changed: start over
        self.assertEqual(pipeline.ResumeState(state.path, pipeline.identity(source), 2).load(),
                         set())


def kv(*args, url=None, **kwargs):
    env = dict(os.environ, KV_URL=url or Service.start().url)
    return subprocess.run([KV] + list(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          env=env, timeout=600, **kwargs)


class LoadTsvTest(unittest.TestCase):
    def setUp(self):
        Service.wipe()
        self.dir = tempfile.mkdtemp(prefix="kv-load-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.store = kvclient.connect(Service.start().url)
        self.addCleanup(self.store.close)

    def write(self, name, text):
        path = os.path.join(self.dir, name)
        with open(path, "w", encoding="utf-8", newline="") as f:
            f.write(text)
        return path

    def test_leading_zeros_and_other_digits_stay_text(self):
        path = self.write("crafted.tsv", "\ufeffid\tcode\tpower\tcount\tprice\tnote\r\n"
                                         "agent\t007\t\u00b2\t7\t1.50\t\"quoted\"\r\n"
                                         "\n"
                                         "arabic\t\u0663\t-0\t-12\t1.5\t\r\n")
        done = kv("load", path, "--state", os.path.join(self.dir, "s"))
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertEqual(json.loads(self.store.get("agent")),
                         {"code": "007", "power": "\u00b2", "count": 7, "price": "1.50",
                          "note": '"quoted"'})
        self.assertEqual(json.loads(self.store.get("arabic")),
                         {"code": "\u0663", "power": "-0", "count": -12, "price": 1.5, "note": ""})
        self.assertEqual(self.store.keys(), ["agent", "arabic"])
        done = kv("load", path, "--text", "--state", os.path.join(self.dir, "s"))
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertEqual(json.loads(self.store.get("arabic"))["count"], "-12")
        self.assertIn(b"reads back", kv("load", "--help").stdout)

    def test_a_line_with_missing_or_extra_fields_stops_the_load(self):
        path = self.write("ragged.tsv", "id\ta\tb\nok\t1\t2\nshort\t1\n")
        done = kv("load", path)
        self.assertNotEqual(done.returncode, 0)
        self.assertIn(b"line 3 has 2 fields, the header has 3", done.stderr)
        self.assertNotIn(b"Traceback", done.stderr)
        self.assertEqual(self.store.keys(), [])


class InterruptTest(unittest.TestCase):
    """Ctrl-C in the middle of a real load: exit 130, one message after the
    closed progress bar, a resume file naming exactly what arrived, and a
    rerun that sends only the rest (each key then has version 1)."""
    ROWS = 12000

    def setUp(self):
        Service.wipe()
        self.dir = tempfile.mkdtemp(prefix="kv-interrupt-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.path = os.path.join(self.dir, "npm.tsv")
        with open(DATA, encoding="utf-8") as source, open(self.path, "w", encoding="utf-8") as f:
            for _ in range(self.ROWS + 1):
                f.write(next(source))
        self.keys = [key for key, _ in rows.read_tsv(self.path)]

    def versions(self) -> dict:
        store = kvclient.connect(Service.start().url)
        try:
            return {item["key"]: item["version"] for page in store.pages() for item in page["items"]}
        finally:
            store.close()

    def test_ctrl_c_stops_the_load_and_a_rerun_sends_only_the_rest(self):
        state = os.path.join(self.dir, "state")
        master, slave = terminal()                    # stderr on a terminal: the bar is drawn
        process = subprocess.Popen([KV, "load", self.path, "--state", state, "--connections", "2"],
                                   stdout=subprocess.PIPE, stderr=slave,
                                   env=dict(os.environ, KV_URL=Service.start().url))
        os.close(slave)
        shown = []
        reader = threading.Thread(target=read_all, args=(master, shown))
        reader.start()
        done = set()
        while len(done) < 2 and process.poll() is None:
            time.sleep(0.02)
            done = self.recorded(state)
        process.send_signal(signal.SIGINT)
        process.wait(60)
        reader.join(10)
        os.close(master)
        output = b"".join(shown).decode("utf-8", "replace")
        self.assertEqual(process.returncode, 130, output)
        self.assertNotIn("Traceback", output)
        self.assertNotIn("KeyboardInterrupt", output)
        self.assertRegex(output, r"\rload: [^\r\n]*rows/s\]\r?\n"      # the bar, closed
                                 r"load: interrupted: \d+ of 12000 rows acknowledged; run the same "
                                 r"command again to send the other \d+ \(resume file [^)]+\)\r?\n$")
        recorded = self.recorded(state)
        self.assertLess(len(recorded), 12, "the load was not interrupted")
        expected = {key for i in recorded for key in self.keys[i * 1000:(i + 1) * 1000]}
        self.assertEqual(set(self.versions()), expected)   # exactly what the file says arrived

        again = kv("load", self.path, "--state", state)
        self.assertEqual(again.returncode, 0, again.stderr)
        self.assertIn(("resuming: %d of 12000 rows were acknowledged before; sending the other %d"
                       % (len(expected), 12000 - len(expected))).encode(), again.stderr)
        versions = self.versions()
        self.assertEqual(sorted(versions), sorted(self.keys, key=str.encode))
        self.assertEqual({k: v for k, v in versions.items() if v != 1}, {})   # none sent twice
        self.assertFalse(os.path.exists(state))

    @staticmethod
    def recorded(state) -> set:
        try:
            with open(state) as f:
                ranges = json.load(f)["done"]
        except (FileNotFoundError, ValueError):
            return set()
        return {i for start, end in ranges for i in range(start, end)}
