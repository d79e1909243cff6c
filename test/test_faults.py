"""Jepsen-style fault test: the production server (granian, 2 workers) on three
MariaDB partitions with replicas = 2, 8 client threads doing PUT, conditional
PUT, DELETE and GET while a nemesis ``kill -9``s a random mariadbd (restarted
on its datadir a moment later) or a granian worker (respawned by granian), and
a cron-like thread runs ``sync.py``.  Then everything is restarted, sync runs
until it converges and ``sync.py --verify`` agrees, every key is read through
the service's GET and checked against the history of acknowledged answers
(history.py): nothing acknowledged may be lost, nothing deleted may come back.

Besides its own keys, every thread contends on a few shared keys with
GET-then-If-Match-PUT (If-None-Match: * when the GET says 404): of the
compare-and-swaps conditioned on one ETag at most one may win, even while a
partition is down and reads come from a stale replica (a write decided on the
current copy answers 503 instead), and each shared key must end with a
written value no older than its last acknowledged compare-and-swap.

The short form runs in ``make test``; ``make faults`` runs the long one
(FAULTS_SECONDS of load, FAULTS_KILLS kills; FAULTS_SEED replays a run's
choices).  The figures are printed on one line starting with ``faults:``.
"""

import calendar
import datetime
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import unittest

import requests

import dbservers
import history
from history import Cas, Final, Write, outcome_of

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GRANIAN = os.path.join(os.path.dirname(sys.executable), "granian")

LOAD_SECONDS = float(os.environ.get("FAULTS_SECONDS", "60"))
KILLS = int(os.environ.get("FAULTS_KILLS", "5"))
SEED = int(os.environ.get("FAULTS_SEED", "0")) or random.randrange(1, 10 ** 6)
THREADS = 8
KEYS_PER_THREAD = 50
SHARED_KEYS = 8                  # contended by every thread with compare-and-swaps
SHARED_SHARE = 0.2               # the share of a thread's operations on them
TIMEOUT = (2, 5)                 # connect, read (seconds) of every client request
SYNC_EVERY_SECONDS = 10          # the cron of the load phase
CONVERGE_ATTEMPTS = 8            # sync (+ --verify) passes allowed after the faults
SUBPROCESS_TIMEOUT = 180         # any one sync.py run
TEXT = {"Content-Type": "text/plain"}


def rfc3339_us(text: str) -> int:
    """``2026-11-22T10:00:00.123456Z`` -> microseconds since the epoch."""
    moment = datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ")
    return calendar.timegm(moment.timetuple()) * 1_000_000 + moment.microsecond


def live_children(pid: int):
    """PIDs of the processes whose parent is ``pid``, zombies left out (/proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % entry) as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat.rpartition(")")[2].split()
        if len(fields) > 1 and int(fields[1]) == pid and fields[0] not in ("Z", "X"):
            found.append(int(entry))
    return found


class Granian:
    """The production command line (README), in its own process group, with
    workers respawned after a crash."""

    def __init__(self, config: str, port: int):
        self.url = "http://127.0.0.1:%d" % port
        self.log = tempfile.TemporaryFile()
        command = [GRANIAN, "--interface", "wsgi", "--workers", "2", "--blocking-threads", "16",
                   "--respawn-failed-workers", "--respawn-interval", "0.5",
                   "--host", "127.0.0.1", "--port", str(port),
                   "--factory", "controller:create_application"]
        env = dict(os.environ, KV_CONFIG=config, PYTHONUNBUFFERED="1")
        self.process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=self.log,
                                        stderr=subprocess.STDOUT, start_new_session=True)

    def workers(self):
        return live_children(self.process.pid)

    def wait_ready(self, seconds: float = 60) -> None:
        """Until both workers run and /health answers 200."""
        deadline = time.monotonic() + seconds
        while True:
            assert self.process.poll() is None, "granian exited:\n" + self.output()
            try:
                if len(self.workers()) == 2 and \
                        requests.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            assert time.monotonic() < deadline, "granian not ready:\n" + self.output()
            time.sleep(0.2)

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read().decode("utf-8", "replace")[-4000:]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                pass
        try:                      # the master and any worker it left behind
            os.killpg(self.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.process.wait()


class Figures:
    """Counters shared by the threads (each += happens under the lock)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.counts = dict(ops=0, fivexx=0, fivexx_writes=0, no_answer=0, db_kills=0,
                           web_kills=0, syncs=0, stale_reads=0)

    def add(self, name, n=1):
        with self.lock:
            self.counts[name] += n


class FaultTest(unittest.TestCase):
    def setUp(self):
        self.servers, self.config = dbservers.cluster(self, "faults")
        self.env = dict(os.environ, KV_CONFIG=self.config)
        self.granian = Granian(self.config, dbservers.free_port())
        self.addCleanup(self.granian.stop)
        self.granian.wait_ready()
        self.figures = Figures()
        self.history = {}            # key -> [Write], each key written by one thread only
        self.shared = ["shared-k%d" % i for i in range(SHARED_KEYS)]
        self.cas = []                # [Cas] on the shared keys, all threads (list.append is atomic)
        self.stopping = threading.Event()
        self.errors = []             # exceptions of the helper threads

    # -- the helper threads -------------------------------------------------------
    def request(self, session, method, key, **kwargs):
        """One request; returns (response or None, status or None, started_us)."""
        started_us = time.time_ns() // 1000
        try:
            response = session.request(method, self.granian.url + "/keys/" + key,
                                       timeout=TIMEOUT, **kwargs)
        except requests.RequestException:
            self.figures.add("ops")
            self.figures.add("no_answer")
            return None, None, started_us
        self.figures.add("ops")
        if response.status_code >= 500:
            self.figures.add("fivexx")
        return response, response.status_code, started_us

    def write(self, session, key, kind, value, label, headers=None):
        if kind == "put":
            response, status, started = self.request(session, "PUT", key, data=value.encode(),
                                                     headers=dict(TEXT, **(headers or {})))
        else:
            response, status, started = self.request(session, "DELETE", key, headers=headers)
        if status is not None and status >= 500:
            self.figures.add("fivexx_writes")
        self.history[key].append(Write(kind, value, outcome_of(status), started, status, label))

    def client(self, thread: int) -> None:
        rnd = random.Random(SEED * 100 + thread)
        keys = ["t%d-k%d" % (thread, i) for i in range(KEYS_PER_THREAD)]
        for key in keys:
            self.history[key] = []
        number = 0
        with requests.Session() as session:
            while not self.stopping.is_set():
                number += 1
                if rnd.random() < SHARED_SHARE:
                    self.contend(session, rnd.choice(self.shared), "t%d-op%d" % (thread, number))
                    continue
                key = rnd.choice(keys)
                value = "%s-op%d" % (key, number)
                dice = rnd.random()
                if dice < 0.35:
                    self.write(session, key, "put", value, "put")
                elif dice < 0.60:            # read, then compare-and-swap on what was read
                    response, status = self.read(session, key)
                    if status == 200:
                        self.write(session, key, "put", value, "if-match",
                                   {"If-Match": response.headers["ETag"]})
                    elif status == 404:
                        self.write(session, key, "put", value, "if-none-match",
                                   {"If-None-Match": "*"})
                elif dice < 0.75:
                    self.write(session, key, "delete", None, "delete")
                else:
                    self.read(session, key)

    def contend(self, session, key, name):
        """GET a shared key, then PUT a unique value conditioned on the ETag
        the GET returned (If-None-Match: * after a 404); record it as a Cas."""
        response, status, _ = self.request(session, "GET", key)
        if status == 200:
            condition, headers = response.headers["ETag"], {"If-Match": response.headers["ETag"]}
        elif status == 404:
            condition, headers = history.ABSENT_TAG, {"If-None-Match": "*"}
        else:
            return
        read_partition = response.headers.get("X-Partition")
        value = "%s-%s" % (key, name)
        answer, status, started = self.request(session, "PUT", key, data=value.encode(),
                                               headers=dict(TEXT, **headers))
        if status is not None and status >= 500:
            self.figures.add("fivexx_writes")
        cas = Cas(key, condition, value, outcome_of(status), started, status,
                  partition=answer.headers.get("X-Partition") if answer is not None else None,
                  read_partition=read_partition)
        if cas.outcome == history.OK:       # the record it wrote: the server's order
            record = answer.json()
            cas.stamp = (rfc3339_us(record["modified"]), record["version"])
        self.cas.append(cas)

    def read(self, session, key):
        """GET the key; count the answer as stale when it differs from what the
        acknowledged writes say (reads may be stale by design until sync)."""
        response, status, _ = self.request(session, "GET", key)
        known, state = history.expected(self.history[key])
        if known and status in (200, 404):
            if (response.json()["value"] if status == 200 else history.ABSENT) != state:
                self.figures.add("stale_reads")
        return response, status

    def nemesis(self, started: float) -> None:
        rnd = random.Random(SEED)
        for i in range(KILLS):
            at = started + (i + 0.5 + rnd.uniform(-0.3, 0.3)) * LOAD_SECONDS / KILLS
            while time.monotonic() < at:
                if self.stopping.wait(0.1):
                    return
            if i % 2 == 0:                              # mariadbd and workers by turns
                server = rnd.choice(self.servers)
                server.kill()
                self.figures.add("db_kills")
                time.sleep(rnd.uniform(1, 4))
                server.start()
            else:
                deadline = time.monotonic() + 30
                while True:                                # one may still be respawning
                    workers = self.granian.workers()
                    try:
                        if workers:
                            os.kill(rnd.choice(workers), signal.SIGKILL)
                            self.figures.add("web_kills")
                            break
                    except ProcessLookupError:
                        pass
                    assert time.monotonic() < deadline, "no granian worker to kill"
                    time.sleep(0.2)

    def cron(self) -> None:
        while not self.stopping.wait(SYNC_EVERY_SECONDS):
            self.sync()
            self.figures.add("syncs")

    def guarded(self, target, *args):
        def run():
            try:
                target(*args)
            except BaseException as e:                 # reported by the test
                self.errors.append("%s: %r" % (target.__name__, e))
                self.stopping.set()
        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        return thread

    def sync(self, *args):
        try:
            done = subprocess.run([sys.executable, "sync.py"] + list(args), cwd=ROOT,
                                  env=self.env, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, timeout=SUBPROCESS_TIMEOUT)
        except subprocess.TimeoutExpired as e:
            return None, "timed out after %d s: %s" % (SUBPROCESS_TIMEOUT,
                                                      (e.stdout or b"").decode()[-2000:])
        return done.returncode, done.stdout.decode("utf-8", "replace")[-3000:]

    # -- the test -------------------------------------------------------------------
    def test_acknowledged_writes_survive_kill_9_of_partitions_and_workers(self):
        started = time.monotonic()
        clients = [self.guarded(self.client, t) for t in range(THREADS)]
        nemesis = self.guarded(self.nemesis, started)
        cron = self.guarded(self.cron)
        nemesis.join(LOAD_SECONDS + 300)
        while time.monotonic() < started + LOAD_SECONDS and not self.stopping.is_set():
            time.sleep(0.2)
        self.stopping.set()
        for thread in clients + [nemesis, cron]:
            thread.join(SUBPROCESS_TIMEOUT + 30)
            self.assertFalse(thread.is_alive(), "a helper thread hangs")
        load_seconds = time.monotonic() - started
        self.assertEqual(self.errors, [], self.granian.output())

        # Restart what is down, wait for the service, converge.
        for server in self.servers:
            if server.process.poll() is not None:
                server.start()
        self.granian.wait_ready()
        passes = []
        for _ in range(CONVERGE_ATTEMPTS):
            code, out = self.sync()
            passes.append("sync.py -> %s\n%s" % (code, out))
            if code == 0:
                code, out = self.sync("--verify")
                passes.append("sync.py --verify -> %s\n%s" % (code, out))
                if code == 0:
                    break
            time.sleep(1)
        else:
            self.fail("sync did not converge in %d attempts:\n%s"
                      % (CONVERGE_ATTEMPTS, "\n".join(passes)))

        # Read every key through the service, judge it against its history.
        tombstones = {}
        for server in self.servers:
            for key, modified in server.execute(
                    "SELECT k, modified_us FROM kv_rows WHERE bucket = 'default' AND deleted = 1"):
                key = bytes(key).decode()
                tombstones[key] = max(tombstones.get(key, 0), modified)
        verdicts, examples, unreadable = {}, [], []
        with requests.Session() as session:
            for key in sorted(self.history):
                final = self.read_final(session, key, tombstones.get(key))
                if final is None:
                    unreadable.append(key)
                    continue
                verdict = history.classify(self.history[key], final)
                verdicts[verdict] = verdicts.get(verdict, 0) + 1
                if verdict in ("lost", "resurrected") and len(examples) < 10:
                    examples.append(verdict + ": "
                                    + history.describe(key, self.history[key], final))
            shared_verdicts, shared_examples = {}, []
            for key in self.shared:
                final = self.read_final(session, key, tombstones.get(key))
                if final is None:
                    unreadable.append(key)
                    continue
                cases = [c for c in self.cas if c.key == key]
                verdict = history.classify_shared(cases, final)
                shared_verdicts[verdict] = shared_verdicts.get(verdict, 0) + 1
                if verdict != "ok":
                    shared_examples.append(verdict + ": "
                                           + history.describe_shared(key, cases, final))
        duplicates = history.duplicate_winners(self.cas)
        # How often the ETag came from another partition than the one most
        # wins committed on (the first of the placement): a replica, read while
        # the first was down; informational, shows the stale-replica race ran.
        usual = {}
        for key in self.shared:
            won = [c.partition for c in self.cas if c.key == key and c.outcome == history.OK]
            usual[key] = max(set(won), key=won.count) if won else None
        elsewhere = [c for c in self.cas if c.read_partition not in (None, usual[c.key])]
        duplicate_lines = ["%s %s won %d times:\n%s" % (key, tag, len(won),
                                                         "\n".join("    %s" % c for c in won))
                           for (key, tag), won in sorted(duplicates.items())]

        writes = [w for ws in self.history.values() for w in ws]
        figures = dict(self.figures.counts, kills=self.figures.counts["db_kills"]
                       + self.figures.counts["web_kills"],
                       acked=sum(w.outcome == history.OK for w in writes),
                       indeterminate=sum(w.outcome == history.UNKNOWN for w in writes),
                       lost=verdicts.get("lost", 0), resurrected=verdicts.get("resurrected", 0),
                       late=verdicts.get("late", 0), keys=len(self.history),
                       passes=len(passes), seconds=load_seconds, seed=SEED,
                       cas=len(self.cas), cas_won=sum(c.outcome == history.OK for c in self.cas),
                       cas_412=sum(c.status == 412 for c in self.cas),
                       cas_indeterminate=sum(c.outcome == history.UNKNOWN for c in self.cas),
                       dup=sum(len(won) - 1 for won in duplicates.values()),
                       elsewhere=len(elsewhere),
                       elsewhere_won=sum(c.outcome == history.OK for c in elsewhere),
                       shared_wrong=sum(n for v, n in shared_verdicts.items() if v != "ok"))
        line = ("faults: kills=%(kills)d (mariadbd=%(db_kills)d granian-worker=%(web_kills)d) "
                "ops=%(ops)d acked=%(acked)d lost=%(lost)d resurrected=%(resurrected)d "
                "indeterminate=%(indeterminate)d 5xx=%(fivexx)d (on writes %(fivexx_writes)d) "
                "no-answer=%(no_answer)d late=%(late)d stale-reads=%(stale_reads)d keys=%(keys)d "
                "syncs=%(syncs)d cas=%(cas)d cas-won=%(cas_won)d cas-412=%(cas_412)d "
                "cas-indeterminate=%(cas_indeterminate)d "
                "cas-read-on-replica=%(elsewhere)d (won %(elsewhere_won)d) dup-cas-winners=%(dup)d "
                "shared-wrong=%(shared_wrong)d "
                "converge-runs=%(passes)d load-seconds=%(seconds).0f seed=%(seed)d" % figures)
        print("\n  " + line, file=sys.stderr)
        self.assertEqual(unreadable, [], "keys the service would not answer after sync")
        self.assertGreater(figures["acked"], 0, line)
        self.assertEqual((figures["lost"], figures["resurrected"]), (0, 0),
                         line + "\n" + "\n".join(examples))
        self.assertGreater(figures["cas_won"], 0, line)
        self.assertEqual(figures["dup"], 0, line + "\n" + "\n".join(duplicate_lines))
        self.assertEqual(figures["shared_wrong"], 0, line + "\n" + "\n".join(shared_examples))

    def read_final(self, session, key, tombstone_us):
        """The key's Final state through GET /keys/{key}; None if it never answers."""
        for _ in range(10):
            try:
                response = session.get(self.granian.url + "/keys/" + key, timeout=TIMEOUT)
            except requests.RequestException:
                time.sleep(0.5)
                continue
            if response.status_code == 404:
                return Final(history.ABSENT, tombstone_us)
            if response.status_code == 200:
                record = response.json()
                self.assertEqual((record["key"], record["encoding"]), (key, "utf-8"))
                return Final(record["value"], rfc3339_us(record["modified"]), record["version"])
            time.sleep(0.5)
        return None


class HistoryCheckerTest(unittest.TestCase):
    """The checker's verdicts on hand-made histories (no servers)."""

    def w(self, kind, value, status, started=0):
        return Write(kind, value, outcome_of(status), started, status)

    def test_last_acknowledged_write_or_a_later_indeterminate_one(self):
        put_a, put_b = self.w("put", "a", 201, 10), self.w("put", "b", None, 20)
        failed_c = self.w("put", "c", 412, 30)
        delete = self.w("delete", None, 503, 40)
        writes = [put_a, put_b, failed_c, delete]
        for value in ("a", "b", history.ABSENT):
            self.assertEqual(history.classify(writes, Final(value, 50)), "ok", value)
        self.assertEqual(history.classify(writes, Final("c", 50)), "lost")
        self.assertEqual(history.classify([failed_c], Final(history.ABSENT)), "ok")
        self.assertEqual(history.classify([failed_c], Final("c", 50)), "lost")

    def test_an_older_value_is_lost_and_a_deleted_key_that_comes_back_resurrected(self):
        writes = [self.w("put", "a", 201, 10), self.w("put", "b", 200, 20)]
        self.assertEqual(history.classify(writes, Final("a", 11)), "lost")
        self.assertEqual(history.classify(writes, Final(history.ABSENT)), "lost")
        writes.append(self.w("delete", None, 204, 30))
        self.assertEqual(history.classify(writes, Final("b", 21)), "resurrected")
        self.assertEqual(history.classify(writes, Final(history.ABSENT, 31)), "ok")

    def test_an_earlier_indeterminate_write_explains_only_a_copy_stamped_after_the_last_ack(self):
        writes = [self.w("put", "a", None, 10), self.w("put", "b", 201, 20)]
        self.assertEqual(history.classify(writes, Final("a", 25)), "late")
        self.assertEqual(history.classify(writes, Final("a", 15)), "lost")
        writes = [self.w("put", "a", 504, 10), self.w("delete", None, 204, 20)]
        self.assertEqual(history.classify(writes, Final("a", 25)), "late")
        self.assertEqual(history.classify(writes, Final("a", 15)), "resurrected")

    def test_expected_state_for_reads_is_unknown_after_an_indeterminate_write(self):
        self.assertEqual(history.expected([]), (True, history.ABSENT))
        writes = [self.w("put", "a", 201), self.w("put", "b", 412)]
        self.assertEqual(history.expected(writes), (True, "a"))
        writes.append(self.w("delete", None, None))
        self.assertEqual(history.expected(writes), (False, None))
        writes.append(self.w("delete", None, 204))
        self.assertEqual(history.expected(writes), (True, history.ABSENT))


class SharedKeyCheckerTest(unittest.TestCase):
    """The compare-and-swap checks on hand-made histories (no servers)."""

    def cas(self, condition, value, status, stamp=None, key="s"):
        return Cas(key, condition, value, outcome_of(status), 0, status, stamp)

    def test_one_winner_per_etag_and_key_indeterminate_answers_left_out(self):
        cases = [self.cas(history.ABSENT_TAG, "a", 201, (10, 1)),
                 self.cas(history.ABSENT_TAG, "b", 412), self.cas('"1-a"', "c", 200, (20, 2)),
                 self.cas('"1-a"', "d", 503), self.cas('"1-a"', "e", None),
                 self.cas('"1-a"', "f", 200, (20, 2), key="other")]
        self.assertEqual(history.duplicate_winners(cases), {})
        cases.append(self.cas('"1-a"', "g", 200, (21, 2)))
        self.assertEqual(history.duplicate_winners(cases),
                         {("s", '"1-a"'): [cases[2], cases[-1]]})
        cases.append(self.cas(history.ABSENT_TAG, "h", 201, (30, 1)))
        self.assertEqual(len(history.duplicate_winners(cases)), 2)

    def test_the_final_value_was_written_and_no_older_than_the_last_acknowledged_cas(self):
        cases = [self.cas(history.ABSENT_TAG, "a", 201, (10, 1)),
                 self.cas('"1-a"', "b", 200, (20, 2)), self.cas('"2-14"', "c", 504),
                 self.cas('"2-14"', "d", 412)]
        for value, stamp, verdict in (("b", (20, 2), "ok"), ("c", (25, 3), "ok"),
                                      ("a", (10, 1), "stale"), ("d", (25, 3), "unwritten"),
                                      ("x", (25, 3), "unwritten"),
                                      (history.ABSENT, (None, None), "lost")):
            self.assertEqual(history.classify_shared(cases, Final(value, *stamp)), verdict, value)
        self.assertEqual(history.classify_shared([], Final(history.ABSENT)), "ok")
        self.assertEqual(history.classify_shared(cases[2:], Final(history.ABSENT)), "ok")
        self.assertEqual(history.classify_shared(cases[2:], Final("c", 25, 3)), "ok")
