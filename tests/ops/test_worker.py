"""The gthread worker that takes a new connection only while it has a free thread
(``service.web.worker``), in a real gunicorn with the production settings."""

from __future__ import annotations

import http.client
import os
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from tests.conftest import ROOT, free_port

pytestmark = pytest.mark.e2e


@pytest.fixture
def two_by_two(tmp_path: Path):
    """gunicorn with the production settings, 2 workers × 2 threads, serving ``pid_app``."""
    port = free_port()
    log = tmp_path / "gunicorn.log"
    process = subprocess.Popen(
        [
            *(sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}"),
            *("--config", "python:service.web.gunicorn_conf", "tests.ops.pid_app:app"),
        ],
        cwd=ROOT,
        env={**os.environ, "KCDS_WORKERS": "2", "KCDS_THREADS": "2", "KCDS_KEEPALIVE": "30"},
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            requests.get(f"http://127.0.0.1:{port}/", timeout=1)
            break
        except requests.ConnectionError:
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
    yield port
    process.terminate()
    process.wait(timeout=30)


def _served_by(port: int, connections: int, sleep: float) -> list[tuple[str, float]]:
    """Opens ``connections`` keep-alive connections at once, each sends one request; returns
    (worker pid, seconds) per connection, then a second request on each (must be the same
    worker: keep-alive is kept)."""
    conns = [http.client.HTTPConnection("127.0.0.1", port, timeout=10) for _ in range(connections)]

    def ask(conn: http.client.HTTPConnection) -> tuple[str, float]:
        started = time.monotonic()
        conn.request("GET", f"/?sleep={sleep}")
        response = conn.getresponse()
        assert response.status == 200
        return response.read().decode(), time.monotonic() - started

    with ThreadPoolExecutor(connections) as pool:
        first = list(pool.map(ask, conns))
        second = list(pool.map(ask, conns))
    assert [pid for pid, _ in first] == [pid for pid, _ in second]
    for conn in conns:
        conn.close()
    return first


def test_connections_opened_together_are_shared_by_the_workers(two_by_two):
    """Four connections opened at once on two workers of two threads: two each (gthread as
    shipped can give all four to one worker, which then queues half of them while the other
    worker idles)."""
    served = _served_by(two_by_two, 4, sleep=0.3)
    assert sorted(Counter(pid for pid, _ in served).values()) == [2, 2]
    assert max(seconds for _, seconds in served) < 0.55  # none queued behind another


def test_a_connection_beyond_every_free_thread_is_still_taken(two_by_two):
    """Six connections on four threads: the two that find every thread busy wait for one,
    not for a moment when a worker is idle (the overdue fallback)."""
    served = _served_by(two_by_two, 6, sleep=0.3)
    assert len({pid for pid, _ in served}) == 2
    assert max(seconds for _, seconds in served) < 1.2
