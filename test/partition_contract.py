"""The storage contracts, run against every engine (STYLE.md 9).

``PartitionContract`` checks one :class:`kv.storage.partition.Partition`; concrete test
classes mix it into ``unittest.TestCase`` and implement ``make_partition()``
(store_contract.py does the same for the router).  The name does not start
with "Test", so nose2 collects only the concrete classes.
"""

import threading
from unittest import mock

import datastore
from datastore import Condition, Record
from kv import records
from kv.storage import partition as partition_module
from kv.storage.partition import NO_OTHERS, NeedOthers, WriteRequest

BUCKET = b"default"
HOSTILE_KEYS = [b"/", b"%2F", b"a/b/c", b"'; DROP TABLE kv_rows; --", b"\\x00", "ä€😀".encode(),
                b"k" * 512, b'<&>"\'', b"?#[]@!$&'()*+,;="]
INVALID_KEYS = [b"", b"\x00", b"a\nb", b"\x7f", b"k" * 513, b"\xff\xfe", b"\xc3"]


def _put(partition, key, value, modified=None, deleted=False, expires=None):
    def make(current, now):
        version = current.version + 1 if current else 1
        return Record(BUCKET, key, value, version, now, modified or now, expires, deleted)
    return partition.write(WriteRequest(BUCKET, key, make, NO_OTHERS))[0]


def _put_in(partition, bucket, key, value=b"v", deleted=False, expires=None):
    """Write (bucket, key) as given (``expires`` in microseconds)."""
    def make(current, now):
        return Record(bucket, key, value, current.version + 1 if current else 1, now, now,
                      expires, deleted)
    return partition.write(WriteRequest(bucket, key, make, NO_OTHERS))[0]


def _overwrite(partition, key, value, ttl=None):
    """An unconditional put through write(), with its overwrite hint."""
    def make(current, now):
        return records.put_record(BUCKET, key, value, ttl, Condition(), current, now)
    return partition.write(WriteRequest(BUCKET, key, make, NO_OTHERS, (value, ttl)))


def _race(count, work):
    """Run work(i) in ``count`` threads released together; returns results/exceptions."""
    barrier = threading.Barrier(count)
    results = [None] * count

    def run(i):
        barrier.wait()
        try:
            results[i] = work(i)
        except Exception as e:   # collected and asserted on by the caller
            results[i] = e
    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


class PartitionContract:
    """What every partition engine must do (see the Partition docstring)."""

    def make_partition(self):
        raise NotImplementedError

    def setUp(self):
        self.partition = self.make_partition()

    def tearDown(self):
        self.partition.close()

    def test_read_missing_is_none(self):
        self.assertIsNone(self.partition.read(BUCKET, b"missing"))

    def test_write_read_round_trip_of_every_byte_and_empty_value(self):
        for key, value in ((b"bin", bytes(range(256)) * 3), (b"empty", b""),
                           ("ключ".encode(), "значение ✓".encode())):
            written = _put(self.partition, key, value)
            self.assertEqual(self.partition.read(BUCKET, key), written)
            self.assertEqual(self.partition.read(BUCKET, key).value, value)

    def test_hostile_keys_are_stored_verbatim(self):
        for i, key in enumerate(HOSTILE_KEYS):
            _put(self.partition, key, b"v%d" % i)
        for i, key in enumerate(HOSTILE_KEYS):
            self.assertEqual(self.partition.read(BUCKET, key).value, b"v%d" % i)

    def test_buckets_are_separate(self):
        _put(self.partition, b"k", b"one")
        self.assertIsNone(self.partition.read(b"other", b"k"))

    def test_a_failing_make_writes_nothing(self):
        def make(current, now):
            raise datastore.PreconditionFailed("no")
        with self.assertRaises(datastore.PreconditionFailed):
            self.partition.write(WriteRequest(BUCKET, b"k", make, NO_OTHERS))
        self.assertIsNone(self.partition.read(BUCKET, b"k"))

    def test_write_sees_the_current_row(self):
        _put(self.partition, b"k", b"one")
        second = _put(self.partition, b"k", b"two")
        self.assertEqual(second.version, 2)

    def test_the_other_copies_are_needed_only_when_this_row_is_not_live(self):
        other = Record(BUCKET, b"k", b"remote", 7, 1, 10**15, None, False)
        seen = []

        def make(current, now):
            seen.append(current)
            return Record(BUCKET, b"k", b"new", current.version + 1 if current else 1, now, now,
                          None, False)
        with self.assertRaises(NeedOthers) as caught:      # missing here: nothing is written
            self.partition.write(WriteRequest(BUCKET, b"k", make))
        self.assertEqual((caught.exception.keys, seen), ([b"k"], []))
        self.partition.write(WriteRequest(BUCKET, b"k", make, (other, None)))
        self.assertEqual(seen[-1], other)
        self.partition.write(WriteRequest(BUCKET, b"k", make))     # live here: not needed
        self.assertEqual(seen[-1].version, 8)

    def test_a_request_sent_back_for_its_other_copies_is_never_reported_written(self):
        """In one coalesced batch, a request that needs the other copies goes
        back with NeedOthers, and the try without it decides only the rest:
        when that try fails, the one sent back still says NeedOthers."""
        _put(self.partition, b"live", b"v")

        def make(key):
            return lambda current, now: Record(BUCKET, key, b"w", 9, now, now, None, False)
        requests = [WriteRequest(BUCKET, b"live", make(b"live")),
                    WriteRequest(BUCKET, b"missing", make(b"missing"))]
        real, calls = self.partition.write_many, []

        def first_real_then_failing(*args):
            calls.append(args[1])
            if len(calls) == 1:
                return real(*args)
            args[2]({}, 1, {})                     # the body ran apply, then the commit failed
            raise datastore.PartitionUnavailable([self.partition.name], "injected", down=False)
        with mock.patch.object(self.partition, "write_many", first_real_then_failing):
            outcomes = self.partition._make_batch(requests)
        self.assertEqual(calls, [[b"live", b"missing"], [b"live"]])
        self.assertIsInstance(outcomes[0], datastore.PartitionUnavailable)
        self.assertIsInstance(outcomes[1], NeedOthers)
        self.assertIsNone(self.partition.read(BUCKET, b"missing"))

    def test_a_strict_write_needs_the_other_copies_always_and_fails_without_them(self):
        """A delete or conditional write is decided on the newest copy: the
        other copies are needed even when this row is live, and a copy that
        could not be read fails the write (API.md: 503, never a stale decision)."""
        _put(self.partition, b"k", b"here")
        newer = Record(BUCKET, b"k", b"there", 9, 1, 10**16, None, False)
        seen = []

        def make(current, now):
            seen.append(current)
            return Record(BUCKET, b"k", b"new", current.version + 1, now, now, None, False)
        with self.assertRaises(NeedOthers):
            self.partition.write(WriteRequest(BUCKET, b"k", make, strict=True))
        self.partition.write(WriteRequest(BUCKET, b"k", make, (newer, None), strict=True))
        self.assertEqual(seen[-1], newer)
        down = datastore.PartitionUnavailable(["elsewhere"])
        with self.assertRaises(datastore.PartitionUnavailable):
            self.partition.write(WriteRequest(BUCKET, b"k", make, (None, down), strict=True))
        self.assertEqual(len(seen), 1)
        self.assertEqual(self.partition.read(BUCKET, b"k").version, 10)

    def test_scan_is_in_byte_order_with_bounds_and_limit(self):
        keys = [b"a", b"a/b", b"a0", b"b", "é".encode(), b"Z", "😀".encode(), b"ab"]
        for key in keys:
            _put(self.partition, key, b"x")
        everything = [r.key for r, _ in self.partition.scan(BUCKET, b"", True, None, 100)]
        self.assertEqual(everything, sorted(keys))
        self.assertEqual([r.key for r, _ in self.partition.scan(BUCKET, b"a", False, b"b", 100)],
                         [b"a/b", b"a0", b"ab"])
        self.assertEqual([r.key for r, _ in self.partition.scan(BUCKET, b"a", True, None, 2)],
                         [b"a", b"a/b"])

    def test_scan_includes_tombstones_and_gives_sizes_not_values(self):
        _put(self.partition, b"dead", b"", deleted=True)
        _put(self.partition, b"live", b"value")
        rows = self.partition.scan(BUCKET, b"", True, None, 10)
        self.assertEqual([(r.key, r.deleted, r.value, size) for r, size in rows],
                         [(b"dead", True, b"", 0), (b"live", False, b"", 5)])

    def test_scan_buckets_lists_the_buckets_with_a_live_row_in_byte_order(self):
        later = self.partition.clock() + 10**9
        for bucket, key, kwargs in (
                (b"a", b"k", {}), (b"Z", b"k", {}), (b"b" * 255, b"k" * 512, {}),
                (b"dead", b"k", {"deleted": True}), (b"exp", b"k", {"expires": 1}),
                (b"later", b"k", {"expires": later}), (b"mixed", b"gone", {"deleted": True}),
                (b"mixed", b"here", {})):
            _put_in(self.partition, bucket, key, **kwargs)
        for i in range(5):
            _put_in(self.partition, b"notes:%d" % i, b"k")
            _put_in(self.partition, b"notes:%d-dead" % i, b"k", deleted=True)
        for i in range(30):                                  # larger than some walk steps
            _put_in(self.partition, b"big", b"k%02d" % i)
        notes = [b"notes:%d" % i for i in range(5)]
        live = sorted([b"a", b"Z", b"b" * 255, b"big", b"later", b"mixed"] + notes)
        scan = self.partition.scan_buckets
        for steps in (1, 3, partition_module.WALK_ROWS):    # rows a step of the walk reads
            with mock.patch.object(partition_module, "WALK_ROWS", steps):
                self.assertEqual(scan(b"", True, None, 100), live, steps)
                self.assertEqual(scan(b"a", True, b"mixed", 100),
                                 [b"a", b"b" * 255, b"big", b"later"])
                self.assertEqual(scan(b"a", False, b"later", 100), [b"b" * 255, b"big"])
                self.assertEqual(scan(b"notes:", True, b"notes;", 100), notes)
                for limit in (1, 2, 3):     # dead buckets between live ones: the walk goes on
                    self.assertEqual(scan(b"notes:", True, b"notes;", limit), notes[:limit])
                    self.assertEqual(scan(b"dead", True, None, limit),
                                     [b"later", b"mixed", notes[0]][:limit])
                self.assertEqual(scan(b"notes;", True, None, 100), [])
                self.assertEqual(scan(b"", True, None, 1), [b"Z"])

    def test_scan_key_across_reads_one_key_in_a_range_of_buckets_with_values(self):
        for bucket, value, kwargs in ((b"app:a", b"1", {}), (b"app:b", b"", {"deleted": True}),
                                      (b"app:c", b"3", {"expires": 1}), (b"app:e", b"5", {}),
                                      (b"apq:x", b"out", {}), (b"ap", b"out", {}),
                                      (b"app;", b"out", {}), (b"app", b"out", {})):
            _put_in(self.partition, bucket, b"key", value, **kwargs)
        for key in (b"keys", b"ke") + tuple(b"k%02d" % i for i in range(30)):  # larger than a step
            _put_in(self.partition, b"app:e", key)
        _put_in(self.partition, b"app:d", b"other key")

        def across(start=b"app:", inclusive=True, limit=100):
            rows = self.partition.scan_key_across(start, inclusive, b"app;", b"key", limit)
            return [(r.bucket, r.key, r.value, r.deleted) for r in rows]
        everything = [(b"app:a", b"key", b"1", False), (b"app:b", b"key", b"", True),
                      (b"app:c", b"key", b"3", False), (b"app:e", b"key", b"5", False)]
        for steps in (1, 3, partition_module.WALK_ROWS):    # rows a step of the walk reads
            with mock.patch.object(partition_module, "WALK_ROWS", steps):
                self.assertEqual(across(), everything, steps)
                self.assertEqual(across(b"app:a", False), everything[1:])
                self.assertEqual(across(b"app:c", True), everything[2:])
                for limit in (1, 2, 3, 4):          # app:d lacks the key: the walk goes on past it
                    self.assertEqual(across(limit=limit), everything[:limit])
                self.assertEqual(across(b"app:c", False, 1), everything[3:])
                self.assertEqual(self.partition.scan_key_across(b"", True, None, b"missing", 5), [])
                self.assertEqual([r.bucket for r in self.partition.scan_key_across(
                                     b"", True, None, b"key", 100)],
                                 [b"ap", b"app", b"app:a", b"app:b", b"app:c", b"app:e", b"app;",
                                  b"apq:x"])
        self.assertEqual(self.partition.scan_key_across(b"app:c", True, b"app:d", b"key", 5)[0]
                         .expires_us, 1)

    def test_largest_value_round_trips(self):
        value = bytes(range(256)) * (65536 - 1) + b"x" * 255   # 16 MiB - 1 bytes
        self.assertEqual(len(value), 16 * 1024 * 1024 - 1)
        _put(self.partition, b"big", value)
        self.assertEqual(self.partition.read(BUCKET, b"big").value, value)

    def test_concurrent_compare_and_swap_has_exactly_one_winner(self):
        first = _put(self.partition, b"cas", b"0")
        condition = Condition(if_match=(first.etag,))

        def cas(i):
            def make(current, now):
                condition.check(current, now)
                return Record(BUCKET, b"cas", b"%d" % i, current.version + 1, current.created_us,
                              now, None, False)
            return self.partition.write(WriteRequest(BUCKET, b"cas", make, NO_OTHERS))[0]
        results = _race(50, cas)
        winners = [r for r in results if isinstance(r, Record)]
        losers = [r for r in results if isinstance(r, datastore.PreconditionFailed)]
        self.assertEqual((len(winners), len(losers)), (1, 49), results)
        self.assertEqual(self.partition.read(BUCKET, b"cas"), winners[0])

    def test_concurrent_creates_of_an_absent_key_have_exactly_one_winner(self):
        def create(i):
            def make(current, now):
                Condition(create_only=True).check(current, now)
                return Record(BUCKET, b"new", b"%d" % i, 1, now, now, None, False)
            return self.partition.write(WriteRequest(BUCKET, b"new", make, NO_OTHERS))[0]
        results = _race(20, create)
        winners = [r for r in results if isinstance(r, Record)]
        self.assertEqual(len(winners), 1, results)
        self.assertTrue(all(isinstance(r, (Record, datastore.KeyExists)) for r in results), results)

    def test_concurrent_writes_of_one_key_each_see_the_one_before(self):
        _put(self.partition, b"counter", b"0")

        def increment(i):
            def make(current, now):
                return Record(BUCKET, b"counter", b"%d" % (int(current.value) + 1),
                              current.version + 1, current.created_us, now, None, False)
            return self.partition.write(WriteRequest(BUCKET, b"counter", make, NO_OTHERS))
        results = _race(30, increment)
        self.assertEqual(sorted(record.version for record, _ in results), list(range(2, 32)))
        self.assertTrue(all(previous.version == record.version - 1 for record, previous in results))
        self.assertEqual(self.partition.read(BUCKET, b"counter").value, b"30")

    def test_an_overwrite_does_what_its_make_would(self):
        """write(overwrite=...) may skip make on a live row (MySQL folds it into
        one round trip); the result must be the one make gives (SQLite runs make)."""
        def put(key, value, ttl=None):
            return _overwrite(self.partition, key, value, ttl)
        first, _ = put(b"o", b"1")
        tombstone = _put(self.partition, b"dead", b"", deleted=True)
        with mock.patch.object(self.partition, "_overwrite_live",
                               wraps=self.partition._overwrite_live) as fast:
            results = _race(12, lambda i: put(b"o%d" % i if i else b"o", b"v%d" % i,
                                              60 if i % 2 else None))
        self.assertEqual(fast.called, self.partition.FOLDS)
        record, previous = results[0]
        # the one-round-trip way returns the current copy without its value
        self.assertEqual(previous._replace(value=b""), first._replace(value=b""))
        self.assertEqual((record.value, record.version, record.created_us, record.expires_us),
                         (b"v0", 2, first.created_us, None))
        self.assertGreater(record.modified_us, first.modified_us)
        self.assertEqual(self.partition.read(BUCKET, b"o"), record)
        for i in range(1, 12):                  # new keys: make's way
            record, previous = results[i]
            self.assertIsNone(previous)
            self.assertEqual((record.version, record.value), (1, b"v%d" % i))
            self.assertEqual(record.expires_us,
                             record.modified_us + 60_000_000 if i % 2 else None)
        with_ttl, _ = put(b"o1", b"again", 30)
        self.assertEqual((with_ttl.version, with_ttl.expires_us),
                         (2, with_ttl.modified_us + 30_000_000))
        self.assertEqual(self.partition.read(BUCKET, b"o1"), with_ttl)   # as stored
        revived, previous = put(b"dead", b"back")
        self.assertEqual(previous, tombstone)
        self.assertEqual((revived.version, revived.created_us, revived.deleted),
                         (tombstone.version + 1, revived.modified_us, False))

    def test_overwrites_of_large_values_are_not_folded_past_the_packet_limit(self):
        value = b"x" * (1 << 20)
        keys = [b"large-%d" % i for i in range(6)]
        for key in keys:
            _put(self.partition, key, b"old")
        with mock.patch.object(self.partition, "_overwrite_live",
                               wraps=self.partition._overwrite_live) as fast:
            results = _race(6, lambda i: _overwrite(self.partition, keys[i], value + keys[i]))
        for key, (record, previous) in zip(keys, results):
            self.assertEqual((record.version, previous.version), (2, 1))
            self.assertEqual(self.partition.read(BUCKET, key).value, value + key)
        for call in fast.call_args_list:
            self.assertLessEqual(sum(len(item.overwrite[0]) for item in call.args[1]), 4 << 20)

    def test_one_transaction_may_hold_more_than_one_packet_of_writes(self):
        value = b"v" * (1 << 20)
        keys = [b"big-%d" % i for i in range(12)]        # 12 MiB: three 4 MiB packets

        def apply(current, now, unknown):
            return {k: Record(BUCKET, k, value + k, 1, now, now, None, False) for k in keys}
        self.partition.write_many(BUCKET, keys, apply, {k: NO_OTHERS for k in keys})
        for key in keys:
            self.assertEqual(self.partition.read(BUCKET, key).value, value + key)

    def test_delete_if_unchanged_keeps_rows_written_since(self):
        kept, gone = _put(self.partition, b"kept", b"1"), _put(self.partition, b"gone", b"1")
        _put(self.partition, b"kept", b"2")
        self.assertEqual(self.partition.delete_if_unchanged([kept, gone]), 1)
        self.assertEqual(self.partition.read(BUCKET, b"kept").value, b"2")
        self.assertIsNone(self.partition.read(BUCKET, b"gone"))
        self.assertEqual(self.partition.delete_if_unchanged([]), 0)

    def test_schema_is_idempotent(self):
        _put(self.partition, b"kept", b"v")
        self.partition.apply_schema()
        self.partition.apply_schema()
        self.assertEqual(self.partition.read(BUCKET, b"kept").value, b"v")

    def test_schema_upgrades_a_table_without_tombstone_us(self):
        tombstone = _put(self.partition, b"gone", b"", deleted=True)
        _put(self.partition, b"live", b"v")
        mysql = self.partition.engine == "mysql"
        with self.partition._cursor() as cursor:     # back to the schema before tombstone_us
            cursor.execute("DROP INDEX kv_rows_tombstone_us" + (" ON kv_rows" if mysql else ""))
            cursor.execute("ALTER TABLE kv_rows DROP COLUMN tombstone_us")
            cursor.execute("CREATE INDEX kv_rows_tombstones ON kv_rows (deleted, modified_us)")
        self.partition.apply_schema()
        rows = self.partition.rows_by("tombstone_us", (-1, b"", b""), 10)
        self.assertEqual([(at, r.key) for at, r in rows], [(tombstone.modified_us, b"gone")])
        with self.partition._cursor() as cursor:
            cursor.execute("SHOW INDEX FROM kv_rows" if mysql else "PRAGMA index_list(kv_rows)")
            names = {row[2] if mysql else row[1] for row in cursor.fetchall()}
        self.assertIn("kv_rows_tombstone_us", names)
        self.assertNotIn("kv_rows_tombstones", names)

    def _epochs(self):
        return {r.key: epoch for epoch, r in self.partition.rows_by(
            "change_epoch", (-1, b"", b""), 100)}

    def test_client_writes_carry_the_open_change_epoch_and_sync_copies_zero(self):
        _put(self.partition, b"a", b"1")
        closed = self.partition.close_epoch()
        _put(self.partition, b"b", b"1")
        _overwrite(self.partition, b"a", b"2")
        copy = Record(BUCKET, b"c", b"copied", 1, 1, 1, None, False)
        self.assertEqual(self.partition.store_if_newer([copy]), [copy])
        self.assertEqual(self._epochs(), {b"a": closed + 1, b"b": closed + 1, b"c": 0})
        self.assertEqual(self.partition.close_epoch(), closed + 1)

    def test_closing_an_epoch_waits_for_the_writes_that_read_it(self):
        """close_epoch returns only once a write that took the old epoch has
        committed, so a scan of the closed epochs never misses a late commit."""
        started, release = threading.Event(), threading.Event()

        def make(current, now):
            started.set()
            release.wait(5)
            return Record(BUCKET, b"slow", b"v", 1, now, now, None, False)
        writer = threading.Thread(target=self.partition.write,
                                  args=(WriteRequest(BUCKET, b"slow", make, NO_OTHERS),))
        writer.start()
        self.assertTrue(started.wait(5))
        threading.Timer(0.1, release.set).start()
        closed = self.partition.close_epoch()
        self.assertIsNotNone(self.partition.read(BUCKET, b"slow"), "closed before the commit")
        self.assertLessEqual(self._epochs()[b"slow"], closed)
        writer.join(5)

    def test_state_rows_are_stamped_by_the_partition_clock(self):
        seen = []
        self.assertTrue(self.partition.set_state(b"lease", b"me"))
        self.assertFalse(self.partition.set_state(b"lease", b"you",
                                                  unless=lambda c, now: seen.append((c, now)) or True))
        (value, updated), now = seen[0]
        self.assertEqual(value, b"me")
        self.assertLessEqual(updated, now)
        self.assertLess(abs(now - self.partition.clock_us()), 60_000_000)
        self.assertEqual(self.partition.get_state(b"lease"), (b"me", updated))

    def test_driver_failure_is_unavailable_on_every_public_method(self):
        error = self.partition.driver_errors[0]("injected failure")
        calls = {
            "read": lambda: self.partition.read(BUCKET, b"k"),
            "scan": lambda: self.partition.scan(BUCKET, b"", True, None, 10),
            "scan_buckets": lambda: self.partition.scan_buckets(b"", True, None, 10),
            "scan_key_across": lambda: self.partition.scan_key_across(b"a:", True, b"a;", b"k", 10),
            "write": lambda: _put(self.partition, b"k", b"v"),
            "ping": self.partition.ping,
            "apply_schema": self.partition.apply_schema,
            "read_many": lambda: self.partition.read_many([(BUCKET, b"k")]),
            "write_many": lambda: self.partition.write_many(BUCKET, [b"k"], lambda c, n, u: {}),
            "store_if_newer": lambda: self.partition.store_if_newer([]),
            "delete_if_unchanged": lambda: self.partition.delete_if_unchanged(
                [Record(BUCKET, b"k", b"", 1, 1, 1, None, False)]),
            "rows_by": lambda: self.partition.rows_by("change_epoch", (0, b"", b""), 10),
            "rows_after": lambda: self.partition.rows_after((b"", b""), 10),
            "get_state": lambda: self.partition.get_state(b"x"),
            "set_state": lambda: self.partition.set_state(b"x", b"y"),
            "clock_us": self.partition.clock_us,
            "close_epoch": self.partition.close_epoch,
        }
        for name, call in calls.items():
            self.partition._down_until = 0
            with mock.patch.object(self.partition, "_acquire", side_effect=error):
                with self.assertRaises(datastore.PartitionUnavailable, msg=name) as caught:
                    call()
            self.assertIs(caught.exception.original, error, name)
            self.assertEqual(caught.exception.partitions, [self.partition.name])
        # Marked down: the next call fails fast without touching the driver.
        with mock.patch.object(self.partition, "_acquire", side_effect=AssertionError("called")):
            with self.assertRaises(datastore.PartitionUnavailable):
                self.partition.read(BUCKET, b"k")
        self.partition._down_until = 0
        self.assertIsNone(self.partition.read(BUCKET, b"k"))
