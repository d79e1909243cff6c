"""kvclient: the clients of the key-value service, all over its HTTP API (API.md).

    >>> import kvclient
    >>> store = kvclient.connect("http://127.0.0.1:8080", timeout=5)
    >>> store.put("greeting", b"hello").version
    1
    >>> store.get("greeting")
    b'hello'

The package imports no module of the server.  Its parts:

- :mod:`kvclient.store`: :func:`connect` and :class:`Store`, the library
  (transport, retries, the rules for a write whose answer was lost);
- :mod:`kvclient.records`: :class:`Record` and the decoding of JSON records;
- :mod:`kvclient.errors`: :class:`KVError` and its subclasses;
- :mod:`kvclient.cli`: the ``kv`` command line (arguments, exit codes), with
  its single-key commands in :mod:`kvclient.commands` and load, dump and
  restore in :mod:`kvclient.bulk`;
- :mod:`kvclient.minimalkv_store`: :class:`HttpStore`, a minimalkv store
  (not imported here: it needs minimalkv).

This module re-exports the library's public names.
"""

from kvclient.errors import (BadRequest, Conflict, Indeterminate, InvalidKey, KVError, NotFound,
                             PreconditionFailed, ServerError, TooLarge, Unavailable)
from kvclient.records import Record, decode_value, parse_time
from kvclient.store import Store, connect

__all__ = ["connect", "Store", "Record", "decode_value", "parse_time", "KVError", "NotFound",
           "InvalidKey", "BadRequest", "PreconditionFailed", "Conflict", "TooLarge", "Unavailable",
           "Indeterminate", "ServerError"]
