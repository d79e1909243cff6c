"""The HTTP layer of ../shared/API.md (controller.py is its entry point):
:mod:`kv.http.bodies` parses request bodies.

Imports flow one way: controller.py -> kv.http -> kv.errors / kv.records.
Nothing here imports controller.py or the datastore.
"""
