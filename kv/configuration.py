"""This module provides the service configuration: reading and validating
``configuration.cfg`` (or the file named by ``$KV_CONFIG``) into frozen objects.

Every problem is one :class:`ConfigurationError` naming the section and
option, raised at start-up, so a bad file never half-starts a node; an
unknown section or option is one too (a typo must not pass silently).  Defaults
live in :data:`DEFAULTS` with their units; passwords never appear in ``repr``.
"""

import configparser
import dataclasses
import os
from typing import Optional, Tuple

__all__ = ["ConfigurationError", "Settings", "PartitionSettings", "SyncSettings",
           "MetricsSettings", "load_config", "DEFAULTS", "default_path"]

MAX_VALUE_BYTES_LIMIT = 16 * 1024 * 1024 - 1   # MEDIUMBLOB
ENGINES = ("mysql", "sqlite")


class ConfigurationError(Exception):
    """The configuration is unusable.

    :ivar str section: the section at fault (``""`` for the file itself).
    :ivar str option: the option at fault, or None.
    """

    code = "configuration_error"

    def __init__(self, section: str, option: Optional[str], problem: str):
        self.section, self.option = section, option
        where = "[%s] %s" % (section, option) if option else "[%s]" % section
        super().__init__("%s: %s" % (where, problem) if section else problem)


@dataclasses.dataclass(frozen=True)
class PartitionSettings:
    """One ``[partition-N]`` section.  ``path`` is for SQLite, the rest for MySQL.

    Timeouts are whole seconds (mysqlclient takes integers).
    """
    name: str
    engine: str
    path: Optional[str] = None
    host: str = "127.0.0.1"
    port: int = 3306
    user: str = "kv"
    password: str = dataclasses.field(default="", repr=False)
    database: str = "kv"
    pool_size: int = 20                    # connections per process (MySQL): one per thread
    connect_timeout_seconds: int = 1
    read_timeout_seconds: int = 1
    write_timeout_seconds: int = 1
    retry_interval_seconds: int = 2        # how long a failed partition counts as down


@dataclasses.dataclass(frozen=True)
class SyncSettings:
    """The ``[sync]`` section: tombstone_days (days), batch_size (rows)."""
    tombstone_days: int = 7
    batch_size: int = 1000                 # rows


@dataclasses.dataclass(frozen=True)
class AuthSettings:
    """The ``[auth]`` section (API.md "Authentication"): ``enabled`` (off by
    default: every request is allowed), ``session_seconds`` (how long a
    session token lives, seconds; 24 h) and ``refresh_seconds`` (how old the
    users, tokens and rules a web node holds in memory may be, seconds: a
    change takes effect everywhere within this; at most 30)."""
    enabled: bool = False
    session_seconds: int = 86400
    refresh_seconds: int = 10


@dataclasses.dataclass(frozen=True)
class MetricsSettings:
    """The ``[metrics]`` section (API.md "Metrics"; README "Monitoring"):
    ``enabled`` (GET /metrics and the counting behind it; on by default),
    ``public`` (with authentication on, /metrics needs no credentials;
    otherwise it needs ``read`` on the scope ``_metrics``), ``directory``
    (where ``python -m kv.serve`` keeps the worker processes' metric files;
    relative to the configuration file; emptied of ``*.db`` at start) and
    ``access_log`` (``-``: standard error, ``off``, or a file, relative to
    the configuration file)."""
    enabled: bool = True
    public: bool = False
    directory: str = "data/metrics"
    access_log: str = "-"


@dataclasses.dataclass(frozen=True)
class Settings:
    """The whole configuration.

    ``max_value_bytes`` and ``max_batch_bytes`` are bytes; ``partitions`` is in
    section order; ``path`` is the file it was read from.
    """
    path: str
    max_value_bytes: int
    max_batch_bytes: int
    replicas: int
    partitions: Tuple[PartitionSettings, ...]
    sync: SyncSettings
    auth: AuthSettings = AuthSettings()
    metrics: MetricsSettings = MetricsSettings()
    #: Change feed long polls one worker process holds at most (each holds
    #: a request thread); beyond it a long poll is 503 with Retry-After.
    max_watchers: int = 8


def _defaults(cls) -> dict:
    return {f.name: f.default for f in dataclasses.fields(cls)
            if f.default is not dataclasses.MISSING and f.name != "path"}


#: Defaults per section, the unit in each option's name or comment; those of
#: the partition and sync sections are the dataclasses' own (one definition).
DEFAULTS = {
    "server": {"max_value_bytes": 1048576, "max_batch_bytes": 16777216,   # 1 MiB, 16 MiB
               "max_watchers": 8},                                        # per worker process
    "cluster": {"replicas": 1},
    "partition": _defaults(PartitionSettings),
    "sync": _defaults(SyncSettings),
    "auth": _defaults(AuthSettings),
    "metrics": _defaults(MetricsSettings),
}


#: The options each partition engine reads; any other is a typo (start-up fails).
ENGINE_OPTIONS = {
    "sqlite": ("engine", "path", "connect_timeout_seconds", "read_timeout_seconds",
               "write_timeout_seconds", "retry_interval_seconds"),
    "mysql": ("engine", "host", "port", "user", "password", "database", "pool_size",
              "connect_timeout_seconds", "read_timeout_seconds", "write_timeout_seconds",
              "retry_interval_seconds"),
}


def _check_names(parser) -> None:
    """Refuse a section or option this file format does not define, so that
    a typo (``max_value_byte``) stops start-up instead of passing silently.

    :raises ConfigurationError: naming the first unknown section or option.
    """
    for section in parser.sections():
        if section.startswith("partition-"):
            engine = parser.get(section, "engine", fallback="").strip()
            known = ENGINE_OPTIONS.get(engine, ENGINE_OPTIONS["mysql"])
        elif section in DEFAULTS:
            known = tuple(DEFAULTS[section]) + (("partitions",) if section == "cluster" else ())
        else:
            raise ConfigurationError(section, None, "unknown section (known: %s, partition-N)"
                                     % ", ".join(DEFAULTS))
        for option in parser.options(section):
            if option not in known:
                raise ConfigurationError(section, option, "unknown option (known: %s)"
                                         % ", ".join(known))


def default_path() -> str:
    """``$KV_CONFIG`` if set, else configuration.cfg at the top of the repository."""
    return os.environ.get("KV_CONFIG") or os.path.join(
        os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configuration.cfg")


def _integer(parser, section, option, default, low, high):
    raw = parser.get(section, option, fallback=None)
    if raw is None:
        if default is None:
            raise ConfigurationError(section, option, "is missing")
        return default
    try:
        value = int(raw.strip())
    except ValueError:
        raise ConfigurationError(section, option, "%r is not a whole number" % raw) from None
    if not low <= value <= high:
        raise ConfigurationError(section, option, "%d is not from %d to %d" % (value, low, high))
    return value


def load_config(path: Optional[str] = None) -> Settings:
    """Read and validate a configuration file.

    :param str path: the file; default :func:`default_path`.
    :returns: :class:`Settings`.
    :raises ConfigurationError: naming the first bad section/option (missing
        section, partition count mismatch, replicas > partitions, unknown engine,
        unknown section or option, bad number, unreadable file).
    """
    path = path or default_path()
    parser = configparser.ConfigParser(interpolation=None)
    try:
        with open(path, encoding="utf-8") as f:
            parser.read_file(f)
    except OSError as e:
        raise ConfigurationError("", None, "cannot read %s: %s" % (path, e.strerror)) from None
    except (configparser.Error, UnicodeDecodeError) as e:
        raise ConfigurationError("", None, "cannot parse %s: %s"
                                 % (path, str(e).splitlines()[0])) from None
    for section in ("server", "cluster"):
        if not parser.has_section(section):
            raise ConfigurationError(section, None, "section is missing")
    _check_names(parser)
    server = DEFAULTS["server"]
    max_value = _integer(parser, "server", "max_value_bytes", server["max_value_bytes"],
                         1, MAX_VALUE_BYTES_LIMIT)
    max_batch = _integer(parser, "server", "max_batch_bytes", server["max_batch_bytes"],
                         1024, 1 << 30)
    count = _integer(parser, "cluster", "partitions", None, 1, 1000)
    replicas = _integer(parser, "cluster", "replicas", DEFAULTS["cluster"]["replicas"], 1, 1000)
    if replicas > count:
        raise ConfigurationError("cluster", "replicas", "%d is more than partitions = %d"
                                 % (replicas, count))
    found = sorted(s for s in parser.sections() if s.startswith("partition-"))
    expected = ["partition-%d" % i for i in range(1, count + 1)]
    for name in expected:
        if not parser.has_section(name):
            raise ConfigurationError(name, None, "section is missing ([cluster] partitions = %d)"
                                     % count)
    extra = sorted(set(found) - set(expected))
    if extra:
        raise ConfigurationError(extra[0], None, "section is beyond [cluster] partitions = %d"
                                 % count)
    base = os.path.dirname(os.path.abspath(path))
    partitions = tuple(_partition(parser, name, base) for name in expected)
    sync = SyncSettings(
        tombstone_days=_integer(parser, "sync", "tombstone_days",
                                DEFAULTS["sync"]["tombstone_days"], 1, 36500),
        batch_size=_integer(parser, "sync", "batch_size", DEFAULTS["sync"]["batch_size"],
                            1, 100000))
    a = DEFAULTS["auth"]
    try:
        enabled = parser.getboolean("auth", "enabled", fallback=a["enabled"])
    except ValueError:
        raise ConfigurationError("auth", "enabled", "must be true or false") from None
    auth = AuthSettings(
        enabled=enabled,
        session_seconds=_integer(parser, "auth", "session_seconds", a["session_seconds"],
                                 60, 365 * 86400),
        refresh_seconds=_integer(parser, "auth", "refresh_seconds", a["refresh_seconds"], 1, 30))
    return Settings(os.path.abspath(path), max_value, max_batch, replicas, partitions, sync, auth,
                    _metrics(parser, os.path.dirname(os.path.abspath(path))),
                    _integer(parser, "server", "max_watchers", server["max_watchers"], 1, 10000))


def _metrics(parser, base: str) -> MetricsSettings:
    """The ``[metrics]`` section; paths made absolute against ``base`` (the
    configuration file's directory); ``access_log`` keeps ``-`` and ``off``."""
    d = DEFAULTS["metrics"]
    flags = {}
    for option in ("enabled", "public"):
        try:
            flags[option] = parser.getboolean("metrics", option, fallback=d[option])
        except ValueError:
            raise ConfigurationError("metrics", option, "must be true or false") from None
    paths = {}
    for option in ("directory", "access_log"):
        value = parser.get("metrics", option, fallback=d[option]).strip()
        if not value:
            raise ConfigurationError("metrics", option, "is empty")
        paths[option] = value if value in ("-", "off") else os.path.join(base, value)
    if paths["directory"] in ("-", "off"):
        raise ConfigurationError("metrics", "directory", "must be a directory path")
    return MetricsSettings(**flags, **paths)


def _partition(parser, name, base) -> PartitionSettings:
    engine = parser.get(name, "engine", fallback=None)
    if engine is None:
        raise ConfigurationError(name, "engine", "is missing (mysql or sqlite)")
    engine = engine.strip()
    if engine not in ENGINES:
        raise ConfigurationError(name, "engine", "unknown engine %r (mysql or sqlite)" % engine)
    d = DEFAULTS["partition"]
    timeouts = {option: _integer(parser, name, option, d[option], 1, 3600)
                for option in ("connect_timeout_seconds", "read_timeout_seconds",
                               "write_timeout_seconds", "retry_interval_seconds")}
    if engine == "sqlite":
        path = parser.get(name, "path", fallback="").strip()
        if not path:
            raise ConfigurationError(name, "path", "is missing (the SQLite file)")
        return PartitionSettings(name, engine, path=os.path.join(base, path), **timeouts)
    return PartitionSettings(
        name, engine,
        host=parser.get(name, "host", fallback=d["host"]).strip(),
        port=_integer(parser, name, "port", d["port"], 1, 65535),
        user=parser.get(name, "user", fallback=d["user"]).strip(),
        password=parser.get(name, "password", fallback=d["password"]),
        database=parser.get(name, "database", fallback=d["database"]).strip(),
        pool_size=_integer(parser, name, "pool_size", d["pool_size"], 1, 1000),
        **timeouts)
