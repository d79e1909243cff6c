"""The HTTP layer of ../shared/API.md (controller.py is its entry point),
one concern per module:

- :mod:`kv.http.errors`: HTTPProblem and the one table that turns an
  exception into an HTTP status (ERROR_STATUS, problem_of);
- :mod:`kv.http.request`: what a handler reads from the request (query,
  bounded body, Content-Type, the key of the path, a PUT/POST record);
- :mod:`kv.http.conditional`: If-Match / If-None-Match / If-Modified-Since
  and the validators of a record (ETag, Last-Modified);
- :mod:`kv.http.bodies`: the bounded parsers of JSON, XML and form bodies.

Imports flow one way: controller.py -> kv.http -> kv.errors / kv.records.
Nothing here imports controller.py or the datastore.
"""
