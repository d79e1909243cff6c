"""This module provides :class:`HttpStore`, a minimalkv store on this service.

A minimalkv user switches by changing one line::

    store = HttpStore("http://127.0.0.1:8080")        # was: DictStore(), RedisStore(...)
    store.put("report.csv", b"...", ttl_secs=3600)

It follows minimalkv's store contract: its key grammar (checked by
minimalkv's own ``_check_valid_key``: ValueError), KeyError for a missing
key, idempotent delete, empty values, ``put_file``/``get_file``/``open``, and
TTLs through ``TimeToLiveMixin`` (whole seconds on the server: a fractional
TTL is rounded up, at least 1 s).  Backend failures are ``IOError``
(``kvclient.KVError`` is an OSError).
"""

import io
import math

from minimalkv import KeyValueStore
from minimalkv._constants import FOREVER, NOT_SET
from minimalkv._mixins import TimeToLiveMixin

from kvclient.errors import NotFound
from kvclient.store import connect


class HttpStore(TimeToLiveMixin, KeyValueStore):
    """minimalkv ``KeyValueStore`` over the HTTP API.

    :param str url: the service, e.g. ``http://127.0.0.1:8080``.
    :param float timeout: seconds per request.
    :param default_ttl_secs: TTL applied when ``put`` gets none (default: none).
    :param options: ``bucket``, ``token``, ``user``, ``password``: as
        :func:`kvclient.connect` takes them.
    """

    def __init__(self, url: str, timeout: float = 10.0, default_ttl_secs=NOT_SET, **options):
        self._client = connect(url, timeout=timeout, **options)
        self.default_ttl_secs = default_ttl_secs

    def close(self):
        self._client.close()

    def _delete(self, key: str) -> None:
        try:
            self._client.delete(key)
        except NotFound:
            pass

    def _get(self, key: str) -> bytes:
        return self._client.get(key)

    def _has_key(self, key: str) -> bool:
        return key in self._client

    def _open(self, key: str):
        return io.BytesIO(self._get(key))

    def _put(self, key: str, data: bytes, ttl_secs=NOT_SET) -> str:
        ttl = None
        if ttl_secs not in (NOT_SET, FOREVER, None):
            ttl = max(1, math.ceil(ttl_secs))
        self._client.put(key, data, ttl=ttl)
        return key

    def _put_file(self, key: str, file, ttl_secs=NOT_SET) -> str:
        return self._put(key, file.read(), ttl_secs)

    def iter_keys(self, prefix: str = ""):
        return self._client.iter_keys(prefix)

    def iter_prefixes(self, delimiter: str, prefix: str = ""):
        return self._client.iter_prefixes(delimiter, prefix)
