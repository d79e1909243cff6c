"""The HTTP layer of ../shared/API.md, one concern per module:

- :mod:`kv.http.errors`: HTTPProblem and the one table that turns an
  exception into an HTTP status (ERROR_STATUS, problem_of);
- :mod:`kv.http.representations`: the wire formats and the one table of
  payload kind x format -> renderer (a missing cell is 406);
- :mod:`kv.http.negotiation`: mimerender wired to that table, and the
  ``endpoint`` decorator every handler method wears;
- :mod:`kv.http.request`: what a handler reads from the request (query,
  bounded body, Content-Type, the key of the path, a PUT/POST record);
- :mod:`kv.http.conditional`: If-Match / If-None-Match / If-Modified-Since
  and the validators of a record (ETag, Last-Modified);
- :mod:`kv.http.bodies`: the bounded parsers of JSON, XML and form bodies.

Imports flow one way: controller.py -> kv.http -> kv.errors / kv.records.
Nothing here imports controller.py or the datastore.
"""
