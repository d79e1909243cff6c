"""Placement: on which partitions a key is stored, by rendezvous hashing."""

import hashlib
from typing import List, Sequence


def ranking(bucket: bytes, key: bytes, names: Sequence[str]) -> List[str]:
    """All partition names in rendezvous order for (bucket, key), best first."""
    suffix = b"\x00" + bucket + b"\x00" + key
    scored = [(hashlib.blake2b(name.encode("utf-8") + suffix, digest_size=8).digest(), name)
              for name in names]
    scored.sort(reverse=True)
    return [name for _, name in scored]


def placement(bucket: bytes, key: bytes, names: Sequence[str], replicas: int) -> List[str]:
    """Return the partitions that store (bucket, key), in serving order.

    Rendezvous (highest random weight) hashing: every partition name gets the
    score blake2b-64(name NUL bucket NUL key) and the ``replicas`` highest
    scores win, ties broken by the greater name.  Adding a partition moves a key
    only if the new partition enters its top ``replicas``, about
    replicas/(N+1) of the keys, and never between two old partitions.  NUL
    cannot occur in names, buckets or keys, so the hashed bytes are unambiguous.
    Source: Thaler and Ravishankar, "Using Name-Based Mappings to Increase Hit
    Rates", IEEE/ACM Transactions on Networking 6(1), 1998.

    :param bytes bucket: the namespace (``b"default"`` for /keys).
    :param bytes key: the key, UTF-8 bytes.
    :param names: the partition names (configuration section names).
    :param int replicas: how many partitions to return (1 to len(names)).
    :returns: list of ``replicas`` partition names, first = preferred.
    """
    return ranking(bucket, key, names)[:replicas]
