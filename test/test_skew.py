"""Clock skew: two web nodes on three MariaDB partitions (replicas = 2), one of
them 60 s fast under libfaketime, and a sync pass run on a host whose clock is
60 s fast.  API.md: an acknowledged write is never lost and a deleted key
never comes back, whatever the clocks of the web nodes and sync hosts say.
After a normal sync pass every acknowledged write must be on every replica of
its placement (read straight from each partition's kv_rows) and
``sync.py --verify`` must agree.
"""

import calendar
import datetime
import glob
import os
import signal
import subprocess
import sys
import tempfile
import time
import unittest

import requests

import dbservers
from datastore import placement

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SKEW_SECONDS = 60
NAMES = ["partition-1", "partition-2", "partition-3"]
TEXT = {"Content-Type": "text/plain"}
TIMEOUT = 10                      # seconds, every request and every sync.py run x 12


def faketime(seconds: int) -> dict:
    """The environment that runs a program ``seconds`` fast: libfaketime
    preloaded (Debian's faketime package), without the ``faketime`` wrapper,
    which would stand between the test and the process it stops.  Only the
    wall clock moves; the monotonic clock (timeouts, lock waits) stays real."""
    libraries = glob.glob("/usr/lib/*/faketime/libfaketime.so.1")
    if not libraries:
        raise AssertionError("libfaketime is not installed (Debian package faketime; "
                             "make test installs it)")
    return {"LD_PRELOAD": libraries[0], "FAKETIME": "%+ds" % seconds,
            "FAKETIME_DONT_FAKE_MONOTONIC": "1"}


# 2026-11-23: libfaketime 0.9.10 (Debian bookworm) with FAKETIME_DONT_FAKE_MONOTONIC
# makes Python 3.11's time.sleep, a clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME),
# fail with EINVAL (libfaketime issue 426; FAKETIME_DONT_FAKE_MONOTONIC=1 faketime
# -f +60s python3 -c 'import time; time.sleep(1)').  Faking the monotonic clock as
# well hangs every timed lock wait instead (sem_clockwait is not faked).  So the
# fast processes keep the real monotonic clock and sleep with select().
SLEEP_FIX = "import select, time; time.sleep = lambda s: select.select([], [], [], max(s, 0))\n"


def fast(command):
    """``[python, script, args...]`` run with SLEEP_FIX applied first."""
    assert command[0] == sys.executable
    return [sys.executable, "-c", SLEEP_FIX + "import runpy, sys; sys.argv = sys.argv[1:]; "
            "runpy.run_path(sys.argv[0], run_name='__main__')"] + command[1:]


def forget_clock(pid: int) -> None:
    """Remove the shared memory and semaphore that libfaketime made for the
    process ``pid`` (/dev/shm/faketime_shm_PID, sem.faketime_sem_PID), which a
    process that does not exit normally leaves behind."""
    for name in ("faketime_shm_%d" % pid, "sem.faketime_sem_%d" % pid):
        try:
            os.unlink(os.path.join("/dev/shm", name))
        except OSError:
            pass


def run(command, env, timeout):
    """Run ``command`` in its own process group; kill the group on a timeout.

    :returns: (exit code, output)."""
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, start_new_session=True)
    try:
        out, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        out, _ = process.communicate()
        forget_clock(process.pid)
        raise AssertionError("%s timed out after %d s:\n%s"
                             % (" ".join(command), timeout, out.decode("utf-8", "replace")))
    forget_clock(process.pid)
    return process.returncode, out.decode("utf-8", "replace").strip()


def rfc3339_seconds(text: str) -> float:
    moment = datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ")
    return calendar.timegm(moment.timetuple()) + moment.microsecond / 1e6


class WebNode:
    """``python controller.py 127.0.0.1:PORT`` in its own process group."""

    def __init__(self, config, env=None):
        port = dbservers.free_port()
        self.url = "http://127.0.0.1:%d" % port
        self.log = tempfile.TemporaryFile()
        command = [sys.executable, "controller.py", "127.0.0.1:%d" % port]
        self.process = subprocess.Popen(
            fast(command) if env else command, cwd=ROOT,
            env=dict(os.environ, KV_CONFIG=config, PYTHONUNBUFFERED="1", **(env or {})),
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 30
        while True:
            try:
                requests.get(self.url + "/health", timeout=1)
                return
            except requests.RequestException:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise AssertionError("web node did not answer:\n" + self.output())
                time.sleep(0.1)

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read().decode("utf-8", "replace")[-3000:]

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.process.wait()
        forget_clock(self.process.pid)


class ClockSkewTest(unittest.TestCase):
    def setUp(self):
        self.fake_env = faketime(SKEW_SECONDS)
        self.servers, self.config = dbservers.cluster(self, "skew")
        self.correct = WebNode(self.config)
        self.addCleanup(self.correct.stop)
        self.fast = WebNode(self.config, self.fake_env)
        self.addCleanup(self.fast.stop)
        self.http = requests.Session()
        self.addCleanup(self.http.close)
        self.acked = {}           # key -> the value of its last acknowledged write, None = deleted
        self.writes = 0

    def put(self, node, key, value):
        r = self.http.put(node.url + "/keys/" + key, data=value.encode(), headers=TEXT,
                          timeout=TIMEOUT)
        self.assertIn(r.status_code, (200, 201), "PUT %s: %s %s" % (key, r.status_code, r.text))
        self.acked[key] = value
        self.writes += 1
        return r.json()

    def delete(self, node, key):
        r = self.http.delete(node.url + "/keys/" + key, timeout=TIMEOUT)
        self.assertEqual(r.status_code, 204, "DELETE %s: %s" % (key, r.text))
        self.acked[key] = None
        self.writes += 1

    def sync(self, *args, env=None):
        command = [sys.executable, "sync.py"] + list(args)
        return run(fast(command) if env else command,
                   dict(os.environ, KV_CONFIG=self.config, **(env or {})), TIMEOUT * 12)

    def test_fast_web_node_and_fast_sync_host_lose_no_acknowledged_write(self):
        # libfaketime really moves a Python program's clock, and the fast node's.
        code, probe = run([sys.executable, "-c",
                           SLEEP_FIX + "time.sleep(0.01); print(time.time())"],
                          dict(os.environ, **self.fake_env), TIMEOUT)
        self.assertEqual(code, 0, probe)
        shift = float(probe) - time.time()
        self.assertTrue(SKEW_SECONDS - 10 < shift < SKEW_SECONDS + 10,
                        "faketime did not move python's clock: %.1f s instead of %d"
                        % (shift, SKEW_SECONDS))
        fast_shift = rfc3339_seconds(self.put(self.fast, "probe-fast", "fast")["modified"]) \
            - time.time()
        correct_shift = rfc3339_seconds(self.put(self.correct, "probe-correct", "correct")
                                        ["modified"]) - time.time()
        self.assertTrue(SKEW_SECONDS - 10 < fast_shift < SKEW_SECONDS + 10,
                        "the fast node's records are not %d s ahead: %.1f s\n%s"
                        % (SKEW_SECONDS, fast_shift, self.fast.output()))
        self.assertLess(abs(correct_shift), 10, "the correct node's clock is off")

        # 1. Keys written through the fast node.
        for i in range(40):
            self.put(self.fast, "a%d" % i, "a%d from the fast node" % i)
        # 2. Other keys, overwrites and deletes through the correct node.
        for i in range(40):
            self.put(self.correct, "b%d" % i, "b%d from the correct node" % i)
        for i in range(20):
            self.put(self.correct, "a%d" % i, "a%d overwritten by the correct node" % i)
        for i in range(20, 25):
            self.delete(self.correct, "a%d" % i)
        # 3. One sync pass on a host whose clock is fast.
        fast_sync = self.sync(env=self.fake_env)
        # 4. More writes through the correct node.
        for i in range(40):
            self.put(self.correct, "c%d" % i, "c%d after the fast sync" % i)
        for i in range(20):
            self.put(self.correct, "b%d" % i, "b%d overwritten after the fast sync" % i)
        for i in range(25, 30):
            self.put(self.correct, "a%d" % i, "a%d overwritten after the fast sync" % i)
        for i in range(20, 25):
            self.delete(self.correct, "b%d" % i)
        # 5. A normal sync pass, then --verify.
        normal_sync = self.sync()
        verify = self.sync("--verify")

        # Every acknowledged write on every replica of its placement.
        rows = {}
        for name, server in zip(NAMES, self.servers):
            for key, value, deleted in server.execute(
                    "SELECT k, value, deleted FROM kv_rows WHERE bucket = 'default'"):
                rows[(name, bytes(key).decode())] = (bytes(value).decode("utf-8", "replace"),
                                                    bool(deleted))
        wrong = []
        for key, value in sorted(self.acked.items()):
            for name in placement(b"default", key.encode(), NAMES, 2):
                held = rows.get((name, key))      # (value, deleted) or None
                if held is None or held[1] != (value is None) or \
                        (value is not None and held[0] != value):
                    wrong.append("%s on %s: %s, acknowledged %s" % (
                        key, name, "missing" if held is None else
                        ("tombstone" if held[1] else repr(held[0])),
                        "delete" if value is None else repr(value)))
        # ... and read back through the correct node.
        misread = []
        for key, value in sorted(self.acked.items()):
            r = self.http.get(self.correct.url + "/keys/%s?format=raw" % key, timeout=TIMEOUT)
            got = r.content.decode("utf-8", "replace") if r.status_code == 200 else None
            if r.status_code not in (200, 404) or got != value:
                misread.append("%s: %s %r, acknowledged %r" % (key, r.status_code, got, value))

        print("\n  skew: fast node +%.1f s, writes=%d keys=%d; sync at +%d s -> %s; sync -> %s; "
              "verify -> %s; replicas wrong=%d; reads wrong=%d"
              % (fast_shift, self.writes, len(self.acked), SKEW_SECONDS, fast_sync[0],
                 normal_sync[0], verify[0], len(wrong), len(misread)), file=sys.stderr)
        report = ("sync at +%d s -> %s:\n%s\nsync -> %s:\n%s\nsync --verify -> %s:\n%s\n"
                  "%d replicas lack their acknowledged write, e.g.\n  %s\n"
                  "%d keys read wrong through GET, e.g.\n  %s"
                  % (SKEW_SECONDS, fast_sync[0], fast_sync[1], normal_sync[0], normal_sync[1],
                     verify[0], verify[1], len(wrong), "\n  ".join(wrong[:10]), len(misread),
                     "\n  ".join(misread[:10])))
        self.assertEqual((fast_sync[0], normal_sync[0], verify[0], len(wrong), len(misread)),
                         (0, 0, 0, 0, 0), report)
