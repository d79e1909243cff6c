"""kv: a sharded key-value store over HTTP, backed by MySQL/MariaDB.

The package holds everything behind the three entry points at the top of the
repository (controller.py, datastore.py, sync.py); the README's "Code map"
shows its parts and which way the imports go.
"""
