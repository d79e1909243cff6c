"""The partition and store contracts on SQLite and on a real MariaDB server."""

import os
import shutil
import tempfile
import unittest
from unittest import mock

import dbservers
from kv.configuration import PartitionSettings, Settings, SyncSettings
from datastore import Datastore
from partition_contract import PartitionContract
from store_contract import StoreContract
from kv.storage.engines import MySQLPartition, SQLitePartition
from kv.errors import PartitionUnavailable


def _settings(partitions, replicas=2):
    return Settings("test", 1048576, 16777216, replicas, tuple(partitions), SyncSettings())


class SQLitePartitionTest(PartitionContract, unittest.TestCase):
    def make_partition(self):
        self.dir = tempfile.mkdtemp(prefix="kv-sqlite-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        return SQLitePartition(PartitionSettings("partition-1", "sqlite",
                                                 path=os.path.join(self.dir, "p.sqlite3")))


def _empty_mysql(server, name):
    partition = MySQLPartition(server.settings(name))
    partition.apply_schema()
    server.execute("DELETE FROM kv_rows")
    return partition


class MariaDBPartitionTest(PartitionContract, unittest.TestCase):
    def make_partition(self):
        return _empty_mysql(dbservers.shared(1)[0], "partition-1")

    def test_a_failed_statement_does_not_mark_the_partition_down(self):
        import MySQLdb
        for code, down in ((1064, False), (1153, False), (2013, True), (1927, True)):
            self.partition._down_until = 0
            error = MySQLdb.OperationalError(code, "injected")
            with mock.patch.object(self.partition, "_select_many", side_effect=error):
                with self.assertRaises(PartitionUnavailable, msg=code):
                    self.partition.read_many([(b"default", b"k")])
            self.assertEqual(self.partition._down_until > 0, down, code)
        self.partition._down_until = 0
        self.assertEqual(self.partition.read_many([(b"default", b"k")]), {})


    def test_a_slow_row_lock_answers_busy_and_marks_nothing_down(self):
        """A lock wait longer than the read timeout is cut by the server
        (max_statement_time) as busy: the partition is not marked down."""
        import MySQLdb
        from partition_contract import _put
        _put(self.partition, b"locked", b"v")
        holder = MySQLdb.connect(host="127.0.0.1", port=self.partition.settings.port, user="kv",
                                 password=dbservers.PASSWORD, database="kv")
        self.addCleanup(holder.close)
        cursor = holder.cursor()
        cursor.execute("START TRANSACTION")
        cursor.execute("SELECT * FROM kv_rows WHERE k = 'locked' FOR UPDATE")
        with self.assertRaises(PartitionUnavailable) as caught:
            _put(self.partition, b"locked", b"w")
        self.assertFalse(caught.exception.down)
        self.assertEqual(caught.exception.reason, "busy")
        self.assertEqual(self.partition._down_until, 0)
        holder.rollback()
        self.assertEqual(_put(self.partition, b"locked", b"w").version, 2)

    def test_a_full_connection_pool_answers_busy_and_marks_nothing_down(self):
        from kv.storage.threadconn import ConnectionsExhausted
        with mock.patch.object(self.partition, "_acquire",
                               side_effect=ConnectionsExhausted("pool")):
            with self.assertRaises(PartitionUnavailable) as caught:
                self.partition.read_many([(b"default", b"k")])
        self.assertFalse(caught.exception.down)
        self.assertEqual(self.partition._down_until, 0)


class SQLiteStoreTest(StoreContract, unittest.TestCase):
    def make_store(self):
        self.dir = tempfile.mkdtemp(prefix="kv-sqlite-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        parts = [PartitionSettings("partition-%d" % i, "sqlite",
                                   path=os.path.join(self.dir, "p%d.sqlite3" % i))
                 for i in (1, 2, 3)]
        return Datastore(_settings(parts))


class MariaDBStoreTest(StoreContract, unittest.TestCase):
    def make_store(self):
        servers = dbservers.shared(3)
        settings = _settings([s.settings("partition-%d" % (i + 1)) for i, s in enumerate(servers)])
        parts = {p.name: _empty_mysql(servers[i], p.name) for i, p in enumerate(settings.partitions)}
        return Datastore(settings, parts)
