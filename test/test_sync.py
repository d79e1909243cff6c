"""sync.py on 3 and 4 real MariaDB partitions, replicas = 2."""

import io
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import unittest
from unittest import mock

import dbservers
import sync
from kv.sync import phases
from kv.configuration import Settings, SyncSettings
from datastore import Datastore, KeyNotFound, PartitionUnavailable, Record, now_us
from partition_contract import _put
from store_contract import clock_offset

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
B = b"default"


class SyncHarness:
    """Four shared MariaDB servers, emptied, and helpers to run and check passes."""

    def setUp(self):
        self.servers = dbservers.shared(4)
        for server in self.servers:
            server.execute("DELETE FROM kv_rows")
            server.execute("DELETE FROM kv_sync_state")
        self.dir = tempfile.mkdtemp(prefix="kv-sync-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.store = self.make_store(3)

    def make_store(self, count, batch_size=1000, replicas=2):
        settings = Settings("test", 1048576, 16777216, replicas,
                            tuple(s.settings("partition-%d" % (i + 1))
                                  for i, s in enumerate(self.servers[:count])),
                            SyncSettings(tombstone_days=7, batch_size=batch_size))
        store = Datastore(settings)
        self.addCleanup(store.close)
        return store

    def config(self, count, batch_size=1000):
        path = os.path.join(self.dir, "c%d.cfg" % count)
        return dbservers.write_config(path, self.servers[:count], 2,
                                      "[sync]\nbatch_size = %d\n" % batch_size)

    def sync(self, store=None, **kwargs):
        out = io.StringIO()
        code = sync.run(store or self.store, out=out, **kwargs)
        return code, out.getvalue()

    def holders(self, count):
        """key -> set of partition names holding a row for it."""
        found = {}
        for i, server in enumerate(self.servers[:count]):
            for (key,) in server.execute("SELECT k FROM kv_rows"):
                found.setdefault(bytes(key), set()).add("partition-%d" % (i + 1))
        return found

    def assert_converged(self, store=None, count=3):
        store = store or self.store
        code, out = self.sync(store, check=True)
        self.assertEqual(code, 0, out)
        for key, names in self.holders(count).items():
            self.assertEqual(names, {p.name for p in store.placement(B, key)}, key)

    def down(self, store, name):
        store.partitions[name]._down_until = float("inf")

    def up(self, store, name):
        store.partitions[name]._down_until = 0


class SyncTest(SyncHarness, unittest.TestCase):
    def test_writes_converge_on_every_replica(self):
        for i in range(300):
            self.store.put(B, b"k%d" % i, b"v%d" % i)
        code, out = self.sync()
        self.assertEqual(code, 0, out)
        self.assertRegex(out, r"sync: scanned=\d+ copied=300 moved=0 purged=0 conflicts=0 "
                              r"skipped=0 seconds=[\d.]+")
        self.assert_converged()
        code, out = self.sync()
        self.assertIn("copied=0", out)

    def test_a_delete_is_never_undone_by_a_stale_replica(self):
        for i in range(50):
            self.store.put(B, b"k%d" % i, b"old")
        self.sync()
        for i in range(50):
            second = self.store.placement(B, b"k%d" % i)[1]
            _put(second, b"k%d" % i, b"", deleted=True)   # the owner misses the delete
        code, out = self.sync()
        self.assertEqual(code, 0, out)
        self.assert_converged()
        for i in range(50):
            with self.assertRaises(KeyNotFound):
                self.store.get(B, b"k%d" % i)
        # Past tombstone_days the tombstones are purged everywhere, and still nothing returns.
        with clock_offset(self.store, 8 * 86400):
            code, out = self.sync()
            self.assertIn("purged=100", out)
            for i in range(50):
                with self.assertRaises(KeyNotFound):
                    self.store.get(B, b"k%d" % i)
        self.assertEqual(self.holders(3), {})

    def test_conflicting_writes_while_the_owner_was_down_newest_wins(self):
        keys = [b"c%d" % i for i in range(40)]
        for key in keys:
            self.store.put(B, key, b"original")
        self.sync()
        for key in keys:
            first, second = [p.name for p in self.store.placement(B, key)]
            self.down(self.store, first)
            self.store.put(B, key, b"older write on " + second.encode())
            self.up(self.store, first)
            self.down(self.store, second)
            self.store.put(B, key, b"newer write on " + first.encode())
            self.up(self.store, second)
        code, out = self.sync()
        self.assertEqual(code, 0, out)
        self.assertNotIn("conflicts=0", out)
        self.assert_converged()
        for key in keys:
            first = self.store.placement(B, key)[0].name
            for partition in self.store.placement(B, key):
                self.assertEqual(partition.read(B, key).value, b"newer write on " + first.encode())

    def test_expired_rows_are_purged(self):
        self.store.put(B, b"short", b"v", ttl_seconds=60)
        self.store.put(B, b"long", b"v")
        self.sync()
        with clock_offset(self.store, 61 + sync.EXPIRY_GRACE_SECONDS):
            code, out = self.sync()
        self.assertIn("purged=2", out)
        self.assertEqual(set(self.holders(3)), {b"long"})

    def test_incremental_pass_reads_only_what_changed(self):
        for i in range(1000):
            self.store.put(B, b"k%04d" % i, b"v")
        self.sync()
        self.sync()
        for i in range(10):
            self.store.put(B, b"k%04d" % i, b"changed")
        code, out = self.sync()
        scanned = int(out.split("scanned=")[1].split()[0])
        # The 10 rows (their copies on the second replicas are no new change).
        self.assertLessEqual(scanned, 20, out)
        self.assertIn("copied=10", out)
        self.assert_converged()

    def test_dry_run_changes_nothing(self):
        for i in range(100):
            self.store.put(B, b"k%d" % i, b"v")
        before = [s.execute("SELECT * FROM kv_rows ORDER BY bucket, k") for s in self.servers]
        code, out = self.sync(dry_run=True)
        self.assertIn("(dry run)", out)
        self.assertIn("copied=100", out)
        self.assertEqual([s.execute("SELECT * FROM kv_rows ORDER BY bucket, k")
                          for s in self.servers], before)
        self.assertEqual([s.execute("SELECT * FROM kv_sync_state") for s in self.servers],
                         [()] * 4)

    def test_verify_finds_a_divergence_planted_in_sql(self):
        for i in range(100):
            self.store.put(B, b"k%d" % i, b"v")
        self.sync()
        victim = self.store.placement(B, b"k42")[1].name
        index = int(victim.split("-")[1]) - 1
        self.servers[index].execute("UPDATE kv_rows SET value = 'tampered' WHERE k = 'k42'")
        code, out = self.sync(check=True)
        self.assertEqual(code, 2, out)
        self.assertIn("divergent 'k42'", out)
        self.assertIn("100 keys, 1 divergent", out)
        # The subcommand's exit code, as cron and scripts see it.
        done = subprocess.run([sys.executable, "sync.py", "--verify"], cwd=ROOT,
                              env=dict(os.environ, KV_CONFIG=self.config(3)),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.assertEqual(done.returncode, 2, done.stdout)

    def test_a_partition_down_during_a_pass_is_skipped_then_caught_up(self):
        for i in range(200):
            self.store.put(B, b"k%d" % i, b"v")
        self.down(self.store, "partition-2")
        code, out = self.sync()
        self.assertEqual(code, 1, out)
        self.assertIn("skipped=1 (partition-2)", out)
        self.up(self.store, "partition-2")
        code, out = self.sync()
        self.assertEqual(code, 0, out)
        self.assert_converged()

    def test_only_one_sync_holds_the_lock(self):
        other = "otherhost:4242".encode()
        self.store.partitions["partition-1"].set_state(sync.LOCK, other)
        self.store.put(B, b"k", b"v")
        code, out = self.sync()
        self.assertEqual(code, 0)
        self.assertIn("another sync holds the lock: otherhost:4242", out)
        self.assertEqual(len(self.holders(3)[b"k"]), 1)          # nothing was copied
        # Two passes racing for a free lock: exactly one gets it.
        self.servers[0].execute("DELETE FROM kv_sync_state WHERE name = 'lock'")
        contenders = [sync.Sync(self.make_store(3)) for _ in range(8)]
        for i, contender in enumerate(contenders):
            contender.holder = "host-%d:%d" % (i, 1000 + i)
        barrier = threading.Barrier(len(contenders))
        results = []

        def contend(contender):
            barrier.wait()
            results.append(contender.acquire())
        threads = [threading.Thread(target=contend, args=(c,)) for c in contenders]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.assertEqual(results.count(None), 1, results)

    def test_kill_9_in_the_middle_of_a_pass_then_rerun_converges(self):
        expected = {}
        records = []
        now = now_us()
        for i in range(6000):
            key = b"kill-%05d" % i
            deleted = i % 10 == 0
            record = Record(B, key, b"" if deleted else b"value %d" % i, 1, now, now + i, None, deleted)
            records.append(record)
            if not deleted:
                expected[key] = record.value
        for partition in self.store.partitions.values():   # each row on its owner only
            partition.store_if_newer([r for r in records
                                      if self.store.placement(B, r.key)[0] is partition])
        process = subprocess.Popen([sys.executable, "sync.py"], cwd=ROOT,
                                   env=dict(os.environ, KV_CONFIG=self.config(3, batch_size=50)),
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while sum(len(v) for v in self.holders(3).values()) < 6000 + 500:
            self.assertIsNone(process.poll(), process.stdout.read() if process.poll() else "")
            self.assertLess(time.monotonic(), deadline)
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
        process.wait()
        copies = sum(len(v) for v in self.holders(3).values())
        self.assertLess(copies, 12000, "sync finished before it was killed")
        done = subprocess.run([sys.executable, "sync.py"], cwd=ROOT,
                              env=dict(os.environ, KV_CONFIG=self.config(3, batch_size=50)),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.assertEqual(done.returncode, 0, done.stdout)
        self.assertNotIn(b"holds the lock", done.stdout)
        self.assert_converged()
        for key, value in expected.items():
            self.assertEqual(self.store.get(B, key)[0].value, value)
        for record in records:
            if record.deleted:
                with self.assertRaises(KeyNotFound):
                    self.store.get(B, record.key)

    def test_adding_a_4th_partition_moves_keys_without_a_single_404(self):
        keys = [b"user:%05d" % i for i in range(10000)]
        now = now_us()
        records = [Record(B, key, b"value of " + key, 1, now, now, None, False) for key in keys]
        for partition in self.store.partitions.values():
            partition.store_if_newer([r for r in records
                                      if self.store.placement(B, r.key)[0] is partition])
        self.assertEqual(self.sync()[0], 0)
        self.assert_converged()
        store4 = self.make_store(4)
        self.servers[3].apply_schema()
        before = {k: {p.name for p in self.store.placement(B, k)} for k in keys}
        after = {k: {p.name for p in store4.placement(B, k)} for k in keys}
        moving = [k for k in keys if before[k] != after[k]]
        self.assertLess(abs(len(moving) / 10000 - 0.5), 0.1)      # replicas/(N+1) = 2/4

        misses, loops, stop = [], [0], threading.Event()
        reader = self.make_store(4)

        def read_forever():
            while not stop.is_set():
                for key in keys:
                    try:
                        if reader.get(B, key)[0].value != b"value of " + key:
                            misses.append((key, "wrong value"))
                    except Exception as e:     # every failure is reported by the assertion
                        misses.append((key, repr(e)))
                loops[0] += 1
        thread = threading.Thread(target=read_forever)
        thread.start()
        try:
            while loops[0] < 1:
                time.sleep(0.05)
            code, out = self.sync(store4)
            self.assertEqual(code, 0, out)
            self.assertRegex(out, r"moved=%d " % len(moving))
            started = loops[0]
            while loops[0] < started + 2:
                time.sleep(0.05)
        finally:
            stop.set()
            thread.join()
        self.assertEqual(misses, [])
        self.assert_converged(store4, count=4)
        self.assertEqual(len(self.holders(4)), 10000)

    def test_full_restores_a_wiped_partition(self):
        for i in range(300):
            self.store.put(B, b"k%d" % i, b"v%d" % i)
        self.sync()
        self.servers[1].execute("DELETE FROM kv_rows")          # partition-2 replaced, empty
        self.servers[1].execute("DELETE FROM kv_sync_state")
        self.sync()
        code, out = self.sync()
        self.assertIn("copied=0", out)                          # incremental: nothing changed
        self.assertEqual(self.sync(check=True)[0], 2)
        code, out = self.sync(full=True)
        self.assertEqual(code, 0, out)
        self.assertNotIn("copied=0", out)
        self.assert_converged()

    def test_partition_option_limits_the_pass_to_one_source(self):
        for i in range(300):
            self.store.put(B, b"k%d" % i, b"v")
        code, out = self.sync(only="partition-1")
        owned = sum(1 for i in range(300)
                    if self.store.placement(B, b"k%d" % i)[0].name == "partition-1")
        self.assertIn("copied=%d " % owned, out)
        self.assertEqual(self.sync(check=True, only="partition-1")[0], 0)
        self.assertEqual(self.sync(check=True)[0], 2)


class DataSafetyTest(SyncHarness, unittest.TestCase):
    """Change order, stranded writes, replicas and the lease (the data-safety issue)."""

    def test_a_web_node_whose_clock_runs_ahead_stops_no_other_write_from_replicating(self):
        with clock_offset(self.store, 60):
            for i in range(20):
                self.store.put(B, b"fast-%d" % i, b"v")
        self.assertEqual(self.sync()[0], 0)
        for i in range(20):
            self.store.put(B, b"right-%d" % i, b"v")
        code, out = self.sync()
        self.assertIn("copied=20 ", out)
        self.assert_converged()

    def test_an_idle_pass_reads_nothing_and_says_when_it_started(self):
        for start in range(0, 3000, 1000):
            self.store.batch(B, [{"op": "put", "key": b"k%05d" % i, "value": b"v"}
                                 for i in range(start, start + 1000)])
        code, out = self.sync()
        self.assertIn("copied=3000 ", out)
        code, out = self.sync()
        self.assertIn("scanned=0 copied=0 ", out)
        self.assertRegex(out, r"sync: pass started \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ by ")

    def test_raising_replicas_completes_every_placement(self):
        single = self.make_store(3, replicas=1)
        keys = [b"r%03d" % i for i in range(103)]
        for key in keys:
            single.put(B, key, b"value " + key)
        self.assertEqual(self.sync(single)[0], 0)
        self.assertEqual({len(names) for names in self.holders(3).values()}, {1})
        code, out = self.sync()                  # self.store: replicas = 2
        self.assertEqual(code, 0, out)
        self.assert_converged()
        self.assertEqual({len(names) for names in self.holders(3).values()}, {2})

    def test_an_old_configuration_node_writing_through_a_partition_addition_loses_nothing(self):
        """A web node not yet restarted with the 4th partition keeps writing
        (puts and deletes) while sync moves keys: afterwards every key reads
        as the last acknowledged write, and --verify finds nothing."""
        keys = [b"user:%04d" % i for i in range(400)]
        for key in keys:
            self.store.put(B, key, b"first " + key)
        self.assertEqual(self.sync()[0], 0)
        self.servers[3].apply_schema()
        store4 = self.make_store(4)
        expected, stop = {key: b"first " + key for key in keys}, threading.Event()

        def old_node():
            round = 0
            while not stop.is_set():
                round += 1
                for i, key in enumerate(keys):
                    try:
                        if (i + round) % 7 == 0:
                            self.store.delete(B, key)
                            expected[key] = None
                        else:
                            value = b"round %d " % round + key
                            self.store.put(B, key, value)
                            expected[key] = value
                    except KeyNotFound:
                        expected[key] = None
        writer = threading.Thread(target=old_node)
        writer.start()
        try:
            for _ in range(3):
                self.sync(store4)
        finally:
            stop.set()
            writer.join()
        for _ in range(2):
            code, out = self.sync(store4)
        self.assertEqual(code, 0, out)
        self.assert_converged(store4, count=4)
        for key, value in expected.items():
            if value is None:
                with self.assertRaises(KeyNotFound, msg=key):
                    store4.get(B, key)
            else:
                self.assertEqual(store4.get(B, key)[0].value, value, key)

    def test_losing_the_lease_partition_mid_pass_ends_the_pass_cleanly(self):
        for i in range(300):
            self.store.put(B, b"k%d" % i, b"v")
        real = phases.converge

        def converge_then_lose_the_lease(pass_, name, rows):
            self.down(self.store, "partition-1")            # it holds the lease
            return real(pass_, name, rows)
        with mock.patch.object(phases, "converge", converge_then_lose_the_lease):
            code, out = self.sync()
        self.assertEqual(code, 1, out)
        self.assertRegex(out, r"sync: scanned=\d+ copied=\d+ moved=0 purged=0 conflicts=0 "
                              r"skipped=\d+ \(partition-1.*\) seconds=")
        self.up(self.store, "partition-1")
        self.assertEqual(self.sync()[0], 0)
        self.assert_converged()

    def test_a_pass_whose_lease_is_not_on_the_first_partition_moves_and_purges_nothing(self):
        """Another pass may hold the lease on partition-1 then: only copies,
        which are safe beside it, run; moves and purges wait."""
        key = next(b"stranded-%d" % i for i in range(100)
                   if "partition-1" in {p.name for p in self.store.placement(B, b"stranded-%d" % i)})
        off = next(n for n in self.store.names
                   if n not in {p.name for p in self.store.placement(B, key)})
        _put(self.store.partitions[off], key, b"v")
        first = self.store.partitions["partition-1"]
        blip = PartitionUnavailable(["partition-1"], "down")
        with mock.patch.object(first, "set_state", side_effect=blip):
            code, out = self.sync()
        self.assertEqual(code, 1, out)
        self.assertIn("moved=0 purged=0", out)
        self.assertIn(off, self.holders(3)[key])
        code, out = self.sync()
        self.assertIn("moved=1 ", out)
        self.assert_converged()
