"""POST /batch: many reads and writes in one request, grouped by partition
into one query (reads) or one transaction (writes) each."""

from typing import Optional, Sequence

from kv.errors import DatastoreError, KeyNotFound, PartitionUnavailable
from kv.records import Condition, Record, check_key, put_record, tombstone


def run_batch(store, bucket: bytes, ops: Sequence[dict]) -> list:
    """Run many ops, grouped by partition into one transaction each.

    Ops on different keys are independent; ops on the same key apply in
    order, with the semantics of :meth:`Datastore.get`, :meth:`Datastore.put`
    and :meth:`Datastore.delete`.  A key with only reads is read with one query per
    partition; a key with a write is locked, checked and written in its
    partition's transaction (multi-row statements).

    :param Datastore store: the cluster.
    :param ops: dicts with ``op`` ("get", "put", "delete"), ``key`` (bytes)
        and for put ``value`` (bytes), ``ttl`` (seconds or None); puts and
        deletes take ``if_match``/``if_none_match`` (as :class:`Condition`).
    :returns: one entry per op, in order: for get a Record, for put a
        (Record, created) pair, for delete the tombstone Record, or the
        :class:`DatastoreError` the single-key call would have raised.
    """
    results: list = [None] * len(ops)
    by_key: dict = {}
    for i, op in enumerate(ops):
        try:
            if op["op"] == "put":
                store.check_put(op["key"], op["value"], op.get("ttl"))
            else:
                check_key(op["key"])
        except DatastoreError as e:
            results[i] = e
            continue
        by_key.setdefault(op["key"], []).append(i)
    readers = {k for k, idx in by_key.items() if all(ops[i]["op"] == "get" for i in idx)}
    _batch_reads(store, bucket, [k for k in by_key if k in readers], by_key, results)
    writers = [k for k in by_key if k not in readers]
    _batch_writes(store, bucket, writers, by_key, ops, results)
    return results


def _batch_reads(store, bucket, keys, by_key, results) -> None:
    groups: dict = {}
    for key in keys:
        groups.setdefault(store.placement(bucket, key)[0], []).append(key)
    now = store.clock()
    for partition, group in groups.items():
        try:
            found = partition.read_many([(bucket, k) for k in group])
        except PartitionUnavailable:
            found = {}
        for key in group:
            record = found.get((bucket, key))
            if record is None or not record.is_live(now):
                try:
                    record = store.get(bucket, key)[0]      # the full read path
                except DatastoreError as e:
                    record = e
            for i in by_key[key]:
                results[i] = record


def _batch_writes(store, bucket, keys, by_key, ops, results) -> None:
    """Write the keys of ``keys`` (each with its ops by_key[key]) on the
    first partition of their placement that is not down (see :meth:`_write`)."""
    strict = {key for key in keys if any(_is_strict(ops[i]) for i in by_key[key])}
    pending, failures = list(keys), {}
    for rank in range(store.replicas):
        groups: dict = {}
        for key in pending:
            groups.setdefault(store.placement(bucket, key)[rank], []).append(key)
        pending = []
        for partition, group in groups.items():
            def apply(current, now, unknown, group=group):
                final = {}
                for key in group:
                    state = current.get(key)
                    for i in by_key[key]:
                        if key in unknown and _is_strict(ops[i]):
                            results[i] = unknown[key]
                            continue
                        results[i], state, changed = _apply_op(bucket, key, ops[i], state, now)
                        if changed:
                            final[key] = state
                return final
            try:
                store.send_with_others(
                    partition, bucket, [k for k in group if k in strict],
                    lambda others: partition.write_many(bucket, group, apply, others, strict))
            except PartitionUnavailable as e:
                if not e.down:
                    for key in group:
                        for i in by_key[key]:
                            results[i] = e
                    continue
                pending += group
                for key in group:
                    failures.setdefault(key, []).append(partition.name)
    for key in pending:
        for i in by_key[key]:
            results[i] = PartitionUnavailable(failures[key])


def _is_strict(op: dict) -> bool:
    """True for a batch op whose outcome depends on the current copy."""
    return op["op"] == "delete" or op.get("if_match") is not None \
        or op.get("if_none_match") is not None


def _apply_op(bucket: bytes, key: bytes, op: dict, state: Optional[Record], now: int):
    """Apply one batch op to ``state``: (result, new state, changed)."""
    kind = op["op"]
    try:
        if kind == "get":
            if state is not None and state.is_live(now):
                return state, state, False
            raise KeyNotFound(key)
        condition = Condition(op.get("if_match"), op.get("if_none_match"))
        if kind == "delete":
            record = tombstone(key, condition, state, now)
            return record, record, True
        record = put_record(bucket, key, op["value"], op.get("ttl"), condition, state, now)
        return (record, state is None or not state.is_live(now)), record, True
    except DatastoreError as e:
        return e, state, False
