"""The fault suite's rig: the service under real gunicorn with caller JWTs on (as in
production), its PostgreSQL behind a :class:`~tests.faults.proxy.FaultProxy`, closed-loop
hook and feedback clients that keep what was acknowledged, a readiness watcher, and the
figures each case reports (calls, answered, stored, lost, recovery time)."""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import psycopg
import requests

from service.tools.fixtures import load
from tests.auth_helpers import ISSUER, SigningKey, es384
from tests.conftest import Server, start_gunicorn
from tests.faults.proxy import FaultProxy

SIGN = "/cds-services/ketamine-order-sign"
REQUEST, _ = load("clean-iv-ketamine-sign")
PSEUDONYM_KEY = "faults-test-pseudonym-key-0123456789abcdef"
#: seconds the rig waits for the registry to hold everything acknowledged, at most
RECOVERY_WITHIN = 45.0
#: where every case appends its figures (one JSON line each); printed as well
FIGURES = Path(os.environ.get("KCDS_FAULT_FIGURES", "/tmp/kcds-fault-figures.jsonl"))


@dataclass
class Rig:
    """One service instance and what it needs."""

    tmp: Path
    database: str  # the test database, reached directly (the checks)
    proxy: FaultProxy  # the service reaches the database through it
    key: SigningKey = field(default_factory=es384)
    server: Server | None = None
    env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        jwks = self.tmp / "jwks.json"
        jwks.write_bytes(orjson.dumps({"keys": [self.key.jwk()]}))
        through_proxy = self.database.replace("127.0.0.1:5432", f"127.0.0.1:{self.proxy.port}")
        assert through_proxy != self.database
        self.env = {
            "KCDS_AUTH": "jwt",
            "KCDS_TRUSTED_ISSUERS": json.dumps({ISSUER: {"jwks_file": str(jwks)}}),
            "KCDS_DATABASE_URL": through_proxy,  # the registry and the replay cache
            "KCDS_PSEUDONYM_KEY": PSEUDONYM_KEY,
            "KCDS_JOURNAL": str(self.tmp / "journal" / "journal.db"),
            "KCDS_LOG_LEVEL": "WARNING",
            **self.env,
        }

    def start(self, port: int | None = None, **env: str) -> Server:
        self.server = start_gunicorn(self.tmp, env={**self.env, **env}, workers=2, port=port)
        return self.server

    def token(self, path: str) -> dict[str, str]:
        assert self.server is not None
        return {"Authorization": "Bearer " + self.key.token(self.server.url + path)}

    def stored(self) -> tuple[set[str], set[tuple[str, str]]]:
        """(hookInstances, (card, outcome) of feedback) in the registry database."""
        with psycopg.connect(self.database) as conn:
            evaluations = {r[0] for r in conn.execute("SELECT hook_instance FROM kcds_evaluation")}
            feedback = set(conn.execute("SELECT card_uuid, outcome FROM kcds_feedback"))
        return evaluations, feedback


class Load:
    """Closed-loop clients: ``hooks`` threads sending signed order-sign calls, ``feedback``
    threads answering the cards they got. Keeps what each acknowledgement covered."""

    def __init__(self, rig: Rig, hooks: int = 6, feedback: int = 2, body: dict | None = None):
        self.rig = rig
        self.body = body or REQUEST
        self.calls = 0
        self.answered: set[str] = set()  # hookInstances answered 200 with cards
        self.no_cards = 0  # answered 200 without a card: a failure of decision support
        self.refused: dict[str, int] = {}  # status (or exception type) → count
        self.acknowledged: set[tuple[str, str]] = set()  # feedback (card, outcome) answered 200
        self.feedback_calls = 0
        self.feedback_refused: dict[str, int] = {}
        self._cards: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._hooks) for _ in range(hooks)]
        self._threads += [threading.Thread(target=self._feedback) for _ in range(feedback)]
        for thread in self._threads:
            thread.start()

    def _count(self, into: dict[str, int], what: str) -> None:
        with self._lock:
            into[what] = into.get(what, 0) + 1

    def _hooks(self) -> None:
        session = requests.Session()
        while not self._stop.is_set():
            hook_instance = str(uuid.uuid4())
            with self._lock:
                self.calls += 1
            try:
                r = session.post(
                    self.rig.server.url + SIGN,
                    data=orjson.dumps({**self.body, "hookInstance": hook_instance}),
                    headers={"Content-Type": "application/json", **self.rig.token(SIGN)},
                    timeout=30,
                )
            except requests.RequestException as exc:
                self._count(self.refused, type(exc).__name__)
                session = requests.Session()
                time.sleep(0.05)
                continue
            if r.status_code != 200:
                self._count(self.refused, str(r.status_code))
                time.sleep(0.05)
                continue
            cards = r.json()["cards"]
            with self._lock:
                if cards:
                    self.answered.add(hook_instance)
                    self._cards.append(cards[0]["uuid"])
                else:
                    self.no_cards += 1

    def _feedback(self) -> None:
        session = requests.Session()
        path = SIGN + "/feedback"
        while not self._stop.is_set():
            with self._lock:
                card = self._cards.pop() if self._cards else None
            if card is None:
                time.sleep(0.02)
                continue
            item = {"card": card, "outcome": "overridden", "outcomeTimestamp": _now()}
            with self._lock:
                self.feedback_calls += 1
            try:
                r = session.post(
                    self.rig.server.url + path,
                    json={"feedback": [item]},
                    headers=self.rig.token(path),
                    timeout=30,
                )
            except requests.RequestException as exc:
                self._count(self.feedback_refused, type(exc).__name__)
                session = requests.Session()
                continue
            if r.status_code == 200:
                with self._lock:
                    self.acknowledged.add((card, "overridden"))
            else:
                self._count(self.feedback_refused, str(r.status_code))

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class ReadinessWatch:
    """Polls ``/health/ready`` until stopped; keeps every status seen and the degraded
    states reported."""

    def __init__(self, rig: Rig, every: float = 0.25):
        self.rig = rig
        self.statuses: dict[str, int] = {}
        self.seen: set[str] = set()  # "registry:registry=down", "replay_cache:failed (…)"…
        self.backlog = 0  # the largest journal backlog reported
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(every,))
        self._thread.start()

    def _run(self, every: float) -> None:
        while not self._stop.wait(every):
            try:
                r = requests.get(self.rig.server.url + "/health/ready", timeout=5)
            except requests.RequestException as exc:
                status = type(exc).__name__
            else:
                status = str(r.status_code)
                for name, state in (r.json().get("dependencies") or {}).items():
                    if not isinstance(state, dict):
                        self.seen.add(f"{name}:{state}")
                        continue
                    self.backlog = max(self.backlog, state.get("journal_backlog", 0))
                    self.seen |= {
                        f"{name}:{k}={v}" for k, v in state.items() if k in ("registry", "journal")
                    }
            self.statuses[status] = self.statuses.get(status, 0) + 1

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


def under_fault(
    rig: Rig, begin: Callable[[], object], end: Callable[[], object], during: float
) -> tuple[Load, ReadinessWatch, float]:
    """Load and a readiness watch; after 2 s ``begin()`` the fault, ``during`` seconds later
    ``end()`` it; then stop the load and wait for the registry. Returns the load, the watch
    and the seconds from the fault's end until everything acknowledged was stored."""
    load = Load(rig)
    watch = ReadinessWatch(rig)
    time.sleep(2)
    begin()
    time.sleep(during)
    end()
    ended = time.monotonic()
    load.stop()
    recovered(rig, load)
    watch.stop()
    return load, watch, round(time.monotonic() - ended, 1)


def recovered(rig: Rig, load: Load, within: float = RECOVERY_WITHIN) -> float:
    """Seconds until the registry database holds every evaluation answered and every
    feedback item acknowledged (or ``within`` ran out: the caller's assertions say what is
    missing)."""
    started = time.monotonic()
    while time.monotonic() - started < within:
        evaluations, feedback = rig.stored()
        if load.answered <= evaluations and load.acknowledged <= feedback:
            break
        time.sleep(0.2)
    return round(time.monotonic() - started, 1)


def report(case: str, load: Load, recovery: float, **more) -> dict:
    """The case's figures, appended to :data:`FIGURES` and printed."""
    evaluations, feedback = load.rig.stored()
    figures = {
        "case": case,
        "hook_calls": load.calls,
        "answered_with_cards": len(load.answered),
        "not_answered": load.refused,
        "answered_without_cards": load.no_cards,
        "evaluations_stored": len(load.answered & evaluations),
        "evaluations_lost": len(load.answered - evaluations),
        "feedback_calls": load.feedback_calls,
        "feedback_acknowledged": len(load.acknowledged),
        "feedback_stored": len(load.acknowledged & feedback),
        "feedback_lost": len(load.acknowledged - feedback),
        "feedback_refused": load.feedback_refused,
        "recovery_seconds": recovery,
        **more,
    }
    with FIGURES.open("a") as out:
        out.write(json.dumps(figures) + "\n")
    print("\n" + json.dumps(figures))
    return figures


def workers_of(server: Server) -> list[int]:
    pid = server.process.pid
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def metric(server: Server, name: str) -> float:
    """A metric's value summed over its samples (0 when absent)."""
    text = requests.get(server.url + "/metrics", timeout=10).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name + " ") or line.startswith(name + "{")
    )
