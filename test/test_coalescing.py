"""The coalescer on its own: who runs which batch, and who gets which outcome."""

import threading
import time
import unittest

from kv.storage.coalescing import Coalescer


class Recorder:
    """run() that records its batches and can be held open by the test."""

    def __init__(self):
        self.batches = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()

    def __call__(self, items):
        self.batches.append(list(items))
        self.entered.set()
        self.gate.wait(10)
        return [ValueError(item) if item == "bad" else item.upper() for item in items]


def _until(predicate):
    deadline = time.monotonic() + 10
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        time.sleep(0.001)


class CoalescerTest(unittest.TestCase):
    def setUp(self):
        self.run = Recorder()
        self.coalescer = Coalescer(self.run, max_items=3)
        self.results = {}

    def submit_in_thread(self, item):
        def go():
            try:
                self.results[item] = self.coalescer.submit(item)
            except Exception as e:
                self.results[item] = e
        thread = threading.Thread(target=go)
        thread.start()
        return thread

    def queued(self):
        return len(self.coalescer._queue)

    def test_an_idle_coalescer_runs_at_once(self):
        self.assertEqual(self.coalescer.submit("a"), "A")
        self.assertEqual(self.coalescer.submit("b"), "B")
        self.assertEqual(self.run.batches, [["a"], ["b"]])

    def test_callers_that_arrive_during_a_batch_share_the_next_one_in_order(self):
        self.run.gate.clear()
        first = self.submit_in_thread("first")
        self.run.entered.wait(10)
        waiting = []
        for item in ("b", "c", "d", "e"):      # max_items = 3: "e" waits for a third batch
            waiting.append(self.submit_in_thread(item))
            _until(lambda n=len(waiting): self.queued() == n)
        self.run.gate.set()
        for thread in [first] + waiting:
            thread.join(10)
        self.assertEqual(self.run.batches, [["first"], ["b", "c", "d"], ["e"]])
        self.assertEqual(self.results, {"first": "FIRST", "b": "B", "c": "C", "d": "D", "e": "E"})

    def test_a_failed_item_fails_only_its_caller(self):
        self.run.gate.clear()
        first = self.submit_in_thread("first")
        self.run.entered.wait(10)
        threads = [self.submit_in_thread("bad")]
        _until(lambda: self.queued() == 1)
        threads.append(self.submit_in_thread("good"))
        _until(lambda: self.queued() == 2)
        self.run.gate.set()
        for thread in [first] + threads:
            thread.join(10)
        self.assertIsInstance(self.results["bad"], ValueError)
        self.assertEqual(self.results["good"], "GOOD")

    def test_a_failed_batch_fails_each_of_its_callers_and_the_next_batch_runs(self):
        calls = []

        def run(items):
            calls.append(list(items))
            if len(calls) == 1:
                entered.set()
                gate.wait(10)
                raise ConnectionError("down")
            return items
        entered, gate = threading.Event(), threading.Event()
        self.coalescer = Coalescer(run, max_items=10)
        first = self.submit_in_thread("first")
        entered.wait(10)
        second = self.submit_in_thread("second")
        _until(lambda: self.queued() == 1)
        gate.set()
        first.join(10)
        second.join(10)
        self.assertIsInstance(self.results["first"], ConnectionError)
        self.assertEqual(self.results["second"], "second")
        self.assertEqual(self.coalescer.submit("third"), "third")

    def test_every_caller_gets_its_own_outcome_under_load(self):
        coalescer = Coalescer(lambda items: [i * 2 for i in items], max_items=64)
        wrong = []

        def worker(base):
            for i in range(base, base + 500):
                if coalescer.submit(i) != 2 * i:
                    wrong.append(i)
        threads = [threading.Thread(target=worker, args=(n * 1000,)) for n in range(16)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        self.assertEqual(wrong, [])
        self.assertFalse(coalescer._busy)


if __name__ == "__main__":
    unittest.main()
