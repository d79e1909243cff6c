"""One connection per thread per partition (kv.storage.threadconn), on a real
MariaDB server: reuse, the per-process limit, a thread's end, a killed
connection, nested calls."""

import dataclasses
import gc
import threading
import time
import unittest

import dbservers
from kv.errors import PartitionUnavailable
from kv.storage.engines import MySQLPartition


def _connection_id(partition):
    with partition._cursor() as cursor:
        cursor.execute("SELECT CONNECTION_ID()")
        return cursor.fetchone()[0]


def _in_thread(function):
    """Run ``function()`` in a new thread that then ends; its result or exception."""
    out = {}

    def run():
        try:
            out["result"] = function()
        except Exception as e:           # handed to the caller
            out["error"] = e
    thread = threading.Thread(target=run)
    thread.start()
    thread.join(30)
    return out


class ThreadConnectionsTest(unittest.TestCase):
    def setUp(self):
        self.server = dbservers.shared(1)[0]
        settings = dataclasses.replace(self.server.settings("partition-1"), pool_size=2,
                                       connect_timeout_seconds=1)
        self.partition = MySQLPartition(settings)
        self.addCleanup(self.partition.close)

    def test_a_thread_keeps_its_connection_and_threads_have_their_own(self):
        mine = _connection_id(self.partition)
        self.assertEqual(_connection_id(self.partition), mine)
        other = _in_thread(lambda: _connection_id(self.partition))["result"]
        self.assertNotEqual(other, mine)

    def test_beyond_the_limit_a_thread_waits_then_is_busy_until_a_thread_ends(self):
        _connection_id(self.partition)                      # this thread's: 1 of 2
        release = threading.Event()
        holding = threading.Event()

        def hold():
            _connection_id(self.partition)                  # 2 of 2, kept while it lives
            holding.set()
            release.wait(30)
        holder = threading.Thread(target=hold)
        holder.start()
        self.assertTrue(holding.wait(30))
        out = _in_thread(lambda: self.partition.read_many([(b"default", b"k")]))
        self.assertIsInstance(out.get("error"), PartitionUnavailable, out)
        self.assertEqual((out["error"].reason, out["error"].down), ("busy", False))
        self.assertEqual(self.partition._down_until, 0)
        release.set()
        holder.join(30)
        gc.collect()                    # the ended thread's connection is closed
        self.assertEqual(_in_thread(lambda: self.partition.read_many([(b"default", b"k")])),
                         {"result": {}})

    def test_a_killed_connection_is_replaced_after_its_idle_ping(self):
        first = _connection_id(self.partition)
        self.server.execute("KILL CONNECTION %d" % first)
        time.sleep(1.2)                                     # idle past the ping threshold
        second = _connection_id(self.partition)
        self.assertNotEqual(second, first)
        self.assertEqual(self.partition._down_until, 0)

    def test_a_nested_call_gets_a_connection_of_its_own(self):
        with self.partition._cursor() as outer:
            outer.execute("SELECT CONNECTION_ID()")
            outer_id = outer.fetchone()[0]
            inner_id = _connection_id(self.partition)
        self.assertNotEqual(inner_id, outer_id)
        self.assertEqual(_connection_id(self.partition), outer_id)     # the thread's, kept
        processes = [row for row in self.server.execute("SHOW PROCESSLIST")
                     if row[0] == inner_id]
        self.assertEqual(processes, [])                    # the nested one was closed


if __name__ == "__main__":
    unittest.main()
