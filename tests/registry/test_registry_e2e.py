"""The registry under real gunicorn processes, on SQLite and on PostgreSQL: two instances with
several workers taking hundreds of parallel evaluations and feedback posts, and servers
stopped (SIGTERM) and killed (SIGKILL) in the middle of a load."""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import orjson
import pytest
import requests
from sqlalchemy import func, select

from service.registry import governance, schema
from service.registry.store import Store, open_store
from service.tools.fixtures import load
from tests.conftest import Server, start_gunicorn, stop, writes_held

pytestmark = pytest.mark.e2e

KEY = "registry-e2e-pseudonym-key-0123456789ab"
SIGN = "/cds-services/ketamine-order-sign"
EVALUATIONS = 300
REQUEST, _ = load("clean-iv-ketamine-sign")


def environment(database_url: str) -> dict[str, str]:
    return {
        "KCDS_DATABASE_URL": database_url,
        "KCDS_PSEUDONYM_KEY": KEY,
        "KCDS_LOG_LEVEL": "WARNING",  # no access log line per request: less to write
    }


def evaluate(session: requests.Session, server: Server) -> tuple[str, dict]:
    """(hookInstance, response) of one evaluation with a fresh hookInstance."""
    hook_instance = str(uuid.uuid4())
    r = session.post(
        server.url + SIGN,
        data=orjson.dumps({**REQUEST, "hookInstance": hook_instance}),
        headers={"Content-Type": "application/json"},
        timeout=30,
    )
    r.raise_for_status()
    return hook_instance, r.json()


def feedback_for(card: dict, n: int) -> dict:
    """Every other card accepted, the rest overridden with one of three reasons."""
    item = {"card": card["uuid"], "outcomeTimestamp": f"2026-03-02T10:{n % 60:02d}:00Z"}
    if n % 2:
        reason = {"system": "urn:test:reasons", "code": f"reason-{n % 3}"}
        return item | {"outcome": "overridden", "overrideReason": {"reason": reason}}
    return item | {
        "outcome": "accepted",
        "acceptedSuggestions": [{"id": card["suggestions"][0]["uuid"]}],
    }


def send_feedback(session: requests.Session, server: Server, items: list[dict]) -> dict:
    r = session.post(server.url + SIGN + "/feedback", json={"feedback": items}, timeout=30)
    r.raise_for_status()
    return r.json()


def count(store: Store, table, column=None) -> int:
    what = func.count(column.distinct()) if column is not None else func.count()
    with store.reading() as conn:
        return conn.scalar(select(what).select_from(table))


def test_parallel_evaluations_and_feedback_on_two_instances_are_stored_once(database_url, tmp_path):
    started = time.monotonic()
    servers = [
        start_gunicorn(tmp_path, env=environment(database_url), workers=4),
        start_gunicorn(tmp_path, env=environment(database_url), workers=2),
    ]
    local = threading.local()

    def one(n: int) -> tuple[str, dict, list[dict], list[dict]]:
        """An evaluation on one instance, then its feedback twice, on the other."""
        session = local.__dict__.setdefault("session", requests.Session())
        here, there = servers[n % 2], servers[1 - n % 2]
        hook_instance, response = evaluate(session, here)
        items = [feedback_for(card, n) for card in response["cards"]]
        acks = [send_feedback(session, there, items) for _ in range(2)]
        return hook_instance, response, items, acks

    try:
        with ThreadPoolExecutor(24) as pool:
            results = list(pool.map(one, range(EVALUATIONS)))
    finally:
        for server in servers:
            stop(server)  # SIGTERM: each worker writes what it has queued, then exits
    elapsed = time.monotonic() - started
    for server in servers:
        assert '"level":"ERROR"' not in server.logs()

    store = open_store(database_url)
    hook_instances = {hi for hi, _, _, _ in results}
    cards = [card for _, response, _, _ in results for card in response["cards"]]
    items = [item for _, _, items, _ in results for item in items]
    acks = [ack for _, _, _, acks in results for ack in acks]
    assert len(hook_instances) == EVALUATIONS and len(cards) >= EVALUATIONS
    with store.reading() as conn:
        stored_instances = set(conn.scalars(select(schema.evaluation.c.hook_instance)))
        stored_cards = set(conn.scalars(select(schema.card.c.card_uuid)))
    counts = {
        "evaluations": count(store, schema.evaluation),
        "cards": count(store, schema.card),
        "card_rules": count(store, schema.card_rule),
        "feedback": count(store, schema.feedback),
        "feedback_cards": count(store, schema.feedback, schema.feedback.c.card_uuid),
    }
    print(f"\n[{store.dialect}] {counts} from {len(acks)} feedback posts in {elapsed:.1f} s")
    assert stored_instances == hook_instances
    assert stored_cards == {card["uuid"] for card in cards}
    assert counts == {
        "evaluations": EVALUATIONS,
        "cards": len(cards),
        "card_rules": sum(len(c["extension"]["ketamine-cds.rules"]) for c in cards),
        "feedback": len(items),
        "feedback_cards": len(items),
    }
    assert sum(a["stored"] for a in acks) == len(items) == sum(a["repeated"] for a in acks)

    summary = governance.summary(store)
    assert summary["evaluations"] == EVALUATIONS and summary["feedback_on_unknown_cards"] == 0
    r38 = next(r for r in summary["rules"] if r["rule"] == "R38")
    assert (r38["fired"], r38["accepted"], r38["overridden"]) == (
        EVALUATIONS,
        EVALUATIONS // 2,
        EVALUATIONS // 2,
    )
    assert sum(r["count"] for r in r38["top_override_reasons"]) == EVALUATIONS // 2
    assert summary["orders_evaluated"] == [
        {"drug": "ketamine", "route": "iv", "count": EVALUATIONS}
    ]


class Load:
    """Threads that evaluate and send feedback until stopped, keeping what was acknowledged."""

    def __init__(self, server: Server, threads: int = 8):
        self.server = server
        self.evaluations: set[str] = set()  # hookInstances answered 200
        self.feedback: set[tuple[str, str]] = set()  # (card, outcome) answered 200
        self._stop = threading.Event()
        # while set, only evaluations are sent (feedback waits for a locked SQLite and would
        # hold every worker)
        self.evaluations_only = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(i,)) for i in range(threads)]
        for thread in self._threads:
            thread.start()

    def _run(self, seed: int) -> None:
        session = requests.Session()
        n = seed
        while not self._stop.is_set():
            n += len(self._threads)
            try:
                hook_instance, response = evaluate(session, self.server)
                with self._lock:
                    self.evaluations.add(hook_instance)
                if self.evaluations_only.is_set():
                    continue
                items = [feedback_for(card, n) for card in response["cards"]]
                send_feedback(session, self.server, items)
                with self._lock:
                    self.feedback.update((i["card"], i["outcome"]) for i in items)
            except requests.RequestException:
                time.sleep(0.01)  # the server is going down: no acknowledgement

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()


def workers_of(server: Server) -> list[int]:
    pid = server.process.pid
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def kill_hard(server: Server) -> None:
    """SIGKILL to the master and every worker at once: nothing gets to flush."""
    workers = workers_of(server)
    os.kill(server.process.pid, signal.SIGKILL)
    for pid in workers:
        os.kill(pid, signal.SIGKILL)
    server.process.wait(timeout=10)


def test_every_acknowledged_feedback_survives_sigterm_and_sigkill(database_url, tmp_path):
    env = environment(database_url)

    # SIGTERM while the database is locked: the hooks keep answering, their evaluations
    # queue up in the workers, and the stopping workers write them once the lock is gone
    server = start_gunicorn(tmp_path, env=env, workers=2)
    graceful = Load(server)
    time.sleep(0.5)
    graceful.evaluations_only.set()
    time.sleep(0.3)  # the feedback posts in flight are answered
    with writes_held(database_url) as conn:
        time.sleep(1.0)
        stored = {hi for (hi,) in conn.execute("SELECT hook_instance FROM kcds_evaluation")}
        queued = graceful.evaluations - stored
        server.process.send_signal(signal.SIGTERM)
        time.sleep(0.5)
    server.process.wait(timeout=30)
    graceful.stop()
    assert queued, "no evaluation was waiting to be written when the server was stopped"

    # SIGKILL of every process in the middle of the load: nothing gets to flush
    server = start_gunicorn(tmp_path, env=env, workers=2)
    hard = Load(server)
    time.sleep(1.5)
    kill_hard(server)
    hard.stop()
    assert hard.evaluations and hard.feedback, "no load reached the server"

    stop(start_gunicorn(tmp_path, env=env, workers=2))  # restarts on what was left behind
    store = open_store(database_url)
    with store.reading() as conn:
        feedback = set(conn.execute(select(schema.feedback.c.card_uuid, schema.feedback.c.outcome)))
        evaluations = list(conn.scalars(select(schema.evaluation.c.hook_instance)))
    stored = set(evaluations)
    lost = hard.evaluations - stored
    print(
        f"\n[{store.dialect}] SIGTERM: {len(graceful.evaluations)} evaluations acknowledged, "
        f"{len(queued)} of them still queued at SIGTERM, all stored; "
        f"{len(graceful.feedback)} feedback acknowledged, all stored. SIGKILL: "
        f"{len(hard.evaluations)} evaluations acknowledged, {len(lost)} lost in the queue; "
        f"{len(hard.feedback)} feedback acknowledged, all stored"
    )
    assert graceful.feedback | hard.feedback <= feedback
    assert graceful.evaluations <= stored
    assert len(evaluations) == len(stored)  # nothing doubled, whatever happened
