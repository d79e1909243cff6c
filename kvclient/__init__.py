"""kvclient: the clients of the key-value service, all over its HTTP API (API.md).

    >>> import kvclient
    >>> store = kvclient.connect("http://127.0.0.1:8080", timeout=5)
    >>> store.put("greeting", b"hello").version
    1
    >>> store.get("greeting")
    b'hello'

With authentication on, a Sauropod-style app+user session::

    >>> import kvclient as client
    >>> app = client.connect("http://kv:8080", app="notes", token=APP_TOKEN)
    >>> s = app.start_session("alice@example.com", {"password": "..."})
    >>> s.set("test", "TEST"); s.get("test")
    b'TEST'

The package imports no module of the server.  Its parts:

- :mod:`kvclient.store`: :func:`connect` and :class:`Store`, the library
  (transport, buckets, retries, the rules for a write whose answer was
  lost), with the service URL and the credentials' header in
  :mod:`kvclient.connection`;
- :mod:`kvclient.tenants`: the part of :class:`Store` beyond one bucket's
  keys: buckets, sessions, cross-bucket reads, aggregates, administration;
- :mod:`kvclient.sessions`: :class:`SessionStore`, what
  :meth:`Store.start_session` returns;
- :mod:`kvclient.records`: :class:`Record`, the decoding of JSON records
  and the API's time format;
- :mod:`kvclient.watch`: :class:`Watcher`, what :meth:`Store.watch` returns
  (the change feed, with reconnection and resumption), and its
  :class:`Change` and :class:`Page`;
- :mod:`kvclient.errors`: :class:`KVError` and its subclasses;
- :mod:`kvclient.cli`: the ``kv`` command line (arguments, exit codes), with
  its single-key and health commands in :mod:`kvclient.commands`, load and
  restore in :mod:`kvclient.bulk` (input formats in :mod:`kvclient.rows`,
  parallel batches, Ctrl-C and the resume file in :mod:`kvclient.pipeline`),
  dump and rm --prefix in :mod:`kvclient.ranges`, the administration
  commands in :mod:`kvclient.admin`;
- :mod:`kvclient.minimalkv_store`: :class:`HttpStore`, a minimalkv store
  (not imported here: it needs minimalkv).

This module re-exports the library's public names.
"""

from kvclient.errors import (BadRequest, Conflict, CursorExpired, Forbidden, Indeterminate,
                             InvalidKey, KVError, NotFound, PreconditionFailed, ServerError,
                             TooLarge, Unauthorized, Unavailable)
from kvclient.records import Record, decode_value, format_time, parse_time
from kvclient.sessions import SessionStore
from kvclient.store import Store, connect
from kvclient.watch import Change, Page, Watcher

__all__ = ["connect", "Store", "SessionStore", "Record", "decode_value", "parse_time", "format_time",
           "KVError",
           "NotFound", "InvalidKey", "BadRequest", "PreconditionFailed", "Conflict", "TooLarge",
           "Unavailable", "Indeterminate", "ServerError", "Unauthorized", "Forbidden", "CursorExpired",
           "Watcher", "Change", "Page"]
