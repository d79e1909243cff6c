"""The one service the client tests (test_clients.py, test_cli.py) run
against: gunicorn on three shared MariaDB partitions (replicas = 2), started
by the first test that asks for it and stopped when the test run exits.

One start for both modules, as when they were one: a gunicorn start is
where a loaded machine makes a run fail (test_server.ServedProcess gives the
first worker 1 s to answer).  The exit handler is registered after
dbservers' own, so it runs first: the service stops before its servers."""

import atexit
import os
import shutil
import tempfile

import dbservers
import test_server


class Service:
    """One gunicorn service on the shared MariaDB servers."""
    server = None

    @classmethod
    def start(cls):
        if cls.server is None:
            cls.dir = tempfile.mkdtemp(prefix="kv-clients-")
            servers = dbservers.shared(3)
            config = dbservers.write_config(os.path.join(cls.dir, "c.cfg"), servers, replicas=2)
            port = dbservers.free_port()
            gunicorn = test_server.GunicornServerTest
            cls.server = test_server.ServedProcess(gunicorn.command + gunicorn.listen_args(port),
                                                   config, port)
        return cls.server

    @staticmethod
    def wipe():
        for server in dbservers.shared(3):
            server.execute("DELETE FROM kv_rows")

    @classmethod
    def stop(cls):
        if cls.server is not None:
            cls.server.stop()
            cls.server = None
            shutil.rmtree(cls.dir, ignore_errors=True)


atexit.register(Service.stop)
