"""One store, two databases: SQLite by default, PostgreSQL when the URL says so.

Every query is SQLAlchemy Core, so the registry has one code path; what differs between the
databases is confined here: how a connection is set up, how a write transaction takes its
lock, and the dialect's ``INSERT … ON CONFLICT DO NOTHING``.

Concurrency. Several gunicorn workers, and several instances, write to one database:
- SQLite runs in WAL mode (readers never block the writer) and every write transaction
  starts with ``BEGIN IMMEDIATE``: it takes the write lock first and so waits for it (the
  busy timeout) instead of failing on a read-to-write upgrade, the usual source of "database
  is locked" errors that a busy timeout does not cover.
- PostgreSQL needs nothing special: inserts are keyed and ``ON CONFLICT DO NOTHING``; a
  ``lock_timeout`` makes a write stuck behind a lock fail like a busy SQLite does.
- Any transient failure (a lock held past the timeout, a dropped connection) is retried
  with backoff. Every write is idempotent, so a commit whose acknowledgement was lost can be
  retried without doubling a row. A SQLite file that cannot be opened or written (a
  read-only or missing directory, a file that is not a database) is not retried: it fails at
  once with SQLite's reason.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from sqlalchemy import Connection, Engine, Table, create_engine, event, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, InterfaceError, OperationalError

from service.config import ConfigError

from . import schema

log = logging.getLogger("service.registry")

T = TypeVar("T")

#: how long a write waits for a lock (SQLite's busy timeout, PostgreSQL's lock_timeout)
#: before the attempt fails and is retried
LOCK_TIMEOUT_S = 5.0
#: the execution option that marks a connection's transaction as a write (BEGIN IMMEDIATE)
_WRITE = "kcds_write"
#: PostgreSQL advisory lock held while migrating, so instances starting together take turns
_MIGRATION_LOCK = 7312504441
TRANSIENT = (OperationalError, InterfaceError)
#: libpq settings that end a connection whose peer went silent (a network partition, a
#: failover that leaves no RST): keepalives after 5 s idle, dead after 2 unanswered 2 s
#: apart; data unacknowledged for 10 s. Without them a query waits on the socket forever.
DEAD_PEER = {
    "keepalives": 1,
    "keepalives_idle": 5,
    "keepalives_interval": 2,
    "keepalives_count": 2,
    "tcp_user_timeout": 10_000,
}


class Unavailable(RuntimeError):
    """The database did not take a write within the time allowed; ``permanent`` names what
    retrying cannot cure (SQLite's reason), else None."""

    def __init__(self, message: str, permanent: str | None = None):
        super().__init__(message)
        self.permanent = permanent


#: SQLite failures that waiting may cure: a lock held by another writer, a full disk
_SQLITE_TRANSIENT = frozenset({"SQLITE_BUSY", "SQLITE_LOCKED", "SQLITE_FULL"})


def _permanent(exc: Exception) -> str | None:
    """SQLite's reason when ``exc`` will not pass by retrying, else None."""
    orig = getattr(exc, "orig", None)
    name = getattr(orig, "sqlite_errorname", None)
    if name is None or name in _SQLITE_TRANSIENT:
        return None
    return f"{name}: {orig}"


class Store:
    """An engine plus the few things that depend on which database it is."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self.dialect = engine.dialect.name

    def insert_ignore(self, table: Table):
        """``INSERT … ON CONFLICT DO NOTHING``: a repeated row is skipped, not an error."""
        dialect = postgresql if self.dialect == "postgresql" else sqlite
        return dialect.insert(table).on_conflict_do_nothing()

    @contextmanager
    def reading(self) -> Iterator[Connection]:
        """A read-only transaction on one consistent snapshot (SQLite's WAL snapshot;
        ``REPEATABLE READ`` on PostgreSQL), so an export's several queries agree."""
        with self.engine.connect() as conn:
            if self.dialect == "postgresql":
                conn.execution_options(isolation_level="REPEATABLE READ")
            with conn.begin():
                yield conn

    def write(self, work: Callable[[Connection], T], within: float) -> T:
        """Run ``work`` in a write transaction; retry transient failures with backoff for up
        to ``within`` seconds, then raise :class:`Unavailable`. ``work`` must be idempotent."""
        give_up = time.monotonic() + within
        delay = 0.02
        while True:
            try:
                with self.engine.connect() as conn:
                    conn.execution_options(**{_WRITE: True})
                    with conn.begin():
                        return work(conn)
            except TRANSIENT as exc:
                permanent = _permanent(exc)
                if permanent or time.monotonic() + delay > give_up:
                    message = "the registry database did not take the write"
                    raise Unavailable(message, permanent) from exc
                log.warning("registry write retried", extra={"error_type": type(exc.orig).__name__})
                time.sleep(delay)
                delay = min(delay * 2, 1.0)

    def migrate(self, within: float = 60.0) -> int:
        """Bring the schema up to date (see :func:`schema.migrate`); returns its version."""

        def work(conn: Connection) -> int:
            if self.dialect == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK})
            return schema.migrate(conn)

        return self.write(work, within=within)


def open_store(url: str) -> Store:
    """The store at ``url`` (``KCDS_DATABASE_URL``), created or migrated as needed.

    It holds no connection when it returns: gunicorn forks its workers after this (the app is
    preloaded), and a connection must never be shared by two processes.
    """
    store = store_at(url)
    store.migrate()
    store.engine.dispose()
    return store


def store_at(url: str) -> Store:
    """The store at ``url``, not yet connected nor migrated; a ConfigError for a URL that
    cannot be one."""
    return Store(_engine(url))


def _engine(url: str) -> Engine:
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ConfigError(f"KCDS_DATABASE_URL is not a database URL: {url!r}") from None
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        if not parsed.database or parsed.database == ":memory:":
            raise ConfigError("KCDS_DATABASE_URL must name a SQLite file (sqlite:///path.db)")
        try:
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(
                f"KCDS_DATABASE_URL: the SQLite file's directory cannot be created ({exc.strerror})"
            ) from None
        engine = create_engine(parsed, connect_args={"timeout": LOCK_TIMEOUT_S})
        event.listen(engine, "connect", _sqlite_connect)
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    if backend in ("postgresql", "postgres"):
        if "+" not in parsed.drivername:
            parsed = parsed.set(drivername="postgresql+psycopg")
        return create_engine(
            parsed,
            pool_pre_ping=True,  # survive a database restart or failover
            pool_size=2,  # the writer thread and a request thread per worker
            max_overflow=8,  # more request threads (KCDS_THREADS)
            connect_args={
                "connect_timeout": 5,
                "application_name": "ketamine-cds",
                "options": f"-c lock_timeout={int(LOCK_TIMEOUT_S * 1000)}",
                **DEAD_PEER,
            },
        )
    raise ConfigError(
        f"KCDS_DATABASE_URL must be sqlite:///… or postgresql://…, not {parsed.drivername}://…"
    )


def _sqlite_connect(dbapi_conn, _record) -> None:
    # The sqlite3 module's own transaction handling would open a deferred transaction behind
    # our back; take it over so _sqlite_begin decides how each transaction starts.
    dbapi_conn.isolation_level = None
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode = WAL")
    cursor.execute("PRAGMA synchronous = FULL")  # a commit survives power loss, not only a crash
    cursor.execute("PRAGMA foreign_keys = ON")
    cursor.close()


def _sqlite_begin(conn: Connection) -> None:
    conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get(_WRITE) else "BEGIN")
