"""Shared test fixtures: the Flask app, a real gunicorn process, fixture loading."""

from __future__ import annotations

import os
import secrets
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest
import requests
from psycopg import sql
from sqlalchemy.engine import make_url

from service.config import Settings
from service.web.app import create_app

ROOT = Path(__file__).resolve().parent.parent
CONFORMANCE = Path(__file__).resolve().parent / "conformance"
#: the PostgreSQL the tests create their throwaway databases in (trust auth)
POSTGRES = os.environ.get("KCDS_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")
#: the Redis the shared replay cache tests use (a database of its own)
REDIS = "redis://127.0.0.1:6379/15"


def journal_for(database_url: str, tmp: Path) -> str | None:
    """``KCDS_JOURNAL`` for a test's registry: a file in ``tmp`` for PostgreSQL (unset, the
    service puts that journal in its working directory: the checkout); None for SQLite, whose
    journal goes beside the database, in the test's own folder already."""
    if make_url(database_url).get_backend_name() == "sqlite":
        return None
    return str(tmp / "journal.db")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def app(tmp_path_factory):
    database = tmp_path_factory.mktemp("app") / "kcds.db"
    app = create_app(
        Settings(
            auth="off",
            fhir_timeout=2.0,
            max_body_bytes=2 * 1024 * 1024,
            database_url=f"sqlite:///{database}",
        )
    )
    yield app
    app.extensions["ketamine-cds.registry"].close()


@pytest.fixture
def client(app):
    return app.test_client()


class Server:
    def __init__(self, url: str, process: subprocess.Popen, log: Path):
        self.url = url
        self.process = process
        self.log = log

    def logs(self) -> str:
        return self.log.read_text("utf-8", errors="replace")


def start_gunicorn(
    tmp: Path, env: dict[str, str] | None = None, workers: int = 2, port: int | None = None
) -> Server:
    """A gunicorn running the service on loopback (``port``, or a free one), once it answers
    /health/live. Its output goes to ``gunicorn-<port>.log`` in ``tmp`` (appended: a restart
    on the same port keeps the earlier run's lines)."""
    port = port or free_port()
    log = tmp / f"gunicorn-{port}.log"
    full_env = {
        **os.environ,
        "KCDS_AUTH": "off",
        "KCDS_DATABASE_URL": f"sqlite:///{tmp}/kcds-{port}.db",
        "KCDS_MAX_BODY_BYTES": str(2 * 1024 * 1024),
        **(env or {}),
    }
    journal = journal_for(full_env["KCDS_DATABASE_URL"], tmp)
    if journal and "KCDS_JOURNAL" not in full_env:
        full_env["KCDS_JOURNAL"] = journal
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "--bind",
            f"127.0.0.1:{port}",
            "--workers",
            str(workers),
            "--config",
            "python:service.web.gunicorn_conf",
            "service.web.wsgi:app",
        ],
        cwd=ROOT,
        env=full_env,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"gunicorn exited: {log.read_text()[-2000:]}")
        try:
            if requests.get(url + "/health/live", timeout=1).status_code == 200:
                return Server(url, process, log)
        except requests.ConnectionError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"gunicorn did not start: {log.read_text()[-2000:]}")


def stop(server: Server) -> None:
    server.process.send_signal(signal.SIGTERM)
    try:
        server.process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        server.process.kill()


@pytest.fixture(scope="session")
def gunicorn(tmp_path_factory) -> Iterator[Server]:
    server = start_gunicorn(tmp_path_factory.mktemp("gunicorn"))
    yield server
    stop(server)


@pytest.fixture(scope="session")
def postgres_server() -> str:
    """The PostgreSQL of KCDS_TEST_POSTGRES, or a skip that says it did not answer."""
    try:
        psycopg.connect(POSTGRES, connect_timeout=3).close()
    except psycopg.OperationalError as exc:
        pytest.skip(f"PostgreSQL did not answer at {POSTGRES} ({str(exc).strip()})")
    return POSTGRES


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The Redis on 127.0.0.1:6379 (database 15), or a skip that says it did not answer."""
    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=2) as s:
            s.sendall(b"PING\r\n")
            if not s.recv(16).startswith(b"+PONG"):
                raise OSError("not Redis")
    except OSError as exc:
        pytest.skip(f"Redis did not answer at 127.0.0.1:6379 ({exc})")
    return REDIS


@pytest.fixture
def postgres_url(postgres_server) -> Iterator[str]:
    """A throwaway database, created for one test and dropped after it."""
    name = f"kcds_test_{secrets.token_hex(6)}"
    with psycopg.connect(postgres_server, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    yield make_url(postgres_server).set(database=name).render_as_string(hide_password=False)
    with psycopg.connect(postgres_server, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request, tmp_path) -> str:
    """Each registry test runs on a fresh SQLite file and on a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/registry.db"
    return request.getfixturevalue("postgres_url")


@contextmanager
def writes_held(database_url: str) -> Iterator:
    """Hold the locks the registry's writes need, as a long purge or a backup might; yields
    the connection holding them (it can still read)."""
    if database_url.startswith("sqlite"):
        path = make_url(database_url).database
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        conn.execute("BEGIN IMMEDIATE")
    else:
        conn = psycopg.connect(database_url)
        conn.execute("LOCK TABLE kcds_evaluation, kcds_feedback IN EXCLUSIVE MODE")
    try:
        yield conn
    finally:
        conn.rollback()
        conn.close()
