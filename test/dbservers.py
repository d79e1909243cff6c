"""Throwaway MariaDB servers for the tests: each has its own datadir under a
temporary directory, listens on a free port on 127.0.0.1, and is stopped at
exit.  Works as root (mariadbd --user=root) and as an ordinary user.
"""

import atexit
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import MySQLdb

from kv.configuration import PartitionSettings
from kv.storage.engines import MySQLPartition

PASSWORD = "kv-test-password"
_ROOT = tempfile.mkdtemp(prefix="kv-mariadb-")
_RUNNING = []
_REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _binary(name):
    for candidate in (shutil.which(name), "/usr/sbin/" + name, "/usr/bin/" + name):
        if candidate and os.path.exists(candidate):
            return candidate
    raise RuntimeError("%s is not installed (make test installs mariadb-server)" % name)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MariaDB:
    """One mariadbd process with database ``kv`` and user ``kv``.

    ``start()`` initialises the datadir on first use; ``kill()`` sends SIGKILL
    (a crash); ``start()`` again restarts on the same datadir and port.
    """

    durable = False      # True: flush the redo log at every commit (benchmarks)
    buffer_pool_mib = 64

    def __init__(self, name: str):
        self.name = name
        self.dir = os.path.join(_ROOT, name)
        self.datadir = os.path.join(self.dir, "data")
        self.socket = os.path.join(self.dir, "mysqld.sock")
        self.port = free_port()
        self.process = None

    def _server_args(self):
        args = [_binary("mariadbd"), "--no-defaults", "--datadir=" + self.datadir,
                "--port=%d" % self.port, "--bind-address=127.0.0.1", "--socket=" + self.socket,
                "--pid-file=" + os.path.join(self.dir, "mysqld.pid"),
                "--log-error=" + os.path.join(self.dir, "error.log"),
                "--skip-name-resolve", "--skip-log-bin",
                "--innodb-buffer-pool-size=%dM" % self.buffer_pool_mib,
                "--innodb-log-file-size=16M", "--max-allowed-packet=64M",
                "--innodb-flush-log-at-trx-commit=%d" % (1 if self.durable else 2),
                "--max-connections=500"]
        if os.geteuid() == 0:
            args.append("--user=root")
        return args

    def start(self) -> "MariaDB":
        fresh = not os.path.exists(self.datadir)
        if fresh:
            os.makedirs(self.dir, exist_ok=True)
            cmd = [_binary("mariadb-install-db"), "--no-defaults", "--datadir=" + self.datadir,
                   "--auth-root-authentication-method=normal", "--skip-test-db"]
            if os.geteuid() == 0:
                cmd.append("--user=root")
            out = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            if out.returncode:
                raise RuntimeError("mariadb-install-db failed:\n" + out.stdout.decode()[-2000:])
        self.process = subprocess.Popen(self._server_args(), stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
        if self not in _RUNNING:
            _RUNNING.append(self)
        deadline = time.monotonic() + 60
        while True:
            try:
                conn = MySQLdb.connect(unix_socket=self.socket, user="root", connect_timeout=2)
                break
            except MySQLdb.Error:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("mariadbd %s did not start:\n%s" % (self.name, self.log()))
                time.sleep(0.1)
        if fresh:
            cur = conn.cursor()
            cur.execute("CREATE DATABASE IF NOT EXISTS kv")
            cur.execute("CREATE USER IF NOT EXISTS 'kv'@'%%' IDENTIFIED BY '%s'" % PASSWORD)
            cur.execute("GRANT ALL ON kv.* TO 'kv'@'%'")
        conn.close()
        return self

    def log(self) -> str:
        try:
            with open(os.path.join(self.dir, "error.log")) as f:
                return f.read()[-3000:]
        except OSError:
            return "(no error log)"

    def kill(self) -> None:
        """SIGKILL the server, as a crash would."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()

    def settings(self, name: str, **overrides) -> PartitionSettings:
        """PartitionSettings for a partition called ``name`` on this server."""
        return PartitionSettings(name, "mysql", host="127.0.0.1", port=self.port, user="kv",
                                 password=PASSWORD, database="kv", **overrides)

    def config_section(self, name: str) -> str:
        """A configuration.cfg section for a partition called ``name`` on this server."""
        return ("[%s]\nengine = mysql\nhost = 127.0.0.1\nport = %d\nuser = kv\npassword = %s\n"
                "database = kv\n" % (name, self.port, PASSWORD))

    def apply_schema(self) -> None:
        """Create the tables as ``python datastore.py schema`` does."""
        partition = MySQLPartition(self.settings("schema"))
        partition.apply_schema()
        partition.close()

    def execute(self, sql: str, params=()):
        """Run one statement as root in database kv; returns the rows."""
        conn = MySQLdb.connect(unix_socket=self.socket, user="root", database="kv", autocommit=True)
        try:
            cur = conn.cursor()
            cur.execute(sql, params)
            return cur.fetchall()
        finally:
            conn.close()


_SHARED = []


def shared(count: int):
    """``count`` running servers shared by the whole test run (schema applied;
    callers empty the tables they use)."""
    while len(_SHARED) < count:
        server = MariaDB("shared-%d" % (len(_SHARED) + 1)).start()
        server.apply_schema()
        _SHARED.append(server)
    for server in _SHARED[:count]:
        if server.process.poll() is not None:
            server.start()
    return _SHARED[:count]


def cluster(test, prefix: str, count: int = 3, replicas: int = 2):
    """Start ``count`` fresh servers named PREFIX-1.. with the schema, for one
    test (stopped by its cleanup), and write their configuration.

    :returns: (servers, configuration path in a temporary directory).
    """
    folder = tempfile.mkdtemp(prefix="kv-%s-" % prefix)
    test.addCleanup(shutil.rmtree, folder, True)
    servers = []
    for i in range(1, count + 1):
        server = MariaDB("%s-%d" % (prefix, i))
        test.addCleanup(server.stop)
        servers.append(server.start())
        server.apply_schema()
    return servers, write_config(os.path.join(folder, "c.cfg"), servers, replicas)


class _Database:
    """A shared server seen through another database on it (for write_config)."""

    def __init__(self, server, database):
        self.server, self.database = server, database

    def config_section(self, name):
        return self.server.config_section(name).replace("database = kv\n",
                                                        "database = %s\n" % self.database)


def fresh_database(database: str, count: int = 3):
    """The database ``database``, created anew with the schema on each of
    ``count`` shared servers, for a test file that keeps its own data.

    :returns: one view per server, to pass to :func:`write_config`.
    """
    views = []
    for server in shared(count):
        server.execute("DROP DATABASE IF EXISTS %s" % database)
        server.execute("CREATE DATABASE %s" % database)
        server.execute("GRANT ALL ON %s.* TO 'kv'@'%%%%'" % database)   # %% for mogrify
        partition = MySQLPartition(PartitionSettings(
            "schema", "mysql", port=server.port, password=PASSWORD, database=database))
        partition.apply_schema()
        partition.close()
        views.append(_Database(server, database))
    return views


def temp_config(test, text: str, prefix: str = "kv-config-") -> str:
    """Write ``text`` as c.cfg in a temporary folder that ``test``'s cleanup
    removes (SQLite partition paths in it are relative to that folder).

    :returns: the configuration file's path.
    """
    folder = tempfile.mkdtemp(prefix=prefix)
    test.addCleanup(shutil.rmtree, folder, True)
    path = os.path.join(folder, "c.cfg")
    with open(path, "w") as f:
        f.write(text)
    return path


def write_config(path: str, servers, replicas: int, extra: str = "") -> str:
    """Write a configuration file with one MySQL partition per server."""
    sections = "".join(s.config_section("partition-%d" % (i + 1)) + "\n"
                       for i, s in enumerate(servers))
    with open(path, "w") as f:
        f.write("[server]\nmax_value_bytes = 1048576\n\n[cluster]\npartitions = %d\nreplicas = %d\n\n%s%s"
                % (len(servers), replicas, sections, extra))
    return path


def bootstrap_admin(config: str, name: str = "root", again: bool = False) -> str:
    """Run ``python datastore.py bootstrap-admin NAME`` on ``config`` and
    return the admin token it prints (the only line of its standard output).

    :raises AssertionError: when it fails or prints anything else.
    """
    done = subprocess.run([sys.executable, "datastore.py", "bootstrap-admin", name,
                           "--config", config] + (["--again"] if again else []),
                          cwd=_REPOSITORY, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          timeout=120)
    lines = done.stdout.decode().splitlines()
    assert done.returncode == 0 and len(lines) == 1, (done.returncode, done.stdout,
                                                      done.stderr.decode()[-3000:])
    return lines[0].strip()


@atexit.register
def _stop_all():
    for server in _RUNNING:
        server.stop()
    shutil.rmtree(_ROOT, ignore_errors=True)
