"""Shared test fixtures: the Flask app, a real gunicorn process, fixture loading."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from service.app import create_app
from service.config import Settings

ROOT = Path(__file__).resolve().parent.parent
CONFORMANCE = Path(__file__).resolve().parent / "conformance"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def app():
    return create_app(Settings(auth="off", fhir_timeout=2.0, max_body_bytes=2 * 1024 * 1024))


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


def start_gunicorn(tmp: Path, env: dict[str, str] | None = None, workers: int = 2) -> Server:
    port = free_port()
    log = tmp / f"gunicorn-{port}.log"
    full_env = {
        **os.environ,
        "KCDS_AUTH": "off",
        "KCDS_DATABASE_URL": f"sqlite:///{tmp}/kcds-{port}.db",
        "KCDS_MAX_BODY_BYTES": str(2 * 1024 * 1024),
        **(env or {}),
    }
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
            "python:service.gunicorn_conf",
            "service.wsgi:app",
        ],
        cwd=ROOT,
        env=full_env,
        stdout=log.open("wb"),
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
