"""Placement (rendezvous hashing) and configuration loading."""

import collections
import os
import tempfile
import unittest

from kv.configuration import ConfigurationError, load_config
from datastore import placement

NAMES3 = ["partition-1", "partition-2", "partition-3"]


class PlacementTest(unittest.TestCase):
    def test_golden_vectors_are_pinned(self):
        # A change here strands stored data: keys would be looked up elsewhere.
        self.assertEqual(placement(b"default", b"greeting", NAMES3, 2), ["partition-3", "partition-2"])
        self.assertEqual(placement(b"default", b"a", NAMES3, 3),
                         ["partition-2", "partition-1", "partition-3"])
        self.assertEqual(placement(b"default", "ключ".encode(), NAMES3 + ["partition-4"], 1),
                         ["partition-1"])

    def test_order_of_names_does_not_matter_and_buckets_differ(self):
        keys = [b"k%d" % i for i in range(200)]
        for key in keys:
            self.assertEqual(placement(b"default", key, NAMES3, 2),
                             placement(b"default", key, list(reversed(NAMES3)), 2))
        self.assertNotEqual([placement(b"default", k, NAMES3, 1) for k in keys],
                            [placement(b"other", k, NAMES3, 1) for k in keys])

    def test_10000_keys_spread_within_15_percent_of_even(self):
        for replicas in (1, 2):
            counts = collections.Counter()
            for i in range(10000):
                counts.update(placement(b"default", b"key-%d" % i, NAMES3, replicas))
            even = 10000 * replicas / 3
            for name in NAMES3:
                self.assertLess(abs(counts[name] - even) / even, 0.15, counts)

    def test_adding_a_partition_moves_about_one_in_n_plus_one_keys_all_onto_it(self):
        names4 = NAMES3 + ["partition-4"]
        for replicas in (1, 2):
            moved = 0
            for i in range(10000):
                key = b"key-%d" % i
                before = placement(b"default", key, NAMES3, replicas)
                after = placement(b"default", key, names4, replicas)
                if before != after:
                    moved += 1
                    self.assertIn("partition-4", after)
                    # Only the new partition enters; the others keep their order.
                    self.assertEqual([n for n in after if n != "partition-4"], before[:replicas - 1])
                else:
                    self.assertNotIn("partition-4", after)
            expected = 10000 * replicas / 4
            self.assertLess(abs(moved - expected) / expected, 0.15, moved)


class ConfigurationTest(unittest.TestCase):
    GOOD = ("[server]\nmax_value_bytes = 1024\n[cluster]\npartitions = 2\nreplicas = 2\n"
            "[partition-1]\nengine = sqlite\npath = a.db\n"
            "[partition-2]\nengine = mysql\nhost = db2\npassword = s3cret\n")

    def load(self, text):
        with tempfile.NamedTemporaryFile("w", suffix=".cfg", delete=False) as f:
            f.write(text)
        self.addCleanup(os.unlink, f.name)
        return load_config(f.name)

    def test_good_configuration_and_defaults(self):
        settings = self.load(self.GOOD)
        self.assertEqual((settings.max_value_bytes, settings.replicas), (1024, 2))
        p1, p2 = settings.partitions
        self.assertTrue(p1.path.endswith("/a.db") and os.path.isabs(p1.path))
        self.assertEqual((p2.host, p2.port, p2.pool_size, p2.read_timeout_seconds), ("db2", 3306, 20, 1))
        self.assertNotIn("s3cret", repr(settings))

    def test_shipped_configuration_loads(self):
        settings = load_config(os.path.join(os.path.dirname(os.path.dirname(
            os.path.abspath(__file__))), "configuration.cfg"))
        self.assertEqual([p.engine for p in settings.partitions], ["sqlite"] * 3)

    def test_every_error_names_section_and_option(self):
        cases = [
            (self.GOOD.replace("[server]\n", "[srv]\n"), "server", None),
            (self.GOOD.replace("partitions = 2", "partitions = 3"), "partition-3", None),
            (self.GOOD.replace("partitions = 2", "partitions = 1").replace("replicas = 2", "replicas = 1"),
             "partition-2", None),
            (self.GOOD.replace("replicas = 2", "replicas = 3"), "cluster", "replicas"),
            (self.GOOD.replace("engine = mysql", "engine = redis"), "partition-2", "engine"),
            (self.GOOD.replace("max_value_bytes = 1024", "max_value_bytes = lots"),
             "server", "max_value_bytes"),
            (self.GOOD.replace("max_value_bytes = 1024", "max_value_bytes = 16777216"),
             "server", "max_value_bytes"),
            (self.GOOD.replace("path = a.db", ""), "partition-1", "path"),
            (self.GOOD + "port = 0\n", "partition-2", "port"),
            (self.GOOD.replace("partitions = 2\n", ""), "cluster", "partitions"),
            # typos stop start-up instead of passing silently
            (self.GOOD.replace("max_value_bytes", "max_value_byte"), "server", "max_value_byte"),
            (self.GOOD + "[metric]\npublic = true\n", "metric", None),
            (self.GOOD.replace("path = a.db", "path = a.db\nhost = db1"), "partition-1", "host"),
            (self.GOOD + "pool_sise = 4\n", "partition-2", "pool_sise"),
        ]
        for text, section, option in cases:
            with self.assertRaises(ConfigurationError) as caught:
                self.load(text)
            self.assertEqual((caught.exception.section, caught.exception.option), (section, option))
            self.assertIn("[%s]" % section, str(caught.exception))
            self.assertNotIn("s3cret", str(caught.exception))
        with self.assertRaises(ConfigurationError):
            load_config("/nonexistent/configuration.cfg")
