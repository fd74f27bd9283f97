"""Starting on a journal or a SQLite registry that cannot be written fails at once, naming
the cause, with exit status 3; the replay cache's outage fallback; the count of evaluations
nothing could record."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid

import orjson
import pytest

from cds_hooks.replay import OutageFallback, ReplayCacheUnavailable
from service.config import Settings
from service.registry.journal import JournalError
from service.tools.fixtures import load
from service.web.app import create_app
from tests.conftest import ROOT

GUNICORN = [sys.executable, "-m", "gunicorn", "--bind", "127.0.0.1:0"]


def start(env: dict[str, str]) -> tuple[int, str, float]:
    """(exit status, output, seconds) of a gunicorn start that is expected to fail."""
    started = time.monotonic()
    done = subprocess.run(
        [*GUNICORN, "--config", "python:service.web.gunicorn_conf", "service.web.wsgi:app"],
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "KCDS_AUTH": "off", **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    return done.returncode, done.stdout + done.stderr, round(time.monotonic() - started, 1)


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("setting", "value", "cause"),
    [
        ("KCDS_DATABASE_URL", "sqlite:////proc/kcds/registry.db", "KCDS_DATABASE_URL"),
        ("KCDS_JOURNAL", "/proc/kcds/journal.db", "KCDS_JOURNAL"),
        ("KCDS_JOURNAL", "/proc/version", "KCDS_JOURNAL"),  # a file that is not a database
    ],
)
def test_an_unwritable_journal_or_registry_stops_the_start_with_exit_3(
    tmp_path, setting, value, cause
):
    env = {"KCDS_DATABASE_URL": f"sqlite:///{tmp_path}/r.db", setting: value}
    status, output, seconds = start(env)
    print(f"\n{setting}={value}: exit {status} after {seconds} s")
    assert status == 3, output[-2000:]
    [line] = [orjson.loads(x) for x in output.splitlines() if '"CRITICAL"' in x]
    assert line["message"] == "configuration unusable" and cause in line["reason"]
    assert "Traceback" not in output


class Store:
    """A shared store that answers, fails or hangs, as told."""

    shared = True

    def __init__(self) -> None:
        self.state = "up"
        self.seen: set[str] = set()

    def first_use(self, issuer: str, jti: str, expires_at: float) -> bool:
        if self.state == "down":
            raise ReplayCacheUnavailable()
        if self.state == "hung":
            time.sleep(2)
        first = jti not in self.seen
        self.seen.add(jti)
        return first

    def ping(self) -> None:
        if self.state != "up":
            raise ReplayCacheUnavailable()

    def close(self) -> None:
        pass


@pytest.mark.parametrize("outage", ["down", "hung"])
def test_the_replay_cache_falls_back_to_this_process_during_an_outage(outage, monkeypatch):
    monkeypatch.setattr("cds_hooks.replay.RETRY_AFTER", 0.0)
    store = Store()
    cache = OutageFallback(store)
    fallbacks = []
    cache.on_fallback = lambda: fallbacks.append(1)
    expires = time.time() + 60
    assert cache.first_use("iss", "before", expires) is True
    store.state = outage
    assert cache.first_use("iss", "during", expires) is True  # checked here, let through
    assert cache.first_use("iss", "during", expires) is False  # a replay to this process
    assert cache.first_use("iss", "before", expires) is False  # seen before the outage
    assert len(fallbacks) == 3
    store.state = "up"
    assert cache.first_use("iss", "after", expires) is True
    assert cache.first_use("iss", "after", expires) is False
    assert len(fallbacks) == 3


def test_an_evaluation_nothing_could_record_is_counted(tmp_path, monkeypatch):
    """Journal refused and database down past the stop: counted, and one log line says so."""
    monkeypatch.setattr("service.registry.SHUTDOWN_WITHIN", 0.2)
    monkeypatch.setattr("service.registry.BATCH_WITHIN", 0.1)
    app = create_app(
        Settings(
            auth="off",
            database_url=f"sqlite:///{tmp_path}/r.db",
            pseudonym_key="k" * 40,
            journal=str(tmp_path / "journal.db"),
        )
    )
    registry = app.extensions["ketamine-cds.registry"]
    counted = []
    registry.observer.evaluations_unrecorded = counted.append

    def refuse(*args):
        raise JournalError(OSError(28, "No space left on device"))

    def down(work, within):
        from service.registry.store import Unavailable

        raise Unavailable("down")

    monkeypatch.setattr(registry.journal, "append_evaluation", refuse)
    monkeypatch.setattr(registry.store, "write", down)
    request, _ = load("clean-iv-ketamine-sign")
    client = app.test_client()
    for _ in range(3):
        r = client.post(
            "/cds-services/ketamine-order-sign", json={**request, "hookInstance": str(uuid.uuid4())}
        )
        assert r.status_code == 200 and r.get_json()["cards"]  # the cards keep flowing
    registry.close()
    assert sum(counted) == 3
