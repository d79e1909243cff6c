"""Buckets, cross-bucket reads and aggregates of the Datastore router
(kv.cluster.buckets) on SQLite and on real MariaDB servers, and the schema of
long bucket names (database_definition.sql) on MariaDB."""

import os
import shutil
import tempfile
import unittest
from decimal import Decimal
from fractions import Fraction
from unittest import mock

import dbservers
from datastore import Datastore
from kv.cluster import buckets
from kv.configuration import PartitionSettings
from kv.errors import InvalidKey, InvalidRequest, PartitionUnavailable
from kv.records import Record
from kv.storage.partition import WALK_ROWS
from kv.sync.base import WATERMARK
from kv.sync.phases import _position
from store_contract import clock_offset
from test_partitions import _empty_mysql, _settings

LONG_BUCKET, LONG_KEY = b"b" * 255, b"k" * 512


class BucketsContract:
    """What the router's bucket calls promise on top of any engine."""

    def make_store(self):
        raise NotImplementedError

    def setUp(self):
        self.store = self.make_store()
        self.now = self.store.clock()
        self.addCleanup(self.store.close)

    # -- helpers -------------------------------------------------------------
    def record(self, bucket, key, value=b"v", age_us=0, deleted=False, expires=None, version=1):
        modified = self.now - age_us
        return Record(bucket, key, b"" if deleted else value, version, modified, modified,
                      expires, deleted)

    def copy(self, records, replica=None):
        """Store ``records`` on their whole placement (``replica`` None), or
        only on its ``replica``-th partition, in one call per partition."""
        groups = {}
        for record in records:
            placed = self.store.placement(record.bucket, record.key)
            for partition in placed if replica is None else [placed[replica]]:
                groups.setdefault(partition, []).append(record)
        for partition, group in groups.items():
            for start in range(0, len(group), 500):
                partition.store_if_newer(group[start:start + 500])

    def walk(self, call, **kwargs):
        """Every page of ``call``: (all items, pages)."""
        items, pages, cursor = [], 0, None
        while True:
            page = call(cursor=cursor, **kwargs)
            items += page.items
            pages, cursor = pages + 1, page.next
            if cursor is None:
                return items, pages

    def down(self, *names):
        for name in names:
            partition = self.store.partitions[name]
            partition._down_until = float("inf")
            self.addCleanup(setattr, partition, "_down_until", 0)

    # -- buckets ---------------------------------------------------------------
    def _some_buckets(self):
        """Buckets in every state; returns the live, listable names in byte order."""
        live = [b"Zeta", b"default", b"notes:alice", b"notes:bob", b"notes:carol", LONG_BUCKET,
                b"app:" + b"x" * 251]
        self.copy([self.record(b, b"k") for b in live]
                  + [self.record(b, b"k2") for b in live[:3]]
                  + [self.record(b"_auth", b"rules"), self.record(b"_z", b"k"),
                     self.record(b"dead", b"k", deleted=True),
                     self.record(b"expired", b"k", expires=self.now - 1),
                     self.record(b"notes:dave", b"k", deleted=True)])
        self.copy([self.record(b"later", b"k", expires=self.now + 60_000_000)], replica=0)
        return sorted(live + [b"later"])

    def test_buckets_lists_each_bucket_with_a_live_key_once_in_byte_order(self):
        live = self._some_buckets()
        page = self.store.buckets()
        self.assertEqual((page.items, page.next, page.unavailable), (live, None, []))
        self.assertEqual(self.store.buckets(prefix=b"notes:").items,
                         [b"notes:alice", b"notes:bob", b"notes:carol"])
        self.assertEqual(self.store.buckets(prefix=b"notes:b").items, [b"notes:bob"])
        self.assertEqual(self.store.buckets(prefix=b"_").items, [])
        self.assertEqual(self.store.buckets(prefix=b"_auth").items, [])
        self.assertEqual(self.store.buckets(prefix=b"b" * 255).items, [LONG_BUCKET])
        with clock_offset(self.store, 61):
            self.assertNotIn(b"later", self.store.buckets().items)

    def test_buckets_pages_with_cursor_and_limit(self):
        live = self._some_buckets()
        for limit in (1, 2, 3, 7):
            items, pages = self.walk(self.store.buckets, limit=limit)
            self.assertEqual(items, live, limit)
            self.assertEqual(pages, -(-len(live) // limit), limit)   # no empty last page
        page = self.store.buckets(limit=len(live))
        self.assertEqual((page.items, page.next), (live, None))
        page = self.store.buckets(prefix=b"notes:", limit=2)
        self.assertEqual(page.items, [b"notes:alice", b"notes:bob"])
        page = self.store.buckets(prefix=b"notes:", limit=2, cursor=page.next)
        self.assertEqual((page.items, page.next), ([b"notes:carol"], None))
        # A cursor of another prefix's range starts this one from its beginning.
        first = self.store.buckets(limit=1).next
        self.assertEqual(self.store.buckets(prefix=b"notes:", cursor=first).items[0],
                         b"notes:alice")

    def test_buckets_shows_only_what_visible_accepts_and_pages_may_be_empty(self):
        live = self._some_buckets()

        def visible(name):
            return not name.startswith(b"notes:")
        shown = [b for b in live if visible(b)]
        self.assertEqual(self.store.buckets(visible=visible).items, shown)
        items, _ = self.walk(self.store.buckets, limit=1, visible=visible)
        self.assertEqual(items, shown)
        with mock.patch.object(buckets, "BUCKET_NAME_BUDGET", 2):
            page = self.store.buckets(visible=lambda name: False)
            self.assertEqual(page.items, [])
            self.assertIsNotNone(page.next)
            items, pages = self.walk(self.store.buckets, visible=visible)
        self.assertEqual(items, shown)
        self.assertEqual(pages, -(-len(live) // 2))

    def test_a_bucket_whose_only_live_row_is_a_stale_replica_shows_until_sync(self):
        """Documented: a bucket shows when some partition holds a live row."""
        self.copy([self.record(b"gone", b"k", age_us=10)])
        self.copy([self.record(b"gone", b"k", deleted=True, version=2)], replica=0)
        self.assertEqual(self.store.buckets().items, [b"gone"])
        self.copy([self.record(b"gone", b"k", deleted=True, version=2)])      # what sync does
        self.assertEqual(self.store.buckets().items, [])

    def test_bad_parameters(self):
        for kwargs in ({"limit": 0}, {"limit": 1001}, {"cursor": "!!"}, {"cursor": "eA"}):
            with self.assertRaises(InvalidRequest, msg=kwargs):
                self.store.buckets(**kwargs)
            with self.assertRaises(InvalidRequest, msg=kwargs):
                self.store.read_across(b"notes", b"k", **kwargs)
        for app in (b"", b"a:b", b"a" * 255):
            with self.assertRaises(InvalidRequest, msg=app):
                self.store.read_across(app, b"k")
        with self.assertRaises(InvalidKey):
            self.store.read_across(b"notes", b"")
        with self.assertRaises(InvalidRequest):
            self.store.aggregate(b"notes", b"k", "median")
        self.copy([self.record(b"_x:a", b"k")])
        self.assertEqual(self.store.read_across(b"_x", b"k").items, [])

    # -- read_across -------------------------------------------------------------
    def test_read_across_takes_the_newest_copy_of_each_bucket(self):
        old, new = dict(age_us=1000, version=1), dict(version=2)
        self.copy([self.record(b"notes:a", b"k", b"a1"),
                   self.record(b"notes:b", b"k", b"b-old", **old),
                   self.record(b"notes:c", b"k", b"c-old", **old),
                   self.record(b"notes:d", b"k", b"d-old", **old),
                   self.record(b"notes:e", b"k", b"e1", expires=self.now - 1),
                   self.record(b"notes:f", b"other"),
                   self.record(b"notes:" + b"g" * 249, LONG_KEY[:-1] + b"k", b"long"),
                   self.record(b"notes", b"k", b"out"), self.record(b"notes;", b"k", b"out"),
                   self.record(b"notesx:a", b"k", b"out"), self.record(b"note:a", b"k", b"out")])
        self.copy([self.record(b"notes:b", b"k", b"b-new", **new),
                   self.record(b"notes:c", b"k", deleted=True, **new)], replica=0)
        self.copy([self.record(b"notes:d", b"k", deleted=True, **new),
                   self.record(b"notes:h", b"k", b"h-only-on-second")], replica=1)
        page = self.store.read_across(b"notes", b"k")
        self.assertEqual([(b, r.value) for b, r in page.items],
                         [(b"notes:a", b"a1"), (b"notes:b", b"b-new"),
                          (b"notes:h", b"h-only-on-second")])
        self.assertEqual((page.next, page.unavailable), (None, []))
        self.assertTrue(all(b == r.bucket and r.key == b"k" for b, r in page.items))
        page = self.store.read_across(b"notes", b"k", visible=lambda b: b != b"notes:b")
        self.assertEqual([b for b, _ in page.items], [b"notes:a", b"notes:h"])
        long = self.store.read_across(b"notes", LONG_KEY[:-1] + b"k")
        self.assertEqual([(b, r.value) for b, r in long.items], [(b"notes:" + b"g" * 249, b"long")])

    def test_read_across_pages_with_cursor_limit_visible_and_budgets(self):
        names = [b"notes:u%02d" % i for i in range(30)]
        self.copy([self.record(b, b"k", b * 10) for b in names]
                  + [self.record(b"notes:u%02dx" % i, b"k", deleted=True) for i in range(30)])

        def visible(bucket):
            return not bucket.endswith(b"7")
        shown = [b for b in names if visible(b)]
        for limit in (1, 7, 30):
            items, _ = self.walk(_bound(self.store.read_across, b"notes", b"k"),
                                 limit=limit, visible=visible)
            self.assertEqual([b for b, _ in items], shown, limit)
            self.assertEqual([r.value for _, r in items], [b * 10 for b in shown])
        with mock.patch.object(buckets, "CROSS_ROW_BUDGET", 5):
            page = self.store.read_across(b"notes", b"k", limit=100, visible=lambda b: False)
            self.assertEqual(page.items, [])
            self.assertIsNotNone(page.next)
            items, pages = self.walk(_bound(self.store.read_across, b"notes", b"k"))
        self.assertEqual([b for b, _ in items], names)
        self.assertEqual(pages, 60 // 3)        # two copies a bucket: 3 buckets reach 5 rows
        with mock.patch.object(buckets, "CROSS_VALUE_BYTES", 250):
            page = self.store.read_across(b"notes", b"k")
            self.assertEqual([b for b, _ in page.items], names[:2])     # 100 bytes each
            with mock.patch.object(buckets, "CROSS_VALUE_BYTES", 1):
                page = self.store.read_across(b"notes", b"k")          # one value at least
                self.assertEqual([b for b, _ in page.items], names[:1])
            items, _ = self.walk(_bound(self.store.read_across, b"notes", b"k"))
        self.assertEqual([b for b, _ in items], names)

    def test_a_partition_down_is_named_and_replicas_down_fail(self):
        names = [b"notes:%03d" % i for i in range(40)]
        self.copy([self.record(b, b"k", b"1") for b in names])
        first, second = self.store.names[:2]
        self.down(first)
        page = self.store.read_across(b"notes", b"k")
        self.assertEqual(([b for b, _ in page.items], page.unavailable), (names, [first]))
        listing = self.store.buckets()
        self.assertEqual((listing.items, listing.unavailable), (names, [first]))
        result = self.store.aggregate(b"notes", b"k", "sum")
        self.assertEqual((result.value, result.count, result.complete, result.unavailable),
                         (40, 40, False, [first]))
        self.down(second)
        for call in (lambda: self.store.buckets(), lambda: self.store.read_across(b"notes", b"k"),
                     lambda: self.store.aggregate(b"notes", b"k", "count")):
            with self.assertRaises(PartitionUnavailable):
                call()

    # -- aggregate -----------------------------------------------------------------
    #: (value of bucket i, its number as a Fraction or None), by i % len(KINDS).
    KINDS = [lambda i: (b"%d" % i, Fraction(i)),
             lambda i: (b"12", Fraction(12)),
             lambda i: (b"-3.5", Fraction(-7, 2)),
             lambda i: (b"1e3", Fraction(1000)),
             lambda i: (b"10000000000000000000001", Fraction(10**22 + 1)),
             lambda i: (b"abc", None),
             lambda i: (b"true", None),
             lambda i: (b'"7"', None),
             lambda i: (b"\xff", None),
             lambda i: (b" -%d.25\n" % i, -Fraction(i) - Fraction(1, 4)),
             lambda i: (b"NaN", None),
             lambda i: (b"-Infinity", None),
             lambda i: (b"12abc", None),
             lambda i: (b"", None),
             lambda i: (b"[1]", None),
             lambda i: (b"0.%03dE-2" % i, Fraction(i, 100000)),
             lambda i: (b"null", None)]

    def _aggregate_data(self):
        """1,000 buckets of app ``agg`` holding key ``n``, plus dead ones;
        returns the numbers (Fractions or None) of the buckets shown."""
        records, shown = [], []
        for i in range(1000):
            bucket = b"agg:user%04d" % i
            value, exact = self.KINDS[i % len(self.KINDS)](i)
            records.append(self.record(bucket, b"n", value))
            if i % 9 != 4:                             # visible() hides these
                shown.append(exact)
        records += [self.record(b"agg:dead%d" % i, b"n", deleted=True) for i in range(20)]
        records += [self.record(b"agg:expired%d" % i, b"n", b"5", expires=self.now - 1)
                    for i in range(20)]
        records += [self.record(b"agg:other%d" % i, b"m", b"5") for i in range(20)]
        self.copy(records)
        return shown

    def test_aggregates_over_1000_buckets_are_exact(self):
        shown = self._aggregate_data()

        def visible(bucket):
            return not (bucket.startswith(b"agg:user") and int(bucket[8:]) % 9 == 4)
        numbers = [n for n in shown if n is not None]
        total = sum(numbers, Fraction(0))
        results = {f: self.store.aggregate(b"agg", b"n", f, visible) for f in buckets.FUNCTIONS}
        for function, result in results.items():
            self.assertEqual((result.function, result.non_numeric, result.complete,
                              result.unavailable),
                             (function, len(shown) - len(numbers), True, []), function)
            self.assertEqual(result.count, len(shown) if function == "count" else len(numbers))
        self.assertEqual(results["count"].value, len(shown))
        self.assertIsInstance(results["sum"].value, Decimal)
        self.assertEqual(Fraction(results["sum"].value), total)
        self.assertEqual(Fraction(results["min"].value), min(numbers))
        self.assertEqual(Fraction(results["max"].value), max(numbers))
        average = total / len(numbers)
        self.assertLess(abs(Fraction(results["avg"].value) - average), abs(average) / 10**95)
        self.assertGreater(len(numbers), 300)
        self.assertGreater(len(shown) - len(numbers), 400)
        everything = self.store.aggregate(b"agg", b"n", "count")
        self.assertEqual((everything.value, everything.count), (1000, 1000))

    def test_a_sum_of_integers_is_an_exact_int_and_empty_aggregates(self):
        big = 10**22 + 1
        self.copy([self.record(b"ints:%03d" % i, b"n", b"%d" % (big * i)) for i in range(300)]
                  + [self.record(b"ints:%03dx" % i, b"n", b"-%d" % big) for i in range(3)])
        result = self.store.aggregate(b"ints", b"n", "sum")
        self.assertEqual((type(result.value), result.value, result.count),
                         (int, big * (299 * 300 // 2 - 3), 303))
        self.assertEqual(self.store.aggregate(b"ints", b"n", "min").value, -big)
        self.assertEqual(self.store.aggregate(b"ints", b"n", "avg").value,
                         Decimal(big * (299 * 300 // 2 - 3)) / 303)
        for function in buckets.FUNCTIONS:
            result = self.store.aggregate(b"none", b"n", function)
            self.assertEqual((result.value, result.count, result.non_numeric, result.complete),
                             (0 if function == "count" else None, 0, 0, True), function)
        self.copy([self.record(b"huge:%d" % i, b"n", b"9e999999999999999999") for i in (1, 2)])
        with self.assertRaises(InvalidRequest):
            self.store.aggregate(b"huge", b"n", "sum")
        self.assertEqual(self.store.aggregate(b"huge", b"n", "max").value,
                         Decimal("9e999999999999999999"))
        self.copy([self.record(b"words:a", b"n", b"abc")])
        result = self.store.aggregate(b"words", b"n", "max")
        self.assertEqual((result.value, result.count, result.non_numeric), (None, 0, 1))

    def test_an_aggregate_stops_past_its_bucket_cap(self):
        self.copy([self.record(b"cap:%03d" % i, b"n", b"1") for i in range(30)])
        with mock.patch.object(buckets, "AGGREGATE_PAGE", 10):
            with mock.patch.object(buckets, "AGGREGATE_MAX_BUCKETS", 30):
                self.assertEqual(self.store.aggregate(b"cap", b"n", "sum").value, 30)
            with mock.patch.object(buckets, "AGGREGATE_MAX_BUCKETS", 29):
                with self.assertRaises(InvalidRequest):
                    self.store.aggregate(b"cap", b"n", "sum")

    def test_numbers_are_json_numbers_only(self):
        for value, expected in ((b"0", 0), (b"-0", 0), (b"1E400", Decimal("1E400")),
                                (b"\t7\r\n", 7), (b"1.50", Decimal("1.50")), (b"01", None),
                                (b"1.", None), (b".5", None), (b"+1", None), (b"Infinity", None),
                                (b"-NaN", None), (b"1 2", None), (b"9" * 5000, None),
                                (b"\xef\xbb\xbf1", None), ("１".encode(), None), (b"false", None),
                                (b"1e9999999999999999999", None), (b"-", None)):
            self.assertEqual(buckets.number(value), expected, value)
            if expected is not None:
                self.assertIs(type(buckets.number(value)), type(expected), value)

    # -- long names ------------------------------------------------------------------
    def test_a_watermark_at_the_longest_bucket_and_key_survives(self):
        partition = self.store.partitions[self.store.names[0]]
        mark = b"%d %s %s" % (2**63 - 1, LONG_BUCKET.hex().encode(), LONG_KEY.hex().encode())
        self.assertEqual(len(mark), 1555)
        self.assertTrue(partition.set_state(WATERMARK, mark))
        self.addCleanup(partition.set_state, WATERMARK, b"0")
        value, _ = partition.get_state(WATERMARK)
        self.assertEqual(value, mark)
        self.assertEqual(_position(value), (2**63 - 1, LONG_BUCKET, LONG_KEY))
        self.copy([self.record(LONG_BUCKET, LONG_KEY, b"longest")], replica=0)
        self.assertEqual(self.store.get(LONG_BUCKET, LONG_KEY)[0].value, b"longest")


def _bound(call, *args):
    """``call`` with its first arguments bound, taking keyword arguments."""
    return lambda **kwargs: call(*args, **kwargs)


class SQLiteBucketsTest(BucketsContract, unittest.TestCase):
    def make_store(self):
        folder = tempfile.mkdtemp(prefix="kv-sqlite-")
        self.addCleanup(shutil.rmtree, folder, True)
        return Datastore(_settings([PartitionSettings("partition-%d" % i, "sqlite",
                                                      path=os.path.join(folder, "p%d.sqlite3" % i))
                                    for i in (1, 2, 3)]))


class MariaDBBucketsTest(BucketsContract, unittest.TestCase):
    def make_store(self):
        self.servers = dbservers.shared(3)
        settings = _settings([s.settings("partition-%d" % (i + 1))
                              for i, s in enumerate(self.servers)])
        return Datastore(settings, {p.name: _empty_mysql(self.servers[i], p.name)
                                    for i, p in enumerate(settings.partitions)})

    def _columns(self, server):
        return dict(server.execute(
            "SELECT CONCAT(TABLE_NAME, '.', COLUMN_NAME), COLUMN_TYPE"
            " FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = 'kv'"
            " AND TABLE_NAME IN ('kv_rows', 'kv_sync_state')"))

    def test_make_schema_widens_old_columns_once_then_changes_nothing(self):
        server = self.servers[0]
        partition = self.store.partitions["partition-1"]
        self.addCleanup(partition.apply_schema)
        server.execute("DELETE FROM kv_sync_state WHERE LENGTH(value) > 255")
        server.execute("ALTER TABLE kv_rows MODIFY COLUMN bucket VARBINARY(64) NOT NULL")
        server.execute("ALTER TABLE kv_sync_state MODIFY COLUMN value VARBINARY(255) NOT NULL")
        self.copy([self.record(b"notes:a", b"k", b"kept")], replica=0)
        with self.assertRaises(PartitionUnavailable):       # too long for the old column
            partition.set_state(b"test-long", b"x" * 256)
        partition.apply_schema()
        self.assertEqual(self.store.read_across(b"notes", b"k").items[0][1].value, b"kept")
        columns = self._columns(server)
        self.assertEqual((columns["kv_rows.bucket"], columns["kv_sync_state.value"]),
                         ("varbinary(255)", "varbinary(2048)"))
        # A second run has nothing to do: InnoDB accepts each MODIFY as INSTANT.
        modify = [s for s in partition._schema_statements() if " MODIFY COLUMN " in s]
        self.assertEqual(len(modify), 2)
        for statement in modify:
            server.execute(statement + ", ALGORITHM=INSTANT")
        partition.apply_schema()
        self.assertTrue(partition.set_state(b"test-long", b"x" * 2048))
        server.execute("DELETE FROM kv_sync_state WHERE name = 'test-long'")

    def _rows_read(self, server):
        return sum(int(v) for _, v in server.execute(
            "SHOW GLOBAL STATUS WHERE Variable_name IN ('Handler_read_next', 'Handler_read_key',"
            " 'Handler_read_rnd_next', 'Handler_read_first')"))

    def test_the_bucket_walk_skips_a_large_bucket_without_reading_it(self):
        """scan_buckets and scan_key_across read a bounded number of rows per
        bucket they pass: 20,000 rows of one bucket are not read."""
        server = self.servers[0]
        partition = self.store.partitions["partition-1"]
        server.execute("INSERT INTO kv_rows (bucket, k, value, version, created_us, modified_us,"
                       " deleted) SELECT 'app:big', CONCAT('k', seq), REPEAT('v', 100), 1, 1, 1, 0"
                       " FROM seq_1_to_20000")
        partition.store_if_newer([self.record(b"app:a", b"k1", b"a"),
                                  self.record(b"app:z", b"k1", b"z")])
        before = self._rows_read(server)
        self.assertEqual(partition.scan_buckets(b"", True, None, 100),
                         [b"app:a", b"app:big", b"app:z"])
        across = partition.scan_key_across(b"app:", True, b"app;", b"k1", 100)
        self.assertEqual([r.value for r in across], [b"a", b"v" * 100, b"z"])
        self.assertLess(self._rows_read(server) - before, 4 * WALK_ROWS + 100)
