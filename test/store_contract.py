"""The store contract, run against every engine (STYLE.md 9).

``StoreContract`` checks the :class:`kv.cluster.datastore.Datastore` router on
top of partitions; concrete classes mix it into ``unittest.TestCase`` and
implement ``make_store()``.
"""

import contextlib
from unittest import mock

import datastore
from datastore import Condition
from kv.cluster import listing
from partition_contract import BUCKET, INVALID_KEYS, _put


@contextlib.contextmanager
def clock_offset(store, seconds: float):
    """Run ``store``'s clock (and its partitions') ``seconds`` ahead: TTL
    tests without sleeping.  The clock is injected, not patched."""
    real = store.clock

    def shifted():
        return real() + int(seconds * 1_000_000)
    clocks = [(p, p.clock) for p in store.partitions.values()]
    store.clock = shifted
    for partition, _ in clocks:
        partition.clock = shifted
    try:
        yield
    finally:
        store.clock = real
        for partition, clock in clocks:
            partition.clock = clock


class StoreContract:
    """What the Datastore router promises on top of any engine (API.md semantics)."""

    def make_store(self):
        raise NotImplementedError

    def setUp(self):
        self.store = self.make_store()

    def tearDown(self):
        self.store.close()

    def test_put_get_versions_and_created(self):
        first, created, _ = self.store.put(BUCKET, b"k", b"one")
        self.assertTrue(created)
        second, created, _ = self.store.put(BUCKET, b"k", b"two")
        self.assertFalse(created)
        self.assertEqual((first.version, second.version), (1, 2))
        self.assertEqual(second.created_us, first.created_us)
        self.assertGreater(second.modified_us, first.modified_us)
        self.assertNotEqual(first.etag, second.etag)
        record, partition = self.store.get(BUCKET, b"k")
        self.assertEqual(record, second)
        self.assertIn(partition, [p.name for p in self.store.placement(BUCKET, b"k")])

    def test_delete_then_recreate_never_reuses_an_etag(self):
        first, _, _ = self.store.put(BUCKET, b"k", b"v")
        self.store.delete(BUCKET, b"k")
        with self.assertRaises(datastore.KeyNotFound):
            self.store.get(BUCKET, b"k")
        with self.assertRaises(datastore.KeyNotFound):
            self.store.delete(BUCKET, b"k")
        again, created, _ = self.store.put(BUCKET, b"k", b"v")
        self.assertTrue(created)
        self.assertNotEqual(again.etag, first.etag)
        with self.assertRaises(datastore.PreconditionFailed):
            self.store.put(BUCKET, b"k", b"w", condition=Condition(if_match=(first.etag,)))

    def test_conditions(self):
        with self.assertRaises(datastore.PreconditionFailed):
            self.store.put(BUCKET, b"k", b"v", condition=Condition(if_match="*"))
        record, _, _ = self.store.put(BUCKET, b"k", b"v", condition=Condition(if_none_match="*"))
        with self.assertRaises(datastore.PreconditionFailed):
            self.store.put(BUCKET, b"k", b"v", condition=Condition(if_none_match="*"))
        with self.assertRaises(datastore.KeyExists):
            self.store.put(BUCKET, b"k", b"v", condition=Condition(create_only=True))
        with self.assertRaises(datastore.PreconditionFailed):
            self.store.put(BUCKET, b"k", b"v", condition=Condition(if_match=('W/' + record.etag,)))
        swapped, _, _ = self.store.put(BUCKET, b"k", b"w",
                                       condition=Condition(if_match=('"x"', record.etag)))
        with self.assertRaises(datastore.PreconditionFailed):
            self.store.delete(BUCKET, b"k", Condition(if_match=(record.etag,)))
        self.store.delete(BUCKET, b"k", Condition(if_match=(swapped.etag,)))
        with self.assertRaises(datastore.PreconditionFailed):
            self.store.delete(BUCKET, b"k", Condition(if_match="*"))

    def test_ttl_expiry_makes_the_key_absent_everywhere(self):
        record, _, _ = self.store.put(BUCKET, b"short", b"v", ttl_seconds=60)
        self.assertEqual(record.expires_us, record.modified_us + 60_000_000)
        self.store.put(BUCKET, b"long", b"v")
        with clock_offset(self.store, 61):
            with self.assertRaises(datastore.KeyNotFound):
                self.store.get(BUCKET, b"short")
            self.assertEqual([r.key for r in self.store.list(BUCKET).items], [b"long"])
            with self.assertRaises(datastore.KeyNotFound):
                self.store.delete(BUCKET, b"short")
            again, created, _ = self.store.put(BUCKET, b"short", b"w")
            self.assertTrue(created)
            self.assertIsNone(again.expires_us)
        self.assertEqual(again.version, record.version + 1)

    def test_a_write_without_ttl_clears_it(self):
        self.store.put(BUCKET, b"k", b"v", ttl_seconds=5)
        record, _, _ = self.store.put(BUCKET, b"k", b"w")
        self.assertIsNone(record.expires_us)

    def test_invalid_keys_are_refused_by_every_operation(self):
        for key in INVALID_KEYS:
            for call in (lambda: self.store.get(BUCKET, key),
                         lambda: self.store.put(BUCKET, key, b"v"),
                         lambda: self.store.delete(BUCKET, key)):
                with self.assertRaises(datastore.InvalidKey, msg=key):
                    call()

    def test_value_limit_is_exact(self):
        limit = self.store.settings.max_value_bytes
        self.store.put(BUCKET, b"k", b"x" * limit)
        with self.assertRaises(datastore.ValueTooLarge):
            self.store.put(BUCKET, b"k", b"x" * (limit + 1))
        self.assertEqual(len(self.store.get(BUCKET, b"k")[0].value), limit)

    def test_listing_pages_return_every_live_key_once(self):
        keys = sorted(("k%03d" % i).encode() for i in range(57))
        for key in keys:
            self.store.put(BUCKET, key, b"v")
        self.store.delete(BUCKET, b"k010")
        expected = [k for k in keys if k != b"k010"]
        seen, cursor = [], None
        while True:
            page = self.store.list(BUCKET, cursor=cursor, limit=10)
            seen += [r.key for r in page.items]
            cursor = page.next
            if not cursor:
                break
        self.assertEqual(seen, expected)

    def _walk(self, **kwargs):
        """Every page of a listing: (keys, values, pages)."""
        keys, values, pages, cursor = [], [], 0, None
        while True:
            page = self.store.list(BUCKET, cursor=cursor, **kwargs)
            keys += [r.key for r in page.items]
            values += [r.value for r in page.items]
            pages, cursor = pages + 1, page.next
            if not cursor:
                return keys, values, pages

    def _tombstones(self, count):
        for start in range(0, count, 1000):
            keys = [b"gone-%05d" % i for i in range(start, min(start + 1000, count))]
            self.store.batch(BUCKET, [{"op": "put", "key": k, "value": b"v"} for k in keys])
            self.store.batch(BUCKET, [{"op": "delete", "key": k} for k in keys])
        self.store.put(BUCKET, b"live", b"v")

    def test_a_listing_over_many_tombstones_reads_ahead_in_large_chunks(self):
        self._tombstones(5000)
        scans = []
        for partition in self.store.partitions.values():
            real = partition.scan
            patch = mock.patch.object(partition, "scan", side_effect=lambda *a, real=real:
                                      scans.append(a) or real(*a))
            patch.start()
            self.addCleanup(patch.stop)
        page = self.store.list(BUCKET, limit=1)
        self.assertEqual([r.key for r in page.items], [b"live"])
        self.assertLessEqual(len(scans), 3 * 12)          # 2, 4, 8, ... 1000 rows a query

    def test_a_page_ends_at_the_row_budget_with_a_cursor(self):
        self._tombstones(700)
        with mock.patch.object(listing, "LIST_ROW_BUDGET", 100):
            page = self.store.list(BUCKET, limit=5)
            self.assertEqual((page.items, page.prefixes), ([], []))
            self.assertIsNotNone(page.next)
            keys, _, pages = self._walk(limit=5)
        self.assertEqual(keys, [b"live"])
        self.assertGreaterEqual(pages, 700 // 100)            # one row a key (no sync ran)

    def test_a_page_of_values_ends_at_the_byte_budget(self):
        keys = [b"v%02d" % i for i in range(20)]
        self.store.batch(BUCKET, [{"op": "put", "key": k, "value": k * 500} for k in keys])
        with mock.patch.object(listing, "LIST_VALUE_BYTES", 3000):
            page = self.store.list(BUCKET, limit=100, values=True)
            self.assertEqual([r.key for r in page.items], keys[:2])     # 1,500 bytes each
            self.assertIsNotNone(page.next)
            listed, values, _ = self._walk(limit=100, values=True)
            self.assertEqual((listed, values), (keys, [k * 500 for k in keys]))
            with mock.patch.object(listing, "LIST_VALUE_BYTES", 10):
                page = self.store.list(BUCKET, limit=100, values=True)   # one value at least
                self.assertEqual([r.value for r in page.items], [keys[0] * 500])

    def test_listing_prefix_and_delimiter(self):
        for key in (b"a", b"dir/x", b"dir/y", b"dir/sub/z", b"dis", b"e/f", b"e/g"):
            self.store.put(BUCKET, key, b"v")
        page = self.store.list(BUCKET, delimiter=b"/", limit=2)
        self.assertEqual(([r.key for r in page.items], page.prefixes), ([b"a"], [b"dir/"]))
        page = self.store.list(BUCKET, delimiter=b"/", limit=2, cursor=page.next)
        self.assertEqual(([r.key for r in page.items], page.prefixes), ([b"dis"], [b"e/"]))
        self.assertIsNone(page.next)
        page = self.store.list(BUCKET, prefix=b"dir/", delimiter=b"/")
        self.assertEqual(([r.key for r in page.items], page.prefixes),
                         ([b"dir/x", b"dir/y"], [b"dir/sub/"]))
        page = self.store.list(BUCKET, prefix=b"dir/", values=True, limit=1)
        self.assertEqual((page.items[0].key, page.items[0].value), (b"dir/sub/z", b"v"))

    def test_bad_listing_parameters(self):
        for kwargs in ({"limit": 0}, {"limit": 1001}, {"cursor": "!!"}, {"cursor": "eA"}):
            with self.assertRaises(datastore.InvalidRequest, msg=kwargs):
                self.store.list(BUCKET, **kwargs)

    def test_batch_has_the_single_key_semantics_in_order(self):
        first, _, _ = self.store.put(BUCKET, b"x", b"old")
        ops = [{"op": "put", "key": b"a", "value": b"1"},
               {"op": "put", "key": b"a", "value": b"2"},
               {"op": "get", "key": b"a"},
               {"op": "get", "key": b"missing"},
               {"op": "put", "key": b"x", "value": b"new", "if_match": ('"stale"',)},
               {"op": "put", "key": b"x", "value": b"new", "if_match": (first.etag,), "ttl": 60},
               {"op": "delete", "key": b"a"},
               {"op": "get", "key": b"a"},
               {"op": "put", "key": b"", "value": b"v"},
               {"op": "delete", "key": b"nope"},
               {"op": "put", "key": b"big", "value": b"x" * (self.store.settings.max_value_bytes + 1)},
               {"op": "get", "key": b"x"}]
        results = self.store.batch(BUCKET, ops)
        (_, created1), (a2, created2), got = results[0], results[1], results[2]
        self.assertEqual((created1, created2, a2.version, got), (True, False, 2, a2))
        self.assertIsInstance(results[3], datastore.KeyNotFound)
        self.assertIsInstance(results[4], datastore.PreconditionFailed)
        swapped, created = results[5]
        self.assertEqual((swapped.value, swapped.version, created), (b"new", 2, False))
        self.assertTrue(results[6].deleted)
        self.assertIsInstance(results[7], datastore.KeyNotFound)
        self.assertIsInstance(results[8], datastore.InvalidKey)
        self.assertIsInstance(results[9], datastore.KeyNotFound)
        self.assertIsInstance(results[10], datastore.ValueTooLarge)
        self.assertEqual(results[11], swapped)
        self.assertEqual(self.store.get(BUCKET, b"x")[0], swapped)
        with self.assertRaises(datastore.KeyNotFound):
            self.store.get(BUCKET, b"a")

    def test_batch_writes_go_to_the_next_placement_when_the_owner_is_down(self):
        down = self.store.partitions[self.store.names[0]]
        down._down_until = float("inf")
        keys = [b"k%d" % i for i in range(60)]
        results = self.store.batch(BUCKET, [{"op": "put", "key": k, "value": k} for k in keys])
        self.assertFalse([r for r in results if isinstance(r, Exception)])
        for key in keys:
            record, partition = self.store.get(BUCKET, key)
            self.assertEqual(record.value, key)
            self.assertNotEqual(partition, down.name)
        down._down_until = 0
        reads = self.store.batch(BUCKET, [{"op": "get", "key": k} for k in keys])
        self.assertEqual([r.value for r in reads], keys)

    def _owner_down(self, key):
        """Write ``key`` on its whole placement, then take its first partition down."""
        record, _, _ = self.store.put(BUCKET, key, b"v")
        first, second = self.store.placement(BUCKET, key)[:2]
        second.store_if_newer([first.read(BUCKET, key)])
        first._down_until = float("inf")
        self.addCleanup(setattr, first, "_down_until", 0)
        return record, first

    def test_writes_decided_on_the_current_copy_answer_503_when_it_is_unreachable(self):
        """API.md: a delete, If-Match, If-None-Match or create-only write is not
        decided on a stale replica; an unconditional put still commits."""
        record, first = self._owner_down(b"k")
        for call in (lambda: self.store.delete(BUCKET, b"k"),
                     lambda: self.store.delete(BUCKET, b"k", Condition(if_match="*")),
                     lambda: self.store.put(BUCKET, b"k", b"w", condition=Condition(if_match="*")),
                     lambda: self.store.put(BUCKET, b"k", b"w",
                                            condition=Condition(if_match=(record.etag,))),
                     lambda: self.store.put(BUCKET, b"k", b"w",
                                            condition=Condition(if_none_match="*")),
                     lambda: self.store.put(BUCKET, b"k", b"w",
                                            condition=Condition(create_only=True))):
            with self.assertRaises(datastore.PartitionUnavailable) as caught:
                call()
            self.assertIn(first.name, caught.exception.partitions)
        ops = [{"op": "delete", "key": b"k"}, {"op": "put", "key": b"k", "value": b"x",
                                               "if_none_match": "*"},
               {"op": "put", "key": b"k", "value": b"y"}]
        results = self.store.batch(BUCKET, ops)
        self.assertIsInstance(results[0], datastore.PartitionUnavailable)
        self.assertIsInstance(results[1], datastore.PartitionUnavailable)
        self.assertEqual(results[2][0].value, b"y")
        self.assertEqual(self.store.put(BUCKET, b"k", b"z")[0].value, b"z")
        first._down_until = 0
        self.assertEqual(self.store.get(BUCKET, b"k")[0].value, b"v")  # until sync copies z

    def test_a_delete_of_a_key_only_an_unreachable_partition_holds_is_503_not_404(self):
        key = b"only-on-first"
        first = self.store.placement(BUCKET, key)[0]
        _put(first, key, b"v")
        first._down_until = float("inf")
        self.addCleanup(setattr, first, "_down_until", 0)
        with self.assertRaises(datastore.PartitionUnavailable):
            self.store.delete(BUCKET, key)
        with self.assertRaises(datastore.PartitionUnavailable):
            self.store.put(BUCKET, key, b"w", condition=Condition(create_only=True))
        first._down_until = 0
        self.assertEqual(self.store.get(BUCKET, key)[0].value, b"v")

    def test_a_strict_write_never_moves_to_another_replica_when_a_copy_is_busy(self):
        """A copy that answers "busy" (not down) fails a compare-and-swap with
        503 where it is; moving it to the next replica could let two win."""
        record, _, _ = self.store.put(BUCKET, b"k", b"v")
        second = self.store.placement(BUCKET, b"k")[1]
        busy = datastore.PartitionUnavailable([second.name], "busy", down=False)
        with mock.patch.object(second, "read_many", side_effect=busy):
            with self.assertRaises(datastore.PartitionUnavailable) as caught:
                self.store.put(BUCKET, b"k", b"w", condition=Condition(if_match=(record.etag,)))
            self.assertFalse(caught.exception.down)
        self.assertIsNone(second.read(BUCKET, b"k"))
        self.assertEqual(self.store.get(BUCKET, b"k")[0].value, b"v")
