"""A table in a PostgreSQL or SQLite database that every gunicorn worker and instance shares.

The JWT replay cache (:class:`cds_hooks.replay.SqlReplayCache`) and the SMART session store
(``service.web.smart.SqlSessionStore``) both keep short-lived rows this way; :class:`SharedTable`
is what they have in common: an engine with short timeouts (:func:`sql_engine`), statements
run in their own transaction, connections never reused across gunicorn's fork, the table
created when missing (at start, or at first use after an outage at start), and a database
that does not answer turned into the caller's own "unavailable" error, logged without detail.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from collections.abc import Callable, Sequence
from typing import Any

#: seconds a shared-store call may take (or wait for a connection) before it fails
TIMEOUT = 2.0


def sql_engine(url: str) -> Any:
    """A SQLAlchemy engine for a PostgreSQL or SQLite URL, with short timeouts (:data:`TIMEOUT`).

    SQLite runs in WAL mode (the workers of one host read while one writes); PostgreSQL uses
    psycopg unless the URL names a driver, a small pool, a statement timeout and TCP
    keepalives, so that a silent peer fails a call within seconds instead of holding it."""
    from sqlalchemy import create_engine, event
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        engine = create_engine(parsed, connect_args={"timeout": TIMEOUT})

        def setup(dbapi_conn: Any, _record: Any) -> None:
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA journal_mode = WAL")
            cursor.execute("PRAGMA synchronous = NORMAL")  # a crash keeps it; power loss may not
            cursor.close()

        event.listen(engine, "connect", setup)
        return engine
    if "+" not in parsed.drivername:
        parsed = parsed.set(drivername="postgresql+psycopg")
    return create_engine(
        parsed,
        pool_pre_ping=True,
        pool_size=2,
        max_overflow=8,
        pool_timeout=TIMEOUT,  # a call never waits longer for a connection than for an answer
        connect_args={
            "connect_timeout": math.ceil(TIMEOUT),
            "application_name": "ketamine-cds replay",
            "options": f"-c statement_timeout={int(TIMEOUT * 1000)}",
            # a peer gone silent (no RST) fails within seconds instead of never
            "keepalives": 1,
            "keepalives_idle": 2,
            "keepalives_interval": 1,
            "keepalives_count": 2,
            "tcp_user_timeout": int(TIMEOUT * 1000),
        },
    )


class SharedTable:
    """Statements on a table of the database at ``url``, from any process.

    ``schema``: the ``CREATE … IF NOT EXISTS`` statements that make the table (and its
    indexes). ``name``: what the table is for, in the log line when the database fails
    (``"<name> unavailable"``, with the error's type only: statements carry keys, never
    logged). ``unavailable``: makes the exception :meth:`run` raises then (a 503 of the
    caller's kind).

    The table is created here if the database answers; if not, at the first :meth:`ensure`.
    The engine's connections are then dropped, so none crosses gunicorn's fork; a forked
    worker opens its own.
    """

    def __init__(
        self,
        url: str,
        schema: Sequence[str],
        *,
        name: str,
        log: logging.Logger,
        unavailable: Callable[[], Exception],
    ):
        self._engine = sql_engine(url)
        self._schema = tuple(schema)
        self._name = name
        self._log = log
        self._unavailable = unavailable
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._created = False
        from sqlalchemy.exc import SQLAlchemyError

        try:
            for statement in self._schema:
                self._execute(statement)
            self._created = True
        except SQLAlchemyError as error:  # an outage at start: created at first use
            self._failed(error)
        self._engine.dispose()

    def ensure(self) -> None:
        """Create the table unless this object already has (raises as :meth:`run`)."""
        if not self._created:
            for statement in self._schema:
                self.run(statement)
            self._created = True

    def run(self, statement: str, params: dict[str, Any] | None = None) -> list[Any]:
        """Run one statement in its own transaction; its rows (none for a statement that
        returns none). Raises ``unavailable()`` when the database fails."""
        from sqlalchemy.exc import SQLAlchemyError

        try:
            return self._execute(statement, params)
        except SQLAlchemyError as error:
            self._failed(error)
            raise self._unavailable() from None

    def _execute(self, statement: str, params: dict[str, Any] | None = None) -> list[Any]:
        from sqlalchemy import text

        if self._pid != os.getpid():  # a forked worker: never use the parent's connections
            with self._lock:
                if self._pid != os.getpid():
                    self._engine.dispose(close=False)
                    self._pid = os.getpid()
        with self._engine.begin() as conn:
            result = conn.execute(text(statement), params or {})
            return list(result) if result.returns_rows else []

    def _failed(self, error: Exception) -> None:
        self._log.error(f"{self._name} unavailable", extra={"error_type": type(error).__name__})

    def dispose(self) -> None:
        """Close the engine's connections."""
        self._engine.dispose()
